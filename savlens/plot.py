"""Figures of the SAV method: head score heatmaps, head overlays, t-SNE, votes, accuracy curves, transfer.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot: nothing is shown, no global
state (backend, current figure) is touched, and the figure is freed when it goes out of scope. Save one with
``fig.savefig("heads.png")``; in a notebook, a returned figure is displayed as the cell's value.

The values drawn are the values given: :func:`score_heatmap` draws ``HeadScores.scores`` as they are and marks
the cells of the selected heads, :func:`transfer_heatmap` draws ``TransferMatrix.accuracy``, and so on. Needs
matplotlib (``pip install 'savlens[plot]'``); :func:`head_tsne` also needs scikit-learn.

Example:
    >>> import torch
    >>> from savlens.heads import HeadScores
    >>> scores = HeadScores(torch.rand(4, 3, generator=torch.Generator().manual_seed(0)), "demo")
    >>> fig = score_heatmap(scores, k=2)
    >>> fig.axes[0].images[0].get_array().shape
    (4, 3)
"""

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, LabelError, LoadError, PositionError
from savlens.heads import Head, HeadScores, HeadSet

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from savlens.causal import AttentionShares
    from savlens.inputs import Batch
    from savlens.sav import Votes
    from savlens.transfer import TransferMatrix

__all__ = [
    "accuracy_curve",
    "accuracy_vs_k",
    "accuracy_vs_shots",
    "attention_on_image",
    "attention_share_bars",
    "confusion_heatmap",
    "head_overlay",
    "head_tsne",
    "score_heatmap",
    "transfer_heatmap",
    "tsne_embedding",
    "vote_histograms",
]

Number = int | float
#: one accuracy per x value, or one list of accuracies (runs) per x value
Curve = Sequence[Number] | Sequence[Sequence[Number]]

#: Marker, size and colour of each task in :func:`head_overlay` (hollow, nested: shared heads stay visible).
_OVERLAY_STYLES = (
    ("s", 150, "tab:red"),
    ("o", 80, "tab:blue"),
    ("D", 34, "tab:green"),
    ("^", 20, "tab:orange"),
    ("v", 12, "tab:purple"),
    ("x", 16, "black"),
)


