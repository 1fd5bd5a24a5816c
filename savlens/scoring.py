"""Head selection criteria: per-head scores computed on labelled :class:`~savlens.cache.HeadFeatures`.

A criterion is any function ``(features, labels) -> HeadScores`` (extra keyword arguments such as ``mode``
and ``seed`` are optional). Register one with :func:`register_criterion` to use it by name in
:class:`savlens.sav.SAV`; see docs/criteria.md. Shipped criteria, all written through that extension point:

- ``"centroid"`` (:func:`centroid_accuracy`): nearest-class-centroid accuracy with cosine similarity, the
  SAV criterion of the paper, in ``in_sample`` / ``loo`` / ``kfold`` modes;
- ``"probe"`` (:func:`probe_accuracy`): held-out accuracy of a per-head ridge-regression classifier;
- ``"fisher"`` (:func:`fisher_ratio`): between-class over within-class scatter.

Every criterion scores all ``layer x head_index`` heads at once (einsum / batched linear algebra).
"""

import inspect
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, LabelError
from savlens.heads import HeadScores
from savlens.labels import encode_labels, resolve_labels
from savlens.outofcore import StoredFeatures, block_sizes

EPS = 1e-8
"""The eps of :func:`torch.nn.functional.cosine_similarity`: each norm is clamped to at least this."""

MODES = ("in_sample", "loo", "kfold")

def head_matrix(features: HeadFeatures, what: str = "features") -> Float[Tensor, "example layer head_index d_head"]:
    """Return ``features.z`` as a float tensor, refusing NaN / inf.

    Half-precision features are upcast to float32; float64 stays float64. The check reduces each head vector
    to its norm first, so finite features are read once.
    """
    z = features.z
    if features.n_examples == 0:
        raise FeatureError(f"{what}: the features hold no examples.")
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    norms = torch.linalg.vector_norm(z, dim=-1)
    if not torch.isfinite(norms).all():
        bad = ~torch.isfinite(z).all(dim=-1)
        if not bad.any():
            raise FeatureError(f"{what}: the feature norms overflow {z.dtype}; rescale the features or pass float64.")
        i, layer, head = torch.nonzero(bad)[0].tolist()
        ids = features.example_ids or []
        layers = features.layers or ()
        raise FeatureError(
            f"{what}: the features hold NaN or infinite values in {int(bad.sum())} head vectors "
            f"(first: example {ids[i]!r}, layer {layers[layer]}, head {head})."
        )
    return z


def stratified_folds(
    labels: Sequence[Hashable] | Int[Tensor, " example"], n_folds: int = 5, seed: int = 0
) -> Int[Tensor, " example"]:
    """Assign each example to one of ``n_folds`` folds, stratified by class and seeded.

    Within each class (in sorted class order) the examples are shuffled with ``numpy.random.default_rng(seed)``
    and dealt round-robin, continuing the deal across classes so the folds differ in size by at most one.

    Example:
        >>> stratified_folds(["a", "a", "b", "b"], n_folds=2, seed=0).bincount().tolist()
        [2, 2]
    """
    codes = labels if isinstance(labels, Tensor) else encode_labels(labels, min_classes=1).codes
    n = int(codes.shape[0])
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 2 <= n_folds <= n:
        raise ArgumentError(f"n_folds must be an int between 2 and the {n} examples; got {n_folds!r}.")
    rng = np.random.default_rng(seed)
    folds = np.empty(n, dtype=np.int64)
    offset = 0
    codes_np = codes.numpy()
    for c in np.unique(codes_np):
        members = rng.permutation(np.flatnonzero(codes_np == c))
        folds[members] = (offset + np.arange(members.size)) % n_folds
        offset += members.size
    return torch.from_numpy(folds)


# registry --------------------------------------------------------------------------------------------

