"""Other classifiers on the same head features: the paper's ablations (Table 3).

- :class:`HeadKNN` and :class:`HeadLinearProbe` classify with the selected heads' concatenated vectors
  instead of the SAV's per-head centroid vote (Table 3a);
- :class:`SparseLayers` keeps the ``k`` best *layers* instead of heads: a layer's concatenated heads are one
  unit, scored by nearest-centroid accuracy and voting as an SAV head does (Table 3b).

All follow the estimator contract of :class:`~savlens.sav.SAV` (:class:`~savlens.estimator.Estimator`: ``fit``
returns self; ``predict``, ``predict_proba``, ``score``; ``get_params`` / ``set_params`` / ``repr`` from the
signature) and refuse features made otherwise than the training features, as the SAV does. :class:`HeadKNN` and
:class:`HeadLinearProbe` also take :class:`~savlens.outofcore.StoredFeatures`: heads are scored streamed and only
the selected heads are read, block by block (KNN's training matrix, ``example (k d_head)`` float32, is its model
and is kept in memory; predictions are computed a block of queries at a time).
"""

import dataclasses
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import ClassVar

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, LabelError
from savlens.estimator import Estimator
from savlens.heads import Head, HeadScores, HeadSet
from savlens.labels import encode_labels, normalize_label, resolve_labels
from savlens.outofcore import StoredFeatures, head_blocks
from savlens.sav import SAV
from savlens.scoring import EPS, Criterion
from savlens.threads import _check_threads, limit_threads
from savlens.voting import Votes

HeadsArg = HeadSet | Iterable[Head | str | tuple[int, int]] | None


class _OnSelectedHeads(Estimator):
    """Shared plumbing: choose heads (or take given ones), then classify their concatenated vectors.

    Subclasses take ``heads``, ``k``, ``criterion``, ``mode`` and ``seed`` (stored under those names)."""

    heads: HeadsArg
    k: int
    criterion: "str | Criterion"
    mode: str | None
    seed: int

    def _select(self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None) -> list[Hashable]:
        labels = resolve_labels(features, labels, f"{type(self).__name__}.fit")
        sav = SAV(self.k, self.criterion, self.mode, self.seed)
        if self.heads is None:
            sav.fit(features, labels)
        else:
            sav.fit_heads(features, labels, heads=self.heads)
        self.sav_ = sav
        self.heads_: HeadSet = sav.heads_
        self.scores_: HeadScores | None = sav.scores_
        self.classes_: tuple[Hashable, ...] = sav.classes_
        return labels

    def _matrix(self, features: "HeadFeatures | StoredFeatures", what: str, normalize_heads: bool = False) -> Tensor:
        return torch.cat(list(self._blocks(features, what, normalize_heads)))

    def _blocks(
        self, features: "HeadFeatures | StoredFeatures", what: str, normalize_heads: bool = False
    ) -> Iterator[Tensor]:
        """The selected heads' concatenated vectors: one block for in-memory features, blocks of examples (only
        the selected heads read) for stored ones. Checks that the features were made as the training features."""
        what = f"{type(self).__name__}.{what}"
        sav = self.sav_
        if isinstance(features, StoredFeatures):
            sav._check_source(features, what)
            blocks: Iterable[Tensor] = (
                x.to(sav.centroids_.device, sav.centroids_.dtype) for x in head_blocks(features, sav.heads_, what)
            )
        else:
            blocks = [sav._head_vectors(features, what)]
        for x in blocks:
            if normalize_heads:
                x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
            yield einops.rearrange(x, "example k d_head -> example (k d_head)")

    def predict_proba(self, features: "HeadFeatures | StoredFeatures") -> Float[Tensor, "example class"]:
        raise NotImplementedError

    def predict(self, features: "HeadFeatures | StoredFeatures") -> list[Hashable]:
        """Return the predicted label of each example."""
        self._check_fitted(f"{type(self).__name__}.predict")
        return [self.classes_[i] for i in self._winners(features).tolist()]

    def _winners(self, features: "HeadFeatures | StoredFeatures") -> Tensor:
        return self.predict_proba(features).argmax(dim=-1)

    def score(self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None) -> float:
        """Return the accuracy of :meth:`predict` on labelled features."""
        self._check_fitted(f"{type(self).__name__}.score")
        truth = [normalize_label(v) for v in resolve_labels(features, labels, f"{type(self).__name__}.score")]
        return sum(p == t for p, t in zip(self.predict(features), truth)) / len(truth)