def _figure(figsize: tuple[float, float], ax: "Axes | None" = None) -> tuple["Figure", "Axes"]:
    """Return a new pyplot-free figure with one axes, or ``ax``'s figure and ``ax``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LoadError("savlens.plot needs matplotlib, which is not installed: pip install 'savlens[plot]'.") from None
    if ax is not None:
        return ax.get_figure(root=True), ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _grid_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """A figure size that keeps heatmap cells near-square and labels readable."""
    return (min(12.0, max(3.5, 0.38 * n_cols + 2.2)), min(12.0, max(3.0, 0.24 * n_rows + 1.4)))


def _as_heads(value: "HeadSet | Sequence[Head | str | tuple[int, int]] | Any") -> HeadSet:
    if isinstance(value, HeadSet):
        return value
    heads = getattr(value, "heads_", None)  # a fitted SAV or classifier
    if isinstance(heads, HeadSet):
        return heads
    return HeadSet(value)


# ---- head scores ------------------------------------------------------------------------------------


def score_heatmap(
    scores: HeadScores,
    k: int | None = 20,
    *,
    heads: "HeadSet | Sequence[Head | str | tuple[int, int]] | None" = None,
    seed: int = 0,
    ranks: bool = True,
    title: str | None = None,
    cmap: str = "viridis",
    ax: "Axes | None" = None,
) -> "Figure":
    """Draw a ``layer x head_index`` score table as a heatmap with the selected heads marked (paper Figure 3 top).

    Row ``i`` is model layer ``scores.layers[i]`` (layer 0 at the top), column ``h`` is query head ``h``. The
    marked cells are ``heads`` if given, else ``scores.top_k(k, seed=seed)``; each carries its rank (1 = best)
    when ``ranks``. The image holds ``scores.scores`` unchanged; the marks are one scatter collection (gid
    ``"selected-heads"``) with one offset ``(head, row)`` per head, in rank order.

    Args:
        scores: a criterion's :class:`~savlens.heads.HeadScores` (e.g. ``SAV.scores_``).
        k: how many of the best heads to mark (None or 0: none).
        heads: mark these heads instead (e.g. ``sav.heads_``, or heads chosen on another task).
        seed: tie-break seed of :meth:`HeadScores.top_k`.
        ranks: write each marked head's rank in its cell.
        title: the axes title (default: criterion, mode and the number of marked heads).
        cmap: a matplotlib colormap name.
        ax: draw into this axes instead of a new figure.
    """
    table = scores.scores.numpy()
    layers = list(scores.layers or range(scores.n_layers))
    marked = _as_heads(heads) if heads is not None else (scores.top_k(k, seed=seed) if k else HeadSet())
    for h in marked:
        if h.layer not in layers or h.head >= scores.n_heads:
            raise FeatureError(
                f"score_heatmap: head {h} is not in these scores (layers {tuple(layers)}, head_index={scores.n_heads})."
            )
    fig, ax = _figure(_grid_size(*table.shape), ax)
    finite = table[np.isfinite(table)]
    vmax = float(finite.max()) if finite.size else 1.0
    # the image holds the scores as they are; colours span the finite ones (inf, e.g. a Fisher ratio with no
    # within-class spread, takes the top colour)
    image = ax.imshow(table, cmap=cmap, aspect="auto", interpolation="nearest")
    image.set_clim(float(finite.min()) if finite.size else 0.0, vmax)
    label = scores.criterion + (f" ({scores.mode})" if scores.mode else "")
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    if len(marked):
        xs = [h.head for h in marked]
        ys = [layers.index(h.layer) for h in marked]
        dots = ax.scatter(xs, ys, marker="s", s=90, facecolors="none", edgecolors="red", linewidths=1.6)
        dots.set_gid("selected-heads")
        dots.set_label(f"selected heads (k={len(marked)})")
        if ranks:
            for r, (x, y) in enumerate(zip(xs, ys), start=1):
                ax.text(x, y, str(r), ha="center", va="center", fontsize=6.5, color="white", fontweight="bold")
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.06), fontsize=8, frameon=False)
    _head_axes(ax, layers, scores.n_heads)
    ax.set_title(title if title is not None else f"head scores: {label}")
    return fig


def _head_axes(ax: "Axes", layers: Sequence[int], n_heads: int) -> None:
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    step = max(1, len(layers) // 15)
    ax.set_yticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    ax.tick_params(labelsize=7)


def head_overlay(
    tasks: Mapping[str, Any],
    *,
    k: int = 20,
    seed: int = 0,
    n_layers: int | None = None,
    n_heads: int | None = None,
    title: str | None = None,
    ax: "Axes | None" = None,
) -> "Figure":
    """Draw where several tasks' selected heads sit on the ``layer x head_index`` grid, overlaid.

    Each task gets one hollow marker style; styles are nested (large square, circle, diamond, ...) so a head
    that several tasks select shows all their markers in one cell. Each task's markers are one scatter
    collection labelled with the task's name, offsets ``(head, layer)`` in rank order.

    Args:
        tasks: task name -> its heads: a :class:`~savlens.heads.HeadSet` (or labels), a fitted SAV (its
            ``heads_``), or :class:`~savlens.heads.HeadScores` (its ``top_k(k, seed=seed)``).
        k: heads per task where a task is given as scores.
        seed: tie-break seed for scores.
        n_layers: layers of the grid; default from the scores given, else the largest layer drawn.
        n_heads: heads per layer of the grid; default from the scores given, else the largest head drawn.
        title: the axes title.
        ax: draw into this axes instead of a new figure.
    """
    if not tasks:
        raise ArgumentError("head_overlay: no tasks given.")
    if len(tasks) > len(_OVERLAY_STYLES):
        raise ArgumentError(f"head_overlay draws at most {len(_OVERLAY_STYLES)} tasks; got {len(tasks)}.")
    chosen: dict[str, HeadSet] = {}
    for name, value in tasks.items():
        if isinstance(value, HeadScores):
            chosen[name] = value.top_k(min(k, value.scores.numel()), seed=seed)
            n_layers = n_layers or max(value.layers or (0,)) + 1
            n_heads = n_heads or value.n_heads
        else:
            chosen[name] = _as_heads(value)
    all_heads = [h for hs in chosen.values() for h in hs]
    n_layers = n_layers or (max((h.layer for h in all_heads), default=0) + 1)
    n_heads = n_heads or (max((h.head for h in all_heads), default=0) + 1)
    fig, ax = _figure(_grid_size(n_layers, n_heads), ax)
    ax.set_xlim(-0.5, n_heads - 0.5)
    ax.set_ylim(n_layers - 0.5, -0.5)
    ax.set_xticks(np.arange(-0.5, n_heads, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_layers, 1), minor=True)
    ax.grid(which="minor", color="0.88", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    for (name, hs), (marker, size, color) in zip(chosen.items(), _OVERLAY_STYLES):
        coll = ax.scatter(
            [h.head for h in hs],
            [h.layer for h in hs],
            marker=marker,
            s=size,
            facecolors="none" if marker != "x" else color,
            edgecolors=color,
            linewidths=1.4,
            label=f"{name} ({len(hs)})",
        )
        coll.set_gid(f"task:{name}")
    _head_axes(ax, list(range(n_layers)), n_heads)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title if title is not None else "selected heads by task")
    return fig


# ---- features ---------------------------------------------------------------------------------------


def tsne_embedding(
    features: HeadFeatures,
    head: "Head | str | tuple[int, int]",
    *,
    perplexity: float | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """Return a 2-d t-SNE embedding (``example 2``) of one head's vectors (scikit-learn, seeded).

    Args:
        features: ``example layer head_index d_head`` head features.
        head: the head (``"L14H3"``, ``(14, 3)`` or a :class:`Head`).
        perplexity: t-SNE perplexity; default ``min(30, (n_examples - 1) / 3)``.
        seed: ``random_state`` of t-SNE (PCA initialisation): the same features and seed give the same map.
        normalize: unit-normalise the vectors first (the cosine geometry the SAV votes in).
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise LoadError(
            "head_tsne needs scikit-learn, which is not installed: pip install 'savlens[sklearn]'."
        ) from None
    from savlens.sav import gather_heads

    h = Head.coerce(head)
    x = gather_heads(features, HeadSet([h]), "tsne_embedding")[:, 0].double()
    n = x.shape[0]
    if n < 4:
        raise FeatureError(f"tsne_embedding: t-SNE needs at least 4 examples; got {n}.")
    if normalize:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    perp = perplexity if perplexity is not None else min(30.0, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto")
    return np.asarray(tsne.fit_transform(x.numpy()))


def head_tsne(
    features: HeadFeatures,
    heads: "Head | str | tuple[int, int] | Sequence[Head | str | tuple[int, int]]",
    labels: Sequence[Hashable] | None = None,
    *,
    scores: HeadScores | None = None,
    perplexity: float | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> "Figure":
    """Draw a t-SNE map of one or more heads' vectors, one panel per head, coloured by class (Figure 3 bottom).

    Each panel has one scatter collection per class (labelled with the class, in sorted order), holding the
    embedding of that class's examples (:func:`tsne_embedding`).

    Args:
        features: labelled head features.
        heads: one head or several (``["L14H3", "L2H0"]``): e.g. the best head and a median one.
        labels: one label per example; None uses ``features.labels``.
        scores: head scores to print in each panel's title.
        perplexity: t-SNE perplexity (see :func:`tsne_embedding`).
        seed: t-SNE seed.
        normalize: unit-normalise the vectors first.
    """
    from savlens.scoring import resolve_labels

    if isinstance(heads, (Head, str)) or (isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int)):
        head_list = [Head.coerce(heads)]  # type: ignore[arg-type]
    else:
        head_list = [Head.coerce(h) for h in heads]  # type: ignore[union-attr]
    labels = resolve_labels(features, labels, "head_tsne")
    classes = sorted(set(labels), key=str)
    fig, ax0 = _figure((4.2 * len(head_list) + 1.2, 4.0))
    fig.delaxes(ax0)
    axes = fig.subplots(1, len(head_list), squeeze=False)[0]
    colors = _class_colors(len(classes))
    for ax, h in zip(axes, head_list):
        emb = tsne_embedding(features, h, perplexity=perplexity, seed=seed, normalize=normalize)
        for c, color in zip(classes, colors):
            idx = [i for i, lab in enumerate(labels) if lab == c]
            ax.scatter(emb[idx, 0], emb[idx, 1], s=14, color=color, label=str(c), alpha=0.85, linewidths=0)
        score = f" (score {scores[h]:.2f})" if scores is not None else ""
        ax.set_title(f"{h}{score}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5)
    fig.suptitle("t-SNE of head vectors (hook_z at the last token), coloured by class", fontsize=10)
    return fig


def _class_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ---- votes and accuracy -----------------------------------------------------------------------------


def vote_histograms(votes: "Votes", labels: Sequence[Hashable], *, title: str | None = None) -> "Figure":
    """Draw, per true class, a histogram of the votes its examples' true class received from the ``k`` heads.

    One panel per class in ``votes.classes`` order; the x axis counts votes for the true class (0 .. k), bars
    are stacked: examples the SAV classified right (green) and wrong (grey). A panel's two bar containers
    (labels ``"right"`` and ``"wrong"``) hold the counts per number of votes.

    Args:
        votes: :meth:`SAV.votes` on labelled examples.
        labels: the true label of each example.
        title: the figure title.
    """
    classes = list(votes.classes)
    if len(labels) != votes.votes.shape[0]:
        raise LabelError(f"vote_histograms: {len(labels)} labels for {votes.votes.shape[0]} examples.")
    unknown = sorted({str(lab) for lab in labels if lab not in classes})
    if unknown:
        raise LabelError(f"vote_histograms: labels {unknown} are not classes of these votes {classes}.")
    k = int(votes.votes.shape[1])
    truth = torch.tensor([classes.index(lab) for lab in labels])
    true_votes = votes.counts.gather(1, truth[:, None])[:, 0].numpy()
    right = (votes.winners == truth).numpy()
    n = len(classes)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, ax0 = _figure((2.6 * cols + 0.4, 2.3 * rows + 0.6))
    fig.delaxes(ax0)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    bins = np.arange(k + 1)
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.set_visible(False)
            continue
        of_class = truth.numpy() == c
        r = np.bincount(true_votes[of_class & right], minlength=k + 1)
        w = np.bincount(true_votes[of_class & ~right], minlength=k + 1)
        ax.bar(bins, r, width=0.85, color="tab:green", label="right")
        ax.bar(bins, w, width=0.85, bottom=r, color="0.65", label="wrong")
        acc = r.sum() / max(1, of_class.sum())
        ax.set_title(f"{classes[c]}: {acc:.0%} right (n={int(of_class.sum())})", fontsize=9)
        ax.axvline(k / 2, color="0.3", linewidth=0.8, linestyle=":")
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(f"votes for the true class (of k={k})", fontsize=8)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title or "SAV votes per true class", fontsize=10)
    return fig


def accuracy_curve(
    x: Sequence[Number],
    curves: Mapping[str, Curve],
    *,
    xlabel: str,
    chance: Number | None = None,
    baselines: Mapping[str, Number] | None = None,
    log_x: bool = False,
    title: str | None = None,
    ax: "Axes | None" = None,
) -> "Figure":
    """Draw accuracy against a parameter: one line per curve, with a band where a point has several runs.

    Args:
        x: the parameter values (shots per class, heads kept, ...).
        curves: name -> one accuracy per ``x``, or one list of accuracies per ``x`` (e.g. over seeds); lists
            are drawn as their mean (the line's data) with a min-max band.
        xlabel: the x-axis label.
        chance: a dotted line at chance accuracy.
        baselines: name -> accuracy, drawn as dashed horizontal lines (e.g. zero-shot).
        log_x: logarithmic x axis.
        title: the axes title.
        ax: draw into this axes instead of a new figure.
    """
    fig, ax = _figure((5.4, 3.6), ax)
    xs = np.asarray(x, dtype=float)
    for name, values in curves.items():
        runs = [np.atleast_1d(np.asarray(v, dtype=float)) for v in values]
        if len(runs) != len(xs):
            raise ArgumentError(f"accuracy_curve: curve {name!r} has {len(runs)} points for {len(xs)} x values.")
        mean = np.array([r.mean() for r in runs])
        (line,) = ax.plot(xs, mean, marker="o", markersize=4, label=name)
        if any(r.size > 1 for r in runs):
            lo, hi = np.array([r.min() for r in runs]), np.array([r.max() for r in runs])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1.1, color=f"C{len(curves) + i}", label=f"{name} ({value:.2f})")
    if chance is not None:
        ax.axhline(chance, linestyle=":", linewidth=1.1, color="0.4", label=f"chance ({chance:.2f})")
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return fig