Criterion = Callable[..., HeadScores]
_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, replace: bool = False) -> Callable[[Criterion], Criterion]:
    """Register a head-selection criterion under ``name`` (a decorator).

    The function takes ``(features, labels)`` and returns :class:`HeadScores` (higher is better); it may also
    accept keyword arguments ``mode``, ``seed``, ``n_folds`` that :class:`~savlens.sav.SAV` then passes on.

    Example:
        >>> @register_criterion("mean_norm", replace=True)
        ... def mean_norm(features, labels=None):
        ...     return HeadScores(features.z.norm(dim=-1).mean(0), "mean_norm", layers=features.layers)
        >>> get_criterion("mean_norm") is mean_norm
        True
    """

    def decorate(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise ArgumentError(f"register_criterion({name!r}) decorates a function; got {fn!r}.")
        if name in _CRITERIA and _CRITERIA[name] is not fn and not replace:
            raise ArgumentError(
                f"a criterion named {name!r} is already registered ({_CRITERIA[name].__qualname__}); "
                "pass replace=True to override it."
            )
        _CRITERIA[name] = fn
        return fn

    return decorate


def get_criterion(criterion: str | Criterion) -> Criterion:
    """Return the criterion registered under ``criterion`` (a callable is returned as is)."""
    if callable(criterion):
        return criterion
    try:
        return _CRITERIA[criterion]
    except KeyError:
        raise ArgumentError(
            f"no criterion is registered as {criterion!r}; registered: {', '.join(sorted(_CRITERIA))}. "
            "Register one with @savlens.scoring.register_criterion(name)."
        ) from None


def available_criteria() -> tuple[str, ...]:
    """Return the registered criterion names, sorted."""
    return tuple(sorted(_CRITERIA))


def criterion_name(criterion: str | Criterion) -> str:
    """Return the registered name of ``criterion``, or ``module.qualname`` for an unregistered function."""
    if isinstance(criterion, str):
        return criterion
    for name, fn in _CRITERIA.items():
        if fn is criterion:
            return name
    return f"{getattr(criterion, '__module__', '?')}.{getattr(criterion, '__qualname__', repr(criterion))}"


def run_criterion(
    criterion: str | Criterion,
    features: "HeadFeatures | StoredFeatures",
    labels: Sequence[Hashable] | None = None,
    *,
    mode: str | None = None,
    **options: Any,
) -> HeadScores:
    """Call a criterion, passing ``mode`` (when not None) and those ``options`` its signature accepts.

    Raises:
        ArgumentError: ``mode`` was given but the criterion takes none, or it returned something other
            than :class:`HeadScores`.
        FeatureError: the criterion's scores do not cover the features' ``layer head_index`` grid.
    """
    fn = get_criterion(criterion)
    name = criterion_name(criterion)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if v is not None and (takes_any or k in params)}
    if mode is not None:
        if not (takes_any or "mode" in params):
            raise ArgumentError(f"criterion {name!r} takes no mode; drop mode={mode!r} or use another criterion.")
        kwargs["mode"] = mode
    result = fn(features, labels, **kwargs)
    if not isinstance(result, HeadScores):
        raise ArgumentError(f"criterion {name!r} returned {type(result).__name__}; it must return HeadScores.")
    if tuple(result.scores.shape) != (features.n_layers, features.n_heads):
        raise FeatureError(
            f"criterion {name!r} returned scores of shape {tuple(result.scores.shape)} for features with "
            f"layer={features.n_layers}, head_index={features.n_heads}."
        )
    if tuple(result.layers or ()) != tuple(features.layers or ()):
        raise FeatureError(
            f"criterion {name!r} returned scores for layers {result.layers} but the features hold layers "
            f"{features.layers}; build its HeadScores with layers=features.layers."
        )
    return result


# centroid accuracy -----------------------------------------------------------------------------------


def _class_sums(x: Tensor, codes: Tensor, n_classes: int) -> Tensor:
    """Sum ``x`` (``example head d_head``) per class: ``class head d_head``."""
    onehot = F.one_hot(codes, n_classes).to(x.dtype)
    return (onehot.T @ x.reshape(x.shape[0], -1)).reshape(n_classes, *x.shape[1:])


#: cosine similarities closer than this count as tied (see ``_winner``)
LOO_TIE_TOL = 1e-12


def _rows(features: "HeadFeatures | StoredFeatures", start: int, stop: int, heads: slice) -> Tensor:
    """Examples ``start:stop`` of the flat heads ``heads``: ``example head d_head`` (stored dtype)."""
    if isinstance(features, HeadFeatures):
        z = features.z
        return z.reshape(z.shape[0], -1, z.shape[-1])[start:stop, heads]
    return features.rows(start, stop, heads)


