"""Comparisons under equal conditions: sparse heads vs sparse layers, head-set overlap, score correlation.

:func:`compare_heads_layers` runs SAV heads and :class:`~savlens.classifiers.SparseLayers` on the same seeded
stratified folds (or on a fixed train / test split, ``test=``) with a matched feature budget, plus a
shuffled-label control of each (paper Table 3b).
:func:`jaccard` and :func:`spearman` compare the heads two tasks select and how they rank every head.
"""

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.classifiers import SparseLayers
from savlens.errors import ArgumentError, FeatureError
from savlens.heads import Head, HeadScores, HeadSet
from savlens.labels import encode_labels, resolve_labels
from savlens.sav import SAV
from savlens.scoring import stratified_folds


@dataclass(eq=False)
class HeadsVsLayers:
    """Held-out accuracy of sparse heads and sparse layers on the same folds, or on one fixed test set.

    With k-fold cross-validation each accuracy field holds one value per fold; on a fixed split
    (``compare_heads_layers(train, test=test)``) it holds one value, the test-set accuracy (``fold`` = 1).

    Attributes:
        heads: ``fold`` test accuracy of an SAV with ``k_heads`` heads, per fold.
        layers: ``fold`` test accuracy of :class:`SparseLayers` with ``k_layers`` layers, per fold.
        heads_shuffled: ``fold`` the same SAV fitted on shuffled training labels (control: near chance).
        layers_shuffled: ``fold`` the same for sparse layers.
        k_heads: heads kept.
        k_layers: layers kept.
        n_features_heads: feature dimensions the heads use (``k_heads * d_head``).
        n_features_layers: feature dimensions the layers use (``k_layers * head_index * d_head``).
        chance: the accuracy of always guessing the largest class: the majority-class rate of the labels
            (k-fold), of the test labels (fixed split).
        folds: ``example`` fold of each example (k-fold); None on a fixed split.
        heads_chosen: on a fixed split, the heads the SAV selected on the training features (None: k-fold).
        layers_chosen: on a fixed split, the layers :class:`SparseLayers` selected, best first (None: k-fold).
        n_train: training examples (k-fold: all examples, each fold trains on the others).
        n_test: test examples (k-fold: all examples, each tested once).
    """

    heads: Float[Tensor, " fold"]
    layers: Float[Tensor, " fold"]
    heads_shuffled: Float[Tensor, " fold"]
    layers_shuffled: Float[Tensor, " fold"]
    k_heads: int
    k_layers: int
    n_features_heads: int
    n_features_layers: int
    chance: float
    folds: Int[Tensor, " example"] | None
    heads_chosen: HeadSet | None = None
    layers_chosen: tuple[int, ...] | None = None
    n_train: int = 0
    n_test: int = 0

    @property
    def fixed_split(self) -> bool:
        """Whether the arms were fitted on one training set and scored on one test set (``test=``)."""
        return self.folds is None

    def mean(self) -> dict[str, float]:
        """Return the mean accuracy over folds of each arm (on a fixed split: the test accuracy)."""
        return {
            "heads": float(self.heads.mean()),
            "layers": float(self.layers.mean()),
            "heads_shuffled": float(self.heads_shuffled.mean()),
            "layers_shuffled": float(self.layers_shuffled.mean()),
        }

    def __str__(self) -> str:
        m = self.mean()
        how = (
            f"fixed split: {self.n_train} train, {self.n_test} test examples"
            if self.fixed_split
            else f"{self.heads.numel()} folds"
        )
        return (
            f"sparse heads  (k={self.k_heads}, {self.n_features_heads} dims): {m['heads']:.3f}"
            f"  [shuffled labels {m['heads_shuffled']:.3f}]\n"
            f"sparse layers (k={self.k_layers}, {self.n_features_layers} dims): {m['layers']:.3f}"
            f"  [shuffled labels {m['layers_shuffled']:.3f}]\n"
            f"chance (majority class): {self.chance:.3f}; {how}"
        )