def accuracy_vs_shots(shots: Sequence[int], curves: Mapping[str, Curve], **kwargs: Any) -> "Figure":
    """Draw accuracy against training examples per class (paper Figure 4); see :func:`accuracy_curve`."""
    kwargs.setdefault("title", "accuracy vs shots per class")
    return accuracy_curve(shots, curves, xlabel="training examples per class", log_x=True, **kwargs)


def accuracy_vs_k(ks: Sequence[int], curves: Mapping[str, Curve], **kwargs: Any) -> "Figure":
    """Draw accuracy against the number of heads kept (paper Figure 4); see :func:`accuracy_curve`."""
    kwargs.setdefault("title", "accuracy vs heads kept")
    return accuracy_curve(ks, curves, xlabel="heads kept (k)", log_x=True, **kwargs)


# ---- matrices ---------------------------------------------------------------------------------------


def _matrix(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    cbar: str,
    fmt: str,
    vmin: Number | None,
    vmax: Number | None,
    cmap: str,
) -> "Figure":
    n_r, n_c = values.shape
    fig, ax = _figure((max(3.8, 0.9 * n_c + 2.4), max(3.0, 0.7 * n_r + 1.6)))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=cbar, shrink=0.85)
    for i in range(n_r):
        for j in range(n_c):
            v = values[i, j]
            r, g, b, _ = image.cmap(image.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells, whatever the colormap
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(n_c), list(cols), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def transfer_heatmap(matrix: "TransferMatrix", *, title: str | None = None) -> "Figure":
    """Draw a :class:`~savlens.transfer.TransferMatrix`: rows where heads were chosen, columns where used.

    The image holds ``matrix.accuracy`` and, below a white rule, one row per baseline in
    ``matrix.baselines`` (``"20 random heads"``, ``"all heads"``; tick labels in italics). Each cell is
    annotated with its value, or with ``mean ± sd`` when the matrix is a :meth:`TransferMatrix.mean`.

    Example:
        >>> from savlens.transfer import TransferMatrix
        >>> a = TransferMatrix(("x", "y"), torch.eye(2, dtype=torch.float64), {}, {}, 2)
        >>> a.baselines["all"] = torch.tensor([0.5, 0.25], dtype=torch.float64)
        >>> fig = transfer_heatmap(TransferMatrix.mean([a, a]))
        >>> fig.axes[0].images[0].get_array().tolist()[2], fig.axes[0].texts[-1].get_text()
        ([0.5, 0.25], '0.25 ± 0.00')
    """
    tasks = list(matrix.tasks)
    names = list(matrix.baselines)
    values = np.concatenate([matrix.accuracy.numpy(), *(matrix.baselines[n].numpy()[None] for n in names)])
    rows = tasks + [matrix.baseline_label(n) for n in names]
    default = f"cross-task head transfer (k={matrix.k})"
    if matrix.sd is not None:
        default = f"cross-task head transfer (k={matrix.k}; mean ± sd over {matrix.n_matrices} matrices)"
    fig = _matrix(
        values,
        rows,
        tasks,
        xlabel="used on (centroids + test)",
        ylabel="heads chosen on",
        title=title or default,
        cbar="accuracy",
        fmt=".2f",
        vmin=0.0,
        vmax=1.0,
        cmap="magma",
    )
    ax = fig.axes[0]
    if names:
        ax.axhline(len(tasks) - 0.5, color="white", linewidth=4, gid="transfer-baselines")
        for label in ax.get_yticklabels()[len(tasks) :]:
            label.set_fontstyle("italic")
    if matrix.sd is not None:
        sd = np.concatenate([matrix.sd.numpy(), *(matrix.baselines_sd[n].numpy()[None] for n in names)])
        for text, v, e in zip(ax.texts, values.reshape(-1), sd.reshape(-1)):
            text.set_text(f"{v:.2f} ± {e:.2f}")
            text.set_fontsize(7)
    return fig


def confusion_heatmap(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable],
    classes: Sequence[Hashable] | None = None,
    *,
    title: str | None = None,
) -> "Figure":
    """Draw the confusion matrix of predictions (rows: true class, columns: predicted class; counts)."""
    if len(truth) != len(predicted):
        raise LabelError(f"confusion_heatmap: {len(truth)} true labels for {len(predicted)} predictions.")
    classes = list(classes) if classes is not None else sorted(set(truth) | set(predicted), key=str)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        if t not in index or p not in index:
            raise LabelError(f"confusion_heatmap: label {t if t not in index else p!r} is not in {classes}.")
        counts[index[t], index[p]] += 1
    names = [str(c) for c in classes]
    acc = np.trace(counts) / max(1, counts.sum())
    return _matrix(
        counts,
        names,
        names,
        xlabel="predicted",
        ylabel="true",
        title=title or f"confusion matrix (accuracy {acc:.3f})",
        cbar="examples",
        fmt="d",
        vmin=0,
        vmax=None,
        cmap="Blues",
    )