def _as_f64(
    features: "HeadFeatures | StoredFeatures", raw: Tensor, start: int, heads: slice, j: int, step: int, what: str
) -> Tensor:
    """Heads ``j:j+step`` of a block read from ``heads`` (rows from ``start``) as float64, refusing NaN / inf."""
    x = raw[:, j : j + step].double()
    flat = x.reshape(-1)
    if torch.isfinite(flat @ flat):  # one BLAS dot: finite rows cannot overflow it in float64
        return x
    bad = ~torch.isfinite(x).all(dim=-1)
    if bad.any():
        i, h = torch.nonzero(bad)[0].tolist()
        at = (heads.start or 0) + j + h
        ids = features.example_ids or []
        layers = features.layers or ()
        raise FeatureError(
            f"{what}: the features hold NaN or infinite values in {int(bad.sum())} head vectors "
            f"(first: example {ids[start + i]!r}, layer {layers[at // features.n_heads]}, "
            f"head {at % features.n_heads})."
        )
    return x


def _groups(
    features: "HeadFeatures | StoredFeatures", state_per_head: int, temp: int
) -> Iterator[tuple[slice, int, int]]:
    """Yield ``(heads, examples_per_block, heads_per_step)``: groups of flat heads, the block size and the float64
    step that keep the state, the blocks and the working arrays within :func:`savlens.outofcore.memory_bound`."""
    itemsize = features.z.element_size() if isinstance(features, HeadFeatures) else features.dtype.itemsize
    per_group, rows, step = block_sizes(features, state_per_head, features.d_head * itemsize, temp)
    n_flat = features.n_layers * features.n_heads
    for j in range(0, n_flat, per_group):
        yield slice(j, min(j + per_group, n_flat)), rows, step


def _winner(sim: Tensor) -> Tensor:
    """The first class whose similarity is within ``LOO_TIE_TOL`` of the best: ``... class -> ...``.

    Similarities computed by different formulas (or summed in a different order, block by block) differ in the
    last float64 bits (~1e-16); counting those as ties makes the result independent of the block sizes, and a
    tie goes to the first class, as an exact tie does in a brute-force loop. Real class signal in float32 or
    half-precision features is orders of magnitude larger.
    """
    best = sim.max(dim=-1, keepdim=True).values
    return (sim >= best - LOO_TIE_TOL).to(torch.int8).argmax(dim=-1)


def _cosines(x: Tensor, centroids: Tensor) -> Tensor:
    """Cosine similarity of ``x`` (``example head d_head``) to ``centroids`` (``class head d_head``), each norm
    clamped to at least ``EPS``: ``example head class``."""
    dots = torch.einsum("njd,cjd->njc", x, centroids)
    c_norm = torch.linalg.vector_norm(centroids, dim=-1).clamp_min(EPS)
    x_norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(EPS)
    return dots / c_norm.T / x_norm[..., None]