class HeadKNN(_OnSelectedHeads):
    """k-nearest-neighbour classifier (cosine) on the selected heads' concatenated vectors (Table 3a).

    Heads are chosen as :class:`~savlens.sav.SAV` chooses them (``k``, ``criterion``, ``mode``, ``seed``) unless
    ``heads`` is given. A query's ``n_neighbors`` most cosine-similar training examples vote; among classes tied
    on votes, the one with the highest summed similarity of its neighbours wins (then the first class).

    Example:
        >>> z = torch.randn(20, 1, 2, 4, generator=torch.Generator().manual_seed(0))
        >>> z[:10, 0, 0, 0] += 5; z[10:, 0, 0, 1] += 5
        >>> f = HeadFeatures(z, labels=[0] * 10 + [1] * 10)
        >>> HeadKNN(["L0H0"], n_neighbors=3).fit(f).score(f)
        1.0
    """

    _fitted_attr: ClassVar[str] = "train_"

    def __init__(
        self,
        heads: HeadsArg = None,
        *,
        k: int = 20,
        n_neighbors: int = 5,
        criterion: str | Criterion = "centroid",
        mode: str | None = None,
        seed: int = 0,
    ) -> None:
        self.heads = heads
        self.k = k
        self.n_neighbors = n_neighbors
        self.criterion = criterion
        self.mode = mode
        self.seed = seed

    def fit(self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None) -> "HeadKNN":
        """Select heads and store the training examples' unit-normalised concatenated vectors."""
        labels = self._select(features, labels)
        n = features.n_examples
        if (
            isinstance(self.n_neighbors, bool)
            or not isinstance(self.n_neighbors, int)
            or not 1 <= self.n_neighbors <= n
        ):
            raise ArgumentError(f"HeadKNN.fit: n_neighbors must be an int between 1 and the {n} training examples.")
        x = self._matrix(features, "fit")
        self.train_ = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
        self.codes_ = encode_labels(labels, what="HeadKNN.fit").codes
        return self

    def _neighbour_votes(self, features: "HeadFeatures | StoredFeatures") -> tuple[Tensor, Tensor]:
        counts, summed = [], []
        for x in self._blocks(features, "predict"):  # a block of queries at a time
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
            sim, idx = (x @ self.train_.T).topk(self.n_neighbors, dim=-1)
            onehot = F.one_hot(self.codes_[idx], len(self.classes_))
            counts.append(onehot.sum(1))
            summed.append((onehot * sim[..., None]).sum(1))
        return torch.cat(counts), torch.cat(summed)

    def predict_proba(self, features: "HeadFeatures | StoredFeatures") -> Float[Tensor, "example class"]:
        """Return neighbour vote shares, columns in ``classes_`` order."""
        self._check_fitted("HeadKNN.predict_proba")
        counts, _ = self._neighbour_votes(features)
        return counts.double() / self.n_neighbors

    def _winners(self, features: "HeadFeatures | StoredFeatures") -> Tensor:
        counts, summed = self._neighbour_votes(features)
        tied = counts == counts.max(dim=-1, keepdim=True).values
        return torch.where(tied, summed.double(), -torch.inf).argmax(dim=-1)


class HeadLinearProbe(_OnSelectedHeads):
    """Logistic-regression probe (scikit-learn) on the selected heads' concatenated vectors (Table 3a).

    Each head vector is unit-normalised before concatenation when ``normalize`` is True (the cosine geometry
    SAV uses; it also keeps the solver well conditioned).

    ``fit`` and ``predict_proba`` (so ``predict`` and ``score``) run under
    :func:`~savlens.threads.limit_threads` with ``n_threads`` threads for torch and for the BLAS / OpenMP
    pools scikit-learn uses, restored afterwards: with the default pools the solver ran about 30x slower on 2
    cores shared with other jobs. ``n_threads=None`` leaves the pools as they are (e.g. set by the caller).
    The thread count does not change the fitted model beyond floating-point rounding.

    Example:
        >>> z = torch.randn(20, 1, 2, 4, generator=torch.Generator().manual_seed(0))
        >>> z[:10, 0, 0, 0] += 5; z[10:, 0, 0, 1] += 5
        >>> f = HeadFeatures(z, labels=["a"] * 10 + ["b"] * 10)
        >>> HeadLinearProbe(["L0H0"]).fit(f).score(f)
        1.0
    """

    _fitted_attr: ClassVar[str] = "model_"

    def __init__(
        self,
        heads: HeadsArg = None,
        *,
        k: int = 20,
        C: float = 1.0,
        max_iter: int = 1000,
        normalize: bool = True,
        criterion: str | Criterion = "centroid",
        mode: str | None = None,
        seed: int = 0,
        n_threads: int | None = 1,
    ) -> None:
        self.heads = heads
        self.k = k
        self.C = C
        self.max_iter = max_iter
        self.normalize = normalize
        self.criterion = criterion
        self.mode = mode
        self.seed = seed
        self.n_threads = n_threads

    def fit(
        self, features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None
    ) -> "HeadLinearProbe":
        """Select heads and fit the logistic regression on their concatenated vectors."""
        threads = _check_threads(self.n_threads, "HeadLinearProbe", "n_threads")
        from sklearn.linear_model import LogisticRegression  # before the limit, so that its BLAS / OpenMP are capped

        with limit_threads(threads):
            labels = self._select(features, labels)
            codes = encode_labels(labels, what="HeadLinearProbe.fit").codes
            x = self._matrix(features, "fit", self.normalize).double().numpy()
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
            self.model_ = model.fit(x, codes.numpy())
        return self

    def predict_proba(self, features: "HeadFeatures | StoredFeatures") -> Float[Tensor, "example class"]:
        """Return the probe's class probabilities, columns in ``classes_`` order."""
        self._check_fitted("HeadLinearProbe.predict_proba")
        threads = _check_threads(self.n_threads, "HeadLinearProbe", "n_threads")
        with limit_threads(threads):
            x = self._matrix(features, "predict", self.normalize).double().numpy()
            return torch.from_numpy(self.model_.predict_proba(x)).double()