# ---- attention --------------------------------------------------------------------------------------


def attention_on_image(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    batch: "Batch",
    head: int,
    *,
    layer: int | None = None,
    row: int = 0,
    image: Any = None,
    grid: tuple[int, int] | None = None,
    image_index: int = 0,
    title: str | None = None,
) -> "Figure":
    """Draw one head's attention from the last token over the image-token grid of one batch row.

    ``pattern`` is ``t.save("blocks.{l}.attn.hook_pattern", positions="last").value`` (eager attention; the
    query axis holds the last token; its last entry is used if it holds more). The image tokens of row ``row``
    are the positions where ``batch.image_mask`` is True; the ``image_index``-th run of ``grid[0] * grid[1]``
    of them is reshaped to ``grid`` (rows, columns), row-major as the vision tower emits them. The overlay
    image holds exactly those attention weights (the figure's last image); with ``image`` (a PIL image) it is
    drawn over the picture.

    Args:
        pattern: ``batch head_index query_pos key_pos`` attention probabilities.
        batch: the batch the trace ran on.
        head: the query head.
        layer: the layer the pattern comes from (for the title).
        row: the batch row.
        image: the row's image (PIL), drawn underneath.
        grid: image tokens per (row, column) of one image; default a square of all the row's image tokens.
        image_index: which image of the row (runs of ``grid`` tokens, in order).
        title: the axes title.
    """
    if pattern.ndim != 4:
        raise FeatureError(
            "attention_on_image: pattern must be [batch head_index query_pos key_pos]; "
            f"got shape {tuple(pattern.shape)}."
        )
    if not 0 <= row < pattern.shape[0] or not 0 <= head < pattern.shape[1]:
        raise ArgumentError(
            f"attention_on_image: row={row}, head={head} out of range for shape {tuple(pattern.shape)}."
        )
    where = torch.nonzero(batch.image_mask[row]).squeeze(1)
    if where.numel() == 0:
        raise PositionError(f"attention_on_image: row {row} of the batch has no image tokens.")
    if grid is None:
        side = int(round(where.numel() ** 0.5))
        if side * side != where.numel():
            raise ArgumentError(
                f"attention_on_image: row {row} has {where.numel()} image tokens, not a square; pass grid=(rows, cols)."
            )
        grid = (side, side)
    n = grid[0] * grid[1]
    if (image_index + 1) * n > where.numel():
        raise PositionError(
            f"attention_on_image: grid {grid} x image {image_index + 1} needs {(image_index + 1) * n} image tokens; "
            f"row {row} has {where.numel()}."
        )
    if pattern.shape[-1] != batch.image_mask.shape[1]:
        raise FeatureError(
            f"attention_on_image: pattern has key_pos={pattern.shape[-1]} but the batch has "
            f"pos={batch.image_mask.shape[1]}."
        )
    keys = where[image_index * n : (image_index + 1) * n]
    weights = pattern[row, head, -1].detach().float().cpu()
    cells = weights[keys].reshape(grid).numpy()
    fig, ax = _figure((4.6, 4.0))
    if image is not None:
        w, h = image.size
        ax.imshow(np.asarray(image.convert("RGB")), extent=(0, w, h, 0))
        extent: tuple[float, float, float, float] | None = (0, w, h, 0)
        alpha = 0.6
    else:
        extent, alpha = None, 1.0
    overlay = ax.imshow(cells, cmap="inferno", alpha=alpha, extent=extent, interpolation="nearest")
    fig.colorbar(overlay, ax=ax, label="attention from the last token", shrink=0.85)
    ax.set_xticks([])
    ax.set_yticks([])
    share = float(weights[where].sum())
    name = f"L{layer}H{head}" if layer is not None else f"head {head}"
    ax.set_title(title or f"{name}: {share:.0%} of last-token attention on image tokens", fontsize=9)
    return fig


def attention_share_bars(shares: "AttentionShares", *, title: str | None = None, ax: "Axes | None" = None) -> "Figure":
    """Draw, per head, the mean share of its last-token attention on image tokens, the prompt's text and the
    chat template / system prompt (stacked bars; one bar per head in ``shares.heads`` order, top to bottom).

    ``shares`` is :func:`savlens.causal.attention_shares`' result.
    """
    means = shares.mean()
    labels = list(means)
    fig, ax = _figure((6.0, 0.8 + 0.28 * len(labels)), ax)
    left = np.zeros(len(labels))
    for region, color in (("image", "tab:orange"), ("text", "tab:blue"), ("system", "tab:gray")):
        values = np.array([means[h][region] for h in labels])
        ax.barh(range(len(labels)), values, left=left, color=color, label=region)
        left += values
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of last-token attention (mean over {shares.image.shape[0]} examples)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=3, frameon=False)
    ax.set_title(title or "where the heads look from the last token", fontsize=9)
    return fig