def _centroid_correct(
    features: "HeadFeatures | StoredFeatures",
    codes: Tensor,
    classes: tuple[Hashable, ...],
    mode: str,
    n_folds: int,
    seed: int,
    what: str,
) -> Tensor:
    """Count per flat head the examples assigned their own class, streaming blocks of examples and heads.

    Two passes per group of heads: class sums (float64), then each example's similarities to the centroids
    (in-sample, without itself: closed-form leave-one-out, or without its fold).
    """
    n, c, d = features.n_examples, len(classes), features.d_head
    counts = torch.bincount(codes, minlength=c)
    folds = stratified_folds(codes, n_folds, seed) if mode == "kfold" else None
    n_sums = c * (n_folds + 1 if folds is not None else 1)
    if folds is not None:
        fold_counts = torch.bincount(folds * c + codes, minlength=n_folds * c).reshape(n_folds, c)
        train_counts = counts[None] - fold_counts
        for f in range(n_folds):
            if (folds == f).any() and (train_counts[f] == 0).any():
                k = int(torch.nonzero(train_counts[f] == 0)[0])
                raise LabelError(
                    f"{what}: class {classes[k]!r} is empty in the training split of fold {f} (it has "
                    f"{int(counts[k])} example(s)); use fewer folds, mode='loo' or more examples."
                )
    temp = d * 8 * 4 + c * 8 * 8 + 64
    correct = []
    whole: Tensor | None = None  # the block, when one block holds every example: read once, not twice
    for heads, rows, step in _groups(features, n_sums * d * 8 * 2, temp):
        n_heads = heads.stop - heads.start
        sums = torch.zeros(n_sums, n_heads, d, dtype=torch.float64)
        raw = whole = None  # drop the previous group's block before reading this one's
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            raw = None  # drop the previous block before reading the next
            raw = _rows(features, start, stop, heads)
            whole = raw if stop - start == n else None
            onehot = F.one_hot(codes[start:stop], c).double().T
            fold_onehot = None
            if folds is not None:
                fold_onehot = F.one_hot(folds[start:stop] * c + codes[start:stop], n_folds * c).double().T
            for j in range(0, n_heads, step):
                x = _as_f64(features, raw, start, heads, j, step, what)
                flat = x.reshape(x.shape[0], -1)
                sums[:c, j : j + step] += (onehot @ flat).reshape(c, -1, d)
                if fold_onehot is not None:
                    sums[c:, j : j + step] += (fold_onehot @ flat).reshape(n_folds * c, -1, d)
        class_sums = sums[:c]
        got = torch.zeros(n_heads, dtype=torch.long)
        centroids = class_sums / counts.double()[:, None, None]
        ss = torch.einsum("cjd,cjd->cj", class_sums, class_sums)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            if whole is None:
                raw = None  # drop the previous block before reading the next
                raw = _rows(features, start, stop, heads)
            else:
                raw = whole
            y = codes[start:stop]
            fb = folds[start:stop] if folds is not None else None
            for j in range(0, n_heads, step):
                x = _as_f64(features, raw, start, heads, j, step, what)
                part = slice(j, j + step)
                if mode == "in_sample":
                    got[part] += (_winner(_cosines(x, centroids[:, part])) == y[:, None]).sum(0)
                elif mode == "loo":
                    got[part] += _loo_correct_block(x, y, class_sums[:, part], ss[:, part], counts)
                else:
                    assert fb is not None
                    for f in torch.unique(fb).tolist():
                        sel = torch.nonzero(fb == f).squeeze(1)
                        fold_sums = sums[c + f * c : c + (f + 1) * c, part]
                        cents = (class_sums[:, part] - fold_sums) / train_counts[f].double()[:, None, None]
                        got[part] += (_winner(_cosines(x[sel], cents)) == y[sel, None]).sum(0)
        correct.append(got)
    return torch.cat(correct)


def _loo_correct_block(x: Tensor, codes: Tensor, sums: Tensor, ss: Tensor, counts: Tensor) -> Tensor:
    """Leave-one-out correct counts of a block (float64 ``example head d_head``) against class sums of all
    examples (``class head d_head``, their squared norms ``class head``)."""
    # float64 throughout: the closed form compares the own-class similarity (from |S_y - x|^2 = |S_y|^2 - 2 x.S_y
    # + |x|^2) with the others'; with float32 dot products its rounding (~1e-7) can outweigh the real differences
    # of a near-constant head and bias it towards its own class (a head at chance scored 0.975).
    n, n_heads = x.shape[:2]
    counts = counts.double()
    g = torch.einsum("njd,cjd->njc", x, sums)  # x_i . S_c
    q = torch.einsum("njd,njd->nj", x, x)  # |x_i|^2
    # other classes: centroid S_c / n_c
    sim = (g / counts) / (ss.sqrt() / counts[:, None]).clamp_min(EPS).T
    # own class without the example: (S_y - x_i) / (n_y - 1)
    idx = codes[:, None, None].expand(n, n_heads, 1)
    g_own = g.gather(-1, idx).squeeze(-1)
    m = (counts[codes] - 1)[:, None]
    own_norm = ((ss[codes] - 2 * g_own + q).clamp_min(0).sqrt() / m).clamp_min(EPS)
    own = ((g_own - q) / m) / own_norm
    own = torch.where(m > 0, own, torch.full_like(own, -torch.inf))  # a lone example has no own centroid
    sim.scatter_(-1, idx, own[..., None])
    return (_winner(sim) == codes[:, None]).sum(0)


