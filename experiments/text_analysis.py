"""The comparisons of experiments/reproduce_text.py, on cached features only (tensors in, numbers out).

Every seed draws, per class, a test set of ``n_test`` pool examples and an ordered list of the remaining
ones; the first ``n`` of that list are the ``n``-shot training set, so smaller training sets are subsets of
larger ones and every arm of a seed is tested on the same examples.
"""

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from savlens import SAV, HeadFeatures, HeadSet
from savlens.classifiers import HeadKNN, HeadLinearProbe, SparseLayers
from savlens.compare import jaccard, layer_budget
from savlens.transfer import transfer_matrix

N_RANDOM_HEAD_DRAWS = 20
KNN_NEIGHBORS = 5


@dataclass(frozen=True)
class SeedSplit:
    """Pool indices of one seed: ``test`` and, per class, the training candidates in draw order."""

    test: list[int]
    candidates: dict[Hashable, list[int]]

    def train(self, shots: int) -> list[int]:
        """The ``shots``-per-class training indices (sorted)."""
        return sorted(i for idx in self.candidates.values() for i in idx[:shots])


def seed_split(labels: Sequence[Hashable], n_test: int, seed: int) -> SeedSplit:
    """Draw a stratified test set (``n_test`` per class) and ordered training candidates with ``seed``."""
    rng = np.random.default_rng(seed)
    by_class: dict[Hashable, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    test, candidates = [], {}
    for y, idx in by_class.items():
        perm = [idx[j] for j in rng.permutation(len(idx))]
        test += perm[:n_test]
        candidates[y] = perm[n_test:]
    return SeedSplit(sorted(test), candidates)


def accuracy(predicted: Sequence[Hashable], truth: Sequence[Hashable]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def zero_shot_accuracy(class_logprob: torch.Tensor, classes: Sequence[str], labels: Sequence[Hashable]) -> float:
    """Accuracy of the argmax of the zero-shot class scores (``example class``, columns in ``classes``)."""
    predicted = [classes[i] for i in class_logprob.argmax(-1).tolist()]
    return accuracy(predicted, labels)


def random_heads(n_layers: int, n_heads: int, k: int, rng: np.random.Generator) -> HeadSet:
    return HeadSet.from_index(rng.choice(n_layers * n_heads, size=k, replace=False).tolist(), n_heads)


def _quiet_fit(est: Any, *args: Any) -> Any:
    with warnings.catch_warnings():  # lbfgs may stop at max_iter on separable few-shot data; that is fine
        warnings.simplefilter("ignore")
        return est.fit(*args)


def knn_accuracy(heads: HeadSet, train: HeadFeatures, test: HeadFeatures, seed: int) -> float:
    """5-NN (cosine) on the concatenated vectors of ``heads``; fewer neighbours when training is smaller."""
    knn = HeadKNN(heads, n_neighbors=min(KNN_NEIGHBORS, train.n_examples), seed=seed)
    return _quiet_fit(knn, train).score(test)


def probe_accuracy(heads: HeadSet, train: HeadFeatures, test: HeadFeatures, seed: int) -> float:
    """Logistic regression (scikit-learn, C = 1) on the unit-normalised concatenated vectors of ``heads``.

    ``n_threads=None``: the thread pools are the caller's (``reproduce_text.py --threads``, default 1).
    """
    return _quiet_fit(HeadLinearProbe(heads, seed=seed, n_threads=None), train).score(test)


def main_arms(
    train: HeadFeatures, test: HeadFeatures, *, k: int, seed: int, all_heads_baselines: bool = True
) -> dict[str, Any]:
    """Every classifier of the main table on one split. Returns accuracies and the selected heads."""
    out: dict[str, Any] = {}
    n_layers, n_heads = train.n_layers, train.n_heads
    savs = {}
    for mode in ("loo", "in_sample", "kfold"):
        savs[mode] = SAV(k=k, mode=mode, seed=seed).fit(train)
        out[f"sav_{mode}"] = savs[mode].score(test)
    out["sav_reference"] = SAV(k=k, reference=True).fit(train).score(test)
    heads = savs["loo"].heads_
    out["knn"] = knn_accuracy(heads, train, test, seed)
    out["probe"] = probe_accuracy(heads, train, test, seed)
    if all_heads_baselines:
        every = HeadSet.from_index(range(n_layers * n_heads), n_heads)
        out["knn_all_heads"] = knn_accuracy(every, train, test, seed)
        out["probe_all_heads"] = probe_accuracy(every, train, test, seed)
    k_feat = layer_budget(k, n_layers, n_heads, "features")
    out["layers_feature_budget"] = SparseLayers(k_feat, mode="loo", seed=seed).fit(train).score(test)
    out["layers_unit_budget"] = SparseLayers(min(k, n_layers), mode="loo", seed=seed).fit(train).score(test)
    rng = np.random.default_rng(10_000 + seed)
    out["sav_random_heads"] = float(
        np.mean(
            [
                SAV().fit_heads(train, heads=random_heads(n_layers, n_heads, k, rng)).score(test)
                for _ in range(N_RANDOM_HEAD_DRAWS)
            ]
        )
    )
    labels = list(train.labels or [])
    shuffled = [labels[i] for i in rng.permutation(len(labels))]
    out["sav_shuffled_labels"] = SAV(k=k, mode="loo", seed=seed).fit(train, shuffled).score(test)
    out["_heads"] = heads.to_list()
    out["_k_layers_feature_budget"] = k_feat
    return out


def shots_arms(train: HeadFeatures, test: HeadFeatures, *, k: int, seed: int) -> dict[str, float]:
    """The shots curve arms: SAV (LOO and in-sample selection), KNN and probe on the SAV-LOO heads."""
    k = min(k, train.n_layers * train.n_heads)
    loo = SAV(k=k, mode="loo", seed=seed).fit(train)
    return {
        "sav_loo": loo.score(test),
        "sav_in_sample": SAV(k=k, mode="in_sample", seed=seed).fit(train).score(test),
        "knn": knn_accuracy(loo.heads_, train, test, seed),
        "probe": probe_accuracy(loo.heads_, train, test, seed),
    }


def k_arms(train: HeadFeatures, test: HeadFeatures, *, k: int, seed: int) -> dict[str, float]:
    """The k curve arms: SAV with LOO and in-sample selection."""
    return {
        "sav_loo": SAV(k=k, mode="loo", seed=seed).fit(train).score(test),
        "sav_in_sample": SAV(k=k, mode="in_sample", seed=seed).fit(train).score(test),
    }


def transfer_arms(splits: dict[str, tuple[HeadFeatures, HeadFeatures]], *, k: int, seed: int) -> dict[str, Any]:
    """Heads chosen on each task (LOO), centroids and test on every task; plus head-set overlap."""
    tm = transfer_matrix(splits, k=k, mode="loo", seed=seed)
    overlap = tm.overlap()
    return {
        "tasks": list(tm.tasks),
        "accuracy": tm.accuracy.tolist(),
        "jaccard": overlap.jaccard.tolist(),
        "spearman": overlap.spearman.tolist(),
        "heads": {t: h.to_list() for t, h in tm.heads.items()},
    }


def within_task_jaccard(heads_by_seed: Sequence[Sequence[str]]) -> list[float]:
    """Jaccard overlap of the head sets one task selects on different seeds (all pairs)."""
    out = []
    for i in range(len(heads_by_seed)):
        for j in range(i + 1, len(heads_by_seed)):
            out.append(jaccard(heads_by_seed[i], heads_by_seed[j]))
    return out


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and the values (None when empty)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
        "values": [round(float(x), 6) for x in v],
    }