def layer_features(features: HeadFeatures) -> HeadFeatures:
    """Return features whose units are whole layers: ``example layer 1 (head_index d_head)``.

    Each layer's heads are concatenated into one vector (the input of ``o_proj`` at the position), so that
    head-level tools (scoring, SAV) treat a layer as one "head" ``L{layer}H0``. The hook is marked
    ``"<hook>#layer"`` so that layer and head features are never mixed.

    Example:
        >>> layer_features(HeadFeatures(torch.zeros(3, 2, 4, 8))).z.shape
        torch.Size([3, 2, 1, 32])
    """
    z = einops.rearrange(features.z, "example layer head_index d_head -> example layer 1 (head_index d_head)")
    return dataclasses.replace(features, z=z, hook=f"{features.hook}#layer", meta={**features.meta, "unit": "layer"})


class SparseLayers(Estimator):
    """Sparse layers instead of sparse heads (Table 3b): the ``k_layers`` best layers vote, as SAV heads do.

    A layer's concatenated heads are one unit (:func:`layer_features`); units are scored by nearest-centroid
    accuracy (``mode`` as in :func:`~savlens.scoring.centroid_accuracy`) and the ``k_layers`` best vote with
    the SAV's tie-breaking. Attributes after fit: ``layers_`` (best first), ``scores_`` (``layer x 1``),
    ``classes_``, ``sav_`` (the SAV over layer units).

    Example:
        >>> z = torch.randn(20, 3, 2, 4, generator=torch.Generator().manual_seed(0))
        >>> z[:10, 1, :, 0] += 5; z[10:, 1, :, 1] += 5
        >>> f = HeadFeatures(z, labels=[0] * 10 + [1] * 10)
        >>> SparseLayers(k_layers=1).fit(f).layers_
        (1,)
    """

    _fitted_attr: ClassVar[str] = "sav_"

    def __init__(
        self, k_layers: int = 3, *, mode: str | None = None, seed: int = 0, reference: bool = False, n_folds: int = 5
    ) -> None:
        self.k_layers = k_layers
        self.mode = mode
        self.seed = seed
        self.reference = reference
        self.n_folds = n_folds

    def fit(self, features: HeadFeatures, labels: Sequence[Hashable] | None = None) -> "SparseLayers":
        """Score every layer, keep the ``k_layers`` best and store their class centroids."""
        if labels is None and features.labels is None:
            raise LabelError("SparseLayers.fit: no labels; pass labels=... or features with labels attached.")
        sav = SAV(self.k_layers, "centroid", self.mode, self.seed, self.reference, n_folds=self.n_folds)
        sav.fit(layer_features(features), labels)
        self.layers_: tuple[int, ...] = tuple(h.layer for h in sav.heads_)
        self.scores_ = sav.scores_
        self.classes_ = sav.classes_
        self.sav_ = sav
        return self

    def _check(self, what: str) -> SAV:
        self._check_fitted(f"SparseLayers.{what}")
        return self.sav_

    def votes(self, features: HeadFeatures) -> Votes:
        """Return the selected layers' votes (``heads`` are ``L{layer}H0``)."""
        return self._check("votes").votes(layer_features(features))

    def predict(self, features: HeadFeatures) -> list[Hashable]:
        """Return the voted label of each example."""
        return self._check("predict").predict(layer_features(features))

    def predict_proba(self, features: HeadFeatures) -> Float[Tensor, "example class"]:
        """Return vote shares, columns in ``classes_`` order."""
        return self._check("predict_proba").predict_proba(layer_features(features))

    def score(self, features: HeadFeatures, labels: Sequence[Hashable] | None = None) -> float:
        """Return the accuracy of :meth:`predict` on labelled features."""
        return self._check("score").score(layer_features(features), labels)