def _correct_reference(z: Tensor, codes: Tensor, n_classes: int, chunk_elems: int = 1 << 26) -> Tensor:
    """In-sample correct counts exactly as the reference computes them (``layer head_index``)."""
    centroids = torch.stack([z[codes == c].mean(dim=0) for c in range(n_classes)], dim=2)  # L H C d
    per = max(1, chunk_elems // max(1, centroids.numel()))
    correct = torch.zeros(z.shape[1:3], dtype=torch.long)
    for start in range(0, z.shape[0], per):
        part = z[start : start + per]
        sim = F.cosine_similarity(part[:, :, :, None, :], centroids[None], dim=-1, eps=EPS)
        correct += (sim.argmax(dim=-1) == codes[start : start + per, None, None]).sum(0)
    return correct


@register_criterion("centroid")
def centroid_accuracy(
    features: "HeadFeatures | StoredFeatures",
    labels: Sequence[Hashable] | None = None,
    *,
    mode: str | None = None,
    n_folds: int = 5,
    seed: int = 0,
    reference: bool = False,
) -> HeadScores:
    """Score every head by its nearest-class-centroid accuracy (cosine similarity), the SAV criterion.

    For head (l, h), each class centroid is the mean of ``z[:, l, h]`` over the class's examples; an example
    is assigned the class of highest cosine similarity (eps 1e-8; similarities within ``LOO_TIE_TOL`` of the
    highest count as tied, and a tie goes to the first class in class order); the score is the fraction assigned
    their own class (the reference's count is ``score * n_examples``). Sums and similarities are float64 whatever
    the features' dtype (half-precision stores are upcast block by block).

    ``features`` may be :class:`~savlens.outofcore.StoredFeatures`: the store is then read in blocks of examples
    and heads, two passes per group of heads (class sums, then similarities), with working memory within
    :func:`savlens.outofcore.memory_bound`; in-memory features go through the same code in one block when they
    fit, so both give the same scores.

    Args:
        features: ``example layer head_index d_head`` head features (``blocks.*.attn.hook_z`` at ``last``), in
            memory or in a store (:func:`savlens.outofcore.open_shards`).
        labels: one label per example; None uses ``features.labels``.
        mode: ``"loo"`` (default): each example is scored against centroids without itself; a class
            with a single example then has no centroid for that example, which counts as wrong.
            ``"kfold"``: seeded stratified folds (:func:`stratified_folds`); a class left empty in a
            training split raises. ``"in_sample"``: the reference's choice, each example is part of its
            own centroid.
        n_folds: folds for ``"kfold"``.
        seed: fold seed for ``"kfold"``.
        reference: compute exactly as the reference code (``mode`` must be ``"in_sample"``, classes in order
            of first appearance, cosines from :func:`torch.nn.functional.cosine_similarity` in the features'
            dtype); slower, used by ``SAV(reference=True)``.

    Example:
        >>> z = torch.zeros(4, 1, 2, 2); z[:2, 0, 0, 0] = 1; z[2:, 0, 0, 1] = 1; z[:, 0, 1] = 1
        >>> centroid_accuracy(HeadFeatures(z, labels=["a", "a", "b", "b"])).scores.tolist()
        [[1.0, 0.5]]
    """
    what = "centroid_accuracy"
    mode = ("in_sample" if reference else "loo") if mode is None else mode
    if mode not in MODES:
        raise ArgumentError(f"{what}: mode must be one of {MODES}; got {mode!r}.")
    if reference and mode != "in_sample":
        raise ArgumentError(f"{what}: reference=True scores in sample, as the reference code; got mode={mode!r}.")
    enc = encode_labels(resolve_labels(features, labels, what), order="first" if reference else "sorted", what=what)
    n, c = features.n_examples, enc.n_classes
    if n == 0:
        raise FeatureError(f"{what}: the features hold no examples.")
    params: dict[str, Any] = {"n_examples": n, "reference": reference}
    if reference:
        if isinstance(features, StoredFeatures):
            features = features.load()  # the reference computes in the features' dtype, on all of them at once
        head_matrix(features, what)
        z = features.z if features.z.is_floating_point() else features.z.float()
        correct = _correct_reference(z, enc.codes, c).reshape(-1)
    else:
        correct = _centroid_correct(features, enc.codes, enc.classes, mode, n_folds, seed, what)
        if mode == "kfold":
            params.update(n_folds=n_folds, seed=seed)
    table = (correct.double() / n).reshape(features.n_layers, features.n_heads)
    return HeadScores(table, "centroid", mode, params, features.layers)


# linear probe ----------------------------------------------------------------------------------------


def _design(
    features: "HeadFeatures | StoredFeatures", raw: Tensor, start: int, heads: slice, j: int, step: int, what: str
) -> Tensor:
    """The probe's design rows of heads ``j:j+step`` of a block: the unit-normalised head vector and a constant 1,
    float64 ``example head p`` (p = d_head + 1)."""
    x = _as_f64(features, raw, start, heads, j, step, what)
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
    return torch.cat([x, torch.ones(*x.shape[:2], 1, dtype=x.dtype)], dim=-1)


def _ridge_dual(a: Tensor, y: Tensor, mode: str, folds: Tensor | None, alpha: float) -> Tensor:
    """Ridge predictions per head from the kernels ``A A^T`` (``head example p`` design, float64): in sample,
    exact leave-one-out (``y - (B Y)_i / B_ii`` with ``B = (A A^T + alpha I)^-1``) or each fold's from the others:
    ``head example class``."""
    n = a.shape[1]
    kernel = a @ a.transpose(1, 2)
    eye = alpha * torch.eye(n, dtype=a.dtype)
    if mode == "in_sample":
        return kernel @ torch.cholesky_solve(y.expand(a.shape[0], *y.shape), torch.linalg.cholesky(kernel + eye))
    if mode == "loo":
        b = torch.cholesky_inverse(torch.linalg.cholesky(kernel + eye))
        return y - (b @ y) / torch.diagonal(b, dim1=1, dim2=2)[..., None]
    assert folds is not None
    pred = torch.empty(a.shape[0], n, y.shape[1], dtype=a.dtype)
    for f in torch.unique(folds).tolist():
        test, train = torch.nonzero(folds == f).squeeze(1), torch.nonzero(folds != f).squeeze(1)
        k_tr = kernel[:, train][:, :, train] + alpha * torch.eye(train.numel(), dtype=a.dtype)
        coef = torch.cholesky_solve(y[train].expand(a.shape[0], -1, -1), torch.linalg.cholesky(k_tr))
        pred[:, test] = kernel[:, test][:, :, train] @ coef
    return pred


def _probe_correct(
    features: "HeadFeatures | StoredFeatures",
    codes: Tensor,
    n_classes: int,
    mode: str,
    folds: Tensor | None,
    alpha: float,
    what: str,
) -> Tensor:
    """Count per flat head the examples a ridge probe gets right, streaming blocks of examples and heads.

    Two passes per group of heads: the Gram matrix ``A^T A`` and ``A^T Y`` of every head (float64, ``p x p`` and
    ``p x class``; per fold too for k-fold), then each example's prediction: in sample from
    ``W = (A^T A + alpha I)^-1 A^T Y``; leave-one-out in closed form, ``(a.M A^T Y - h y) / (1 - h)`` with
    ``M = (A^T A + alpha I)^-1`` and ``h = a.M a``; k-fold from the Gram matrices minus the test fold's. With no
    more examples than ``p`` and all of them in one block (few-shot sets), the dual form on ``n x n`` kernels.
    """
    n, c, d = features.n_examples, n_classes, features.d_head
    p = d + 1
    n_folds = int(folds.max()) + 1 if folds is not None else 0
    n_sets = 1 + n_folds
    state = (n_sets * (p * p + p * c) + p * p + max(1, n_folds) * p * c) * 8 * 2
    temp = (p * 4 + c * 6) * 8 + 64
    y_all = F.one_hot(codes, c).double()
    eye = alpha * torch.eye(p, dtype=torch.float64)
    correct = []
    whole: Tensor | None = None  # the block, when one block holds every example: read once, not twice
    for heads, rows, step in _groups(features, state, temp):
        n_heads = heads.stop - heads.start
        if n <= p and rows == n:  # few examples, all in one block: the dual form (n x n kernels) is cheaper
            raw = whole = None
            raw = _rows(features, 0, n, heads)
            got = torch.zeros(n_heads, dtype=torch.long)
            for j in range(0, n_heads, step):
                a = _design(features, raw, 0, heads, j, step, what).transpose(0, 1)  # head example p
                pred = _ridge_dual(a, y_all, mode, folds, alpha).transpose(0, 1)  # example head class
                got[j : j + a.shape[0]] = (_winner(pred) == codes[:, None]).sum(0)
            correct.append(got)
            continue
        gram = torch.zeros(n_sets, n_heads, p, p, dtype=torch.float64)
        rhs = torch.zeros(n_sets, n_heads, p, c, dtype=torch.float64)
        raw = whole = None  # drop the previous group's block before reading this one's
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            raw = None  # drop the previous block before reading the next
            raw = _rows(features, start, stop, heads)
            whole = raw if stop - start == n else None
            y = y_all[start:stop]
            fb = folds[start:stop] if folds is not None else None
            for j in range(0, n_heads, step):
                a = _design(features, raw, start, heads, j, step, what)
                part = slice(j, j + a.shape[1])
                if fb is None:
                    gram[0, part] += torch.einsum("njp,njq->jpq", a, a)
                    rhs[0, part] += torch.einsum("njp,nc->jpc", a, y)
                else:  # per fold; the whole sums are the folds' sums
                    for f in torch.unique(fb).tolist():
                        sel = torch.nonzero(fb == f).squeeze(1)
                        gram[1 + f, part] += torch.einsum("njp,njq->jpq", a[sel], a[sel])
                        rhs[1 + f, part] += torch.einsum("njp,nc->jpc", a[sel], y[sel])
        if folds is not None:
            gram[0], rhs[0] = gram[1:].sum(0), rhs[1:].sum(0)
        if mode == "in_sample":
            coef = torch.cholesky_solve(rhs[0], torch.linalg.cholesky(gram[0] + eye))
        elif mode == "loo":
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram[0] + eye))
            coef = inverse @ rhs[0]
        else:  # one probe per fold, fitted on the other folds
            coef = torch.stack(
                [
                    torch.cholesky_solve(rhs[0] - rhs[1 + f], torch.linalg.cholesky(gram[0] - gram[1 + f] + eye))
                    for f in range(n_folds)
                ]
            )
        del gram, rhs
        got = torch.zeros(n_heads, dtype=torch.long)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            if whole is None:
                raw = None  # drop the previous block before reading the next
                raw = _rows(features, start, stop, heads)
            else:
                raw = whole
            yb, cb = y_all[start:stop], codes[start:stop]
            fb = folds[start:stop] if folds is not None else None
            for j in range(0, n_heads, step):
                a = _design(features, raw, start, heads, j, step, what)
                part = slice(j, j + a.shape[1])
                if mode == "in_sample":
                    pred = torch.einsum("njp,jpc->njc", a, coef[part])
                elif mode == "loo":
                    h = torch.einsum("njp,jpq,njq->nj", a, inverse[part], a)[..., None]
                    pred = (torch.einsum("njp,jpc->njc", a, coef[part]) - h * yb[:, None]) / (1 - h)
                else:
                    assert fb is not None
                    pred = torch.empty(a.shape[0], a.shape[1], c, dtype=torch.float64)
                    for f in torch.unique(fb).tolist():
                        sel = torch.nonzero(fb == f).squeeze(1)
                        pred[sel] = torch.einsum("njp,jpc->njc", a[sel], coef[f, part])
                got[part] += (_winner(pred) == cb[:, None]).sum(0)
        correct.append(got)
    return torch.cat(correct)