def layer_budget(k_heads: int, n_layers: int, n_heads: int, budget: str = "features") -> int:
    """Return how many layers match ``k_heads`` heads under a budget.

    ``"features"``: about the same number of feature dimensions, ``round(k_heads / n_heads)`` layers (at least
    1); ``"units"``: as many layers as heads (at most ``n_layers``).

    Example:
        >>> layer_budget(20, 28, 28), layer_budget(20, 28, 28, "units"), layer_budget(64, 28, 16)
        (1, 20, 4)
    """
    if budget == "features":
        k = max(1, round(k_heads / n_heads))
    elif budget == "units":
        k = k_heads
    else:
        raise ArgumentError(f"budget must be 'features' or 'units'; got {budget!r}.")
    return min(k, n_layers)


def compare_heads_layers(
    features: HeadFeatures,
    labels: Sequence[Hashable] | None = None,
    *,
    test: HeadFeatures | None = None,
    test_labels: Sequence[Hashable] | None = None,
    k: int = 20,
    k_layers: int | None = None,
    budget: str = "features",
    n_folds: int = 5,
    seed: int = 0,
    mode: str | None = None,
) -> HeadsVsLayers:
    """Compare sparse heads with sparse layers on the same data, with shuffled-label controls.

    **k-fold** (``test`` None): for each fold of :func:`~savlens.scoring.stratified_folds` (``n_folds``,
    ``seed``), an SAV with ``k`` heads and a :class:`SparseLayers` with ``k_layers`` layers are fitted on the
    other folds (head and layer scores computed with ``mode`` inside the training folds only) and tested on the
    fold; then both again with the training labels permuted (seeded), tested on the true labels.

    **Fixed split** (``test`` given): both arms are fitted once on ``features`` and scored on ``test``; the
    control fits each arm on the training labels permuted by ``np.random.default_rng(seed)`` and scores it on
    ``test``'s true labels. The SAV arm is ``SAV(k, "centroid", mode, seed, n_folds=n_folds).fit(features)``,
    the layer arm ``SparseLayers(k_layers, mode=mode, seed=seed, n_folds=n_folds).fit(features)``: exactly what
    fitting them by hand gives, so the heads arm equals the diagonal cell of a
    :func:`~savlens.transfer.transfer_matrix` with the same ``k`` and ``seed``.

    Args:
        features: ``example layer head_index d_head`` labelled head features (k-fold: all of them; fixed
            split: the training examples).
        labels: one label per example; None uses ``features.labels``.
        test: ``example layer head_index d_head`` labelled test features from the same model, hook and grid;
            None runs k-fold cross-validation on ``features``.
        test_labels: one label per test example; None uses ``test.labels``.
        k: heads kept.
        k_layers: layers kept; None derives it from ``budget`` (:func:`layer_budget`).
        budget: ``"features"`` (same feature dimensions) or ``"units"`` (same number of voters).
        n_folds: outer folds (k-fold), and the folds of ``mode="kfold"`` scoring inside each training set.
        seed: fold, shuffle and tie-break seed.
        mode: scoring mode inside each training set (None: ``"loo"``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(60, 3, 4, 8, generator=g)
        >>> labels = ["yes", "no"] * 30
        >>> z[0::2, 1, 2, 0] += 8; z[1::2, 1, 2, 1] += 8  # one informative head: L1H2
        >>> f = HeadFeatures(z, labels=labels)
        >>> r = compare_heads_layers(f.subset(range(40)), test=f.subset(range(40, 60)), k=1)
        >>> r.heads.tolist(), str(r.heads_chosen), r.layers_chosen, r.n_train, r.n_test
        ([1.0], 'L1H2', (1,), 40, 20)
    """
    what = "compare_heads_layers"
    labels = resolve_labels(features, labels, what)
    enc = encode_labels(labels, what=what)
    if k_layers is None:
        k_layers = layer_budget(k, features.n_layers, features.n_heads, budget)
    rng = np.random.default_rng(seed)
    arms: dict[str, list[float]] = {"heads": [], "layers": [], "heads_shuffled": [], "layers_shuffled": []}

    def fit_and_score(
        tr: HeadFeatures, tr_labels: list[Hashable], te: HeadFeatures, te_labels: list[Hashable]
    ) -> tuple[SAV, SparseLayers]:
        shuffled = [tr_labels[i] for i in rng.permutation(len(tr_labels))]
        fitted = []
        for suffix, fit_labels in (("", tr_labels), ("_shuffled", shuffled)):
            sav = SAV(k, "centroid", mode, seed, n_folds=n_folds).fit(tr, fit_labels)
            arms["heads" + suffix].append(sav.score(te, te_labels))
            sparse = SparseLayers(k_layers, mode=mode, seed=seed, n_folds=n_folds).fit(tr, fit_labels)
            arms["layers" + suffix].append(sparse.score(te, te_labels))
            fitted.append((sav, sparse))
        return fitted[0]

    folds: Tensor | None = None
    heads_chosen: HeadSet | None = None
    layers_chosen: tuple[int, ...] | None = None
    if test is None:
        folds = stratified_folds(enc.codes, n_folds, seed)
        for f in range(n_folds):
            test_idx = torch.nonzero(folds == f).squeeze(1)
            train_idx = torch.nonzero(folds != f).squeeze(1)
            fit_and_score(
                features.subset(train_idx),
                [labels[i] for i in train_idx.tolist()],
                features.subset(test_idx),
                [labels[i] for i in test_idx.tolist()],
            )
        n_train = n_test = features.n_examples
        chance = float(enc.counts.max()) / features.n_examples
    else:
        features.check_compatible(test, f"the training features and the test features ({what})")
        te_labels = resolve_labels(test, test_labels, f"{what} (test)")
        te_enc = encode_labels(te_labels, what=f"{what} (test)", min_classes=1)
        sav, sparse = fit_and_score(features, list(labels), test, list(te_labels))
        heads_chosen, layers_chosen = sav.heads_, sparse.layers_
        n_train, n_test = features.n_examples, test.n_examples
        chance = float(te_enc.counts.max()) / test.n_examples
    t = {name: torch.tensor(values, dtype=torch.float64) for name, values in arms.items()}
    return HeadsVsLayers(
        heads=t["heads"],
        layers=t["layers"],
        heads_shuffled=t["heads_shuffled"],
        layers_shuffled=t["layers_shuffled"],
        k_heads=k,
        k_layers=k_layers,
        n_features_heads=k * features.d_head,
        n_features_layers=k_layers * features.n_heads * features.d_head,
        chance=chance,
        folds=folds,
        heads_chosen=heads_chosen,
        layers_chosen=layers_chosen,
        n_train=n_train,
        n_test=n_test,
    )


