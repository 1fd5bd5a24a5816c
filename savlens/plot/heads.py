"""Head scores on the ``layer x head_index`` grid: a score heatmap with the selected heads marked, and several
tasks' selected heads overlaid."""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from savlens.errors import ArgumentError, FeatureError
from savlens.heads import Head, HeadScores, HeadSet
from savlens.plot._common import as_heads, figure, grid_size

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Marker, size and colour of each task in :func:`head_overlay` (hollow, nested: shared heads stay visible).
_OVERLAY_STYLES = (
    ("s", 150, "tab:red"),
    ("o", 80, "tab:blue"),
    ("D", 34, "tab:green"),
    ("^", 20, "tab:orange"),
    ("v", 12, "tab:purple"),
    ("x", 16, "black"),
)


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
    marked = as_heads(heads) if heads is not None else (scores.top_k(k, seed=seed) if k else HeadSet())
    for h in marked:
        if h.layer not in layers or h.head >= scores.n_heads:
            raise FeatureError(
                f"score_heatmap: head {h} is not in these scores (layers {tuple(layers)}, head_index={scores.n_heads})."
            )
    fig, ax = figure(grid_size(*table.shape), ax)
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
            chosen[name] = as_heads(value)
    all_heads = [h for hs in chosen.values() for h in hs]
    n_layers = n_layers or (max((h.layer for h in all_heads), default=0) + 1)
    n_heads = n_heads or (max((h.head for h in all_heads), default=0) + 1)
    fig, ax = figure(grid_size(n_layers, n_heads), ax)
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