@register_criterion("probe")
def probe_accuracy(
    features: "HeadFeatures | StoredFeatures",
    labels: Sequence[Hashable] | None = None,
    *,
    mode: str = "loo",
    n_folds: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
) -> HeadScores:
    """Score every head by the held-out accuracy of a linear probe on that head alone.

    The probe is a ridge-regression classifier (least squares on one-hot targets, predicted class = the first
    class within ``LOO_TIE_TOL`` of the highest prediction) on the unit-normalised head vector plus a constant
    feature, penalty ``alpha`` on all weights. It is solved in closed form for all heads at once from each head's
    Gram matrix (float64, ``(d_head + 1)^2`` per head; batched Cholesky), so no per-head loop of model fits.

    ``features`` may be :class:`~savlens.outofcore.StoredFeatures`: the store is then read in blocks of examples
    and heads, two passes per group of heads (Gram matrices, then predictions), with working memory within
    :func:`savlens.outofcore.memory_bound`; in-memory features go through the same code in one block, so both
    give the same scores.

    Args:
        features: ``example layer head_index d_head`` head features, in memory or in a store.
        labels: one label per example; None uses ``features.labels``.
        mode: ``"loo"`` (exact closed-form leave-one-out), ``"kfold"`` (:func:`stratified_folds`) or
            ``"in_sample"`` (training accuracy; near 1 whenever d_head >= examples).
        n_folds: folds for ``"kfold"``.
        seed: fold seed for ``"kfold"``.
        alpha: ridge penalty (> 0).

    Example:
        >>> z = torch.zeros(6, 1, 2, 2); z[:3, 0, 0, 0] = 1; z[3:, 0, 0, 1] = 1; z[:, 0, 1] = 1
        >>> probe_accuracy(HeadFeatures(z, labels=[0, 0, 0, 1, 1, 1])).scores.tolist()
        [[1.0, 0.0]]
    """
    what = "probe_accuracy"
    if mode not in MODES:
        raise ArgumentError(f"{what}: mode must be one of {MODES}; got {mode!r}.")
    if not alpha > 0:
        raise ArgumentError(f"{what}: alpha must be > 0; got {alpha!r}.")
    enc = encode_labels(resolve_labels(features, labels, what), what=what)
    if features.n_examples == 0:
        raise FeatureError(f"{what}: the features hold no examples.")
    params: dict[str, Any] = {"alpha": alpha, "n_examples": features.n_examples}
    folds = None
    if mode == "kfold":
        params.update(n_folds=n_folds, seed=seed)
        folds = stratified_folds(enc.codes, n_folds, seed)
    correct = _probe_correct(features, enc.codes, enc.n_classes, mode, folds, float(alpha), what)
    table = (correct.double() / features.n_examples).reshape(features.n_layers, features.n_heads)
    return HeadScores(table, "probe", mode, params, features.layers)