def jaccard(
    a: "HeadSet | Iterable[Head | str | tuple[int, int]]", b: "HeadSet | Iterable[Head | str | tuple[int, int]]"
) -> float:
    """Return the Jaccard overlap ``|a & b| / |a | b|`` of two head sets (1.0 when both are empty).

    Example:
        >>> jaccard(["L1H0", "L2H3"], ["L2H3", "L5H5", "L7H1"])
        0.25
    """
    sa = set(a if isinstance(a, HeadSet) else HeadSet(a))
    sb = set(b if isinstance(b, HeadSet) else HeadSet(b))
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def spearman(a: HeadScores | Tensor, b: HeadScores | Tensor) -> float:
    """Return the Spearman rank correlation of two head score tables (``scipy.stats.spearmanr``; ties get
    average ranks).

    NaN when either table is constant (the correlation is undefined).

    Example:
        >>> round(spearman(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[10.0, 20.0], [40.0, 30.0]])), 6)
        0.8
    """
    ta = a.scores if isinstance(a, HeadScores) else a
    tb = b.scores if isinstance(b, HeadScores) else b
    if ta.shape != tb.shape:
        raise FeatureError(f"spearman: score tables of shapes {tuple(ta.shape)} and {tuple(tb.shape)} differ.")
    if isinstance(a, HeadScores) and isinstance(b, HeadScores) and a.layers != b.layers:
        raise FeatureError(f"spearman: the tables cover different layers ({a.layers} vs {b.layers}).")
    x, y = ta.reshape(-1).double().numpy(), tb.reshape(-1).double().numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)