# Fisher ratio ----------------------------------------------------------------------------------------


@register_criterion("fisher")
def fisher_ratio(
    features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None = None, *, normalize: bool = True
) -> HeadScores:
    """Score every head by its Fisher ratio: between-class over within-class scatter.

    ``between = sum_c n_c |mu_c - mu|^2`` and ``within = sum_i |x_i - mu_{y_i}|^2`` (traces of the scatter
    matrices), computed from class sums in one pass (float64; streamed in blocks for
    :class:`~savlens.outofcore.StoredFeatures`). A head with zero within-class scatter scores ``inf``
    (``0`` if it has no between-class scatter either). In-sample by nature: it has no ``mode``.

    Args:
        features: ``example layer head_index d_head`` head features.
        labels: one label per example; None uses ``features.labels``.
        normalize: unit-normalise each head vector first (cosine geometry, as the centroid criterion).

    Example:
        >>> z = torch.zeros(4, 1, 2, 2); z[:2, 0, 0, 0] = 1; z[2:, 0, 0, 1] = 1; z[:, 0, 1, 0] = 1
        >>> z[0, 0, 1, 1] = 0.5
        >>> fisher_ratio(HeadFeatures(z, labels=["a", "a", "b", "b"])).scores.round(decimals=3).tolist()
        [[inf, 0.5]]
    """
    what = "fisher_ratio"
    enc = encode_labels(resolve_labels(features, labels, what), what=what)
    n, c, d = features.n_examples, enc.n_classes, features.d_head
    if n == 0:
        raise FeatureError(f"{what}: the features hold no examples.")
    counts = enc.counts.double()
    sum_parts, sq_parts = [], []
    for heads, rows, step in _groups(features, c * d * 8 * 2, d * 8 * 3 + 64):  # streamed: class sums, squares
        sums = torch.zeros(c, heads.stop - heads.start, d, dtype=torch.float64)
        sq = torch.zeros(heads.stop - heads.start, dtype=torch.float64)
        for start in range(0, n, rows):
            raw = None  # drop the previous block before reading the next
            raw = _rows(features, start, min(start + rows, n), heads)
            for j in range(0, heads.stop - heads.start, step):
                x = _as_f64(features, raw, start, heads, j, step, what)
                if normalize:
                    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
                sums[:, j : j + step] += _class_sums(x, enc.codes[start : start + x.shape[0]], c)
                sq[j : j + step] += torch.einsum("njd,njd->j", x, x)
        sum_parts.append(sums)
        sq_parts.append(sq)
    sums, total_sq = torch.cat(sum_parts, dim=1), torch.cat(sq_parts)
    total = sums.sum(0)
    class_sq = (torch.einsum("cjd,cjd->cj", sums, sums) / counts[:, None]).sum(0)
    grand_sq = torch.einsum("jd,jd->j", total, total).double() / features.n_examples
    between = (class_sq - grand_sq).clamp_min(0)
    within = (total_sq - class_sq).clamp_min(0)
    tiny = 1e-12 * total_sq.clamp_min(EPS)
    ratio = torch.where(within > tiny, between / within.clamp_min(EPS), torch.where(between > tiny, torch.inf, 0.0))
    table = ratio.reshape(features.n_layers, features.n_heads)
    return HeadScores(table, "fisher", None, {"normalize": normalize}, features.layers)
