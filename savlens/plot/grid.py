"""Per-token weights (a head's attention from one query, or any score per key position) painted on the original
image, or on a strip of a video's frames, at the image's real token grid (:mod:`savlens.models.grids`)."""

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from savlens.errors import ArgumentError, FeatureError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from savlens.inputs import Batch
    from savlens.loading import Model
    from savlens.models.grids import MediaGrid


def paint(
    weights: Float[Tensor, " pos"], grid: "MediaGrid", size: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Paint the weights of ``grid``'s tokens into one ``height width`` map per view of the picture.

    Each cell's weight fills its box on the picture (``size = (width, height)``, default the grid's own size);
    cells of one view that overlap (none do in the mapped families) add. Tokens that are no cell (newline tokens)
    are left out: their weight is reported by :func:`off_grid_weight`.

    Args:
        weights: one weight per sequence position of the batch row (``pattern[row, head, query]``).
        grid: one item of :func:`savlens.models.grids.token_grids` for that row.
        size: the picture's ``(width, height)`` in pixels.

    Returns:
        ``{view: height x width float array}``, views in the order of the grid's panels.
    """
    if torch.as_tensor(weights).ndim != 1:
        shape = tuple(torch.as_tensor(weights).shape)
        raise FeatureError(f"paint: weights must be one weight per position (1-d); got shape {shape}.")
    size = size or grid.size
    if size is None:
        raise ArgumentError("paint: the grid does not know the picture's size; pass size=(width, height).")
    width, height = size
    maps: dict[str, np.ndarray] = {}
    for panel, cells in zip(grid.panels, panel_cells(weights, grid, "paint")):
        canvas = maps.setdefault(panel.view, np.zeros((height, width), np.float32))
        for r in range(panel.rows):
            for c in range(panel.cols):
                x0, y0, x1, y1 = panel.cell_box(r, c)
                c0, c1 = (min(max(int(round(x * width)), 0), width) for x in (x0, x1))
                r0, r1 = (min(max(int(round(y * height)), 0), height) for y in (y0, y1))
                canvas[r0:r1, c0:c1] += float(cells[r, c])  # a cell on a padded margin is cut at the picture's edge
    return maps


def panel_cells(
    weights: Float[Tensor, "*head pos"], grid: "MediaGrid", who: str = "panel_cells"
) -> list[Tensor]:
    """Each panel's cell weights: a ``*head rows cols`` tensor per panel of ``grid`` (the leading axes of
    ``weights`` kept, e.g. one per head), read from the positions of its tokens. Newline tokens (no cell) are left out
    (:func:`off_grid_weight`). The one place a token's weight meets its cell: :func:`paint` draws these cells and
    the HTML report (:mod:`savlens.report`) sends them to the page.

    Args:
        weights: one weight per sequence position of the batch row (``pattern[row, head, query]``), with any
            leading axes (``k pos`` for ``k`` heads).
        grid: one item of :func:`savlens.models.grids.token_grids` for that row.
    """
    w_all = torch.as_tensor(weights).detach().float().cpu()
    if w_all.ndim < 1:
        raise FeatureError(f"{who}: weights must be one weight per position; got a scalar.")
    if int(grid.positions.max()) >= w_all.shape[-1]:
        raise FeatureError(
            f"{who}: weights cover {w_all.shape[-1]} positions but the grid's tokens reach position "
            f"{int(grid.positions.max())}; give the weights of the whole row (key_pos of the batch)."
        )
    out = []
    for p, panel in enumerate(grid.panels):
        mine = grid.panel == p
        cells = w_all.new_zeros((*w_all.shape[:-1], panel.rows, panel.cols))
        cells[..., grid.row[mine], grid.col[mine]] = w_all[..., grid.positions[mine]]
        out.append(cells)
    return out


def off_grid_weight(weights: Float[Tensor, " pos"], grid: "MediaGrid") -> float:
    """The summed weight of ``grid``'s tokens that are no cell (LLaVA-OneVision's newline tokens)."""
    w_all = torch.as_tensor(weights).detach().float().cpu()
    return float(w_all[grid.positions[grid.panel < 0]].sum())


def attention_on_grid(
    weights: Float[Tensor, " pos"],
    model: "Model",
    batch: "Batch",
    *,
    row: int = 0,
    media: int = 0,
    picture: Any = None,
    title: str | None = None,
) -> "Figure":
    """Draw per-token weights of one batch row on its ``media``-th image or video, one panel view per axes
    (LLaVA-OneVision: base and anyres views; InternVL / SmolVLM: tiles and thumbnail / global; a video: one
    axes per frame panel, a strip).

    Args:
        weights: one weight per sequence position of row ``row`` (e.g. a head's attention from the last token).
        model: the model the weights come from.
        batch: the batch the weights come from.
        row: the batch row.
        media: which image or video of the row, in prompt order (images first for examples without messages).
        picture: the original image (PIL or ``height width 3`` array) or the video's sampled frames
            (``frames height width 3``), drawn underneath; None draws the weights alone.
        title: the figure's title.
    """
    from savlens.models.grids import token_grids
    from savlens.plot._common import figure

    grids = token_grids(model, batch, row)
    if not 0 <= media < len(grids):
        raise ArgumentError(f"attention_on_grid: row {row} has {len(grids)} images and videos; media={media}.")
    g = grids[media]
    frames = None if picture is None else np.asarray(picture)
    if frames is not None and frames.ndim == 3:
        frames = frames[None]
    size = g.size or (None if frames is None else (int(frames.shape[2]), int(frames.shape[1])))
    maps = paint(weights, g, size)
    views = list(maps)
    fig, _ = figure((2.6 * len(views) + 0.8, 3.0))
    fig.clear()
    axes = list(fig.subplots(1, len(views), squeeze=False)[0])
    vmax = max(float(m.max()) for m in maps.values()) or 1.0
    im = None
    for ax, view in zip(axes, views):
        panel = next(p for p in g.panels if p.view == view)
        if frames is not None:
            ax.imshow(frames[min(panel.frame, len(frames) - 1)])
        im = ax.imshow(maps[view], cmap="inferno", alpha=0.6 if frames is not None else 1.0, vmin=0, vmax=vmax)
        ax.set_title(view, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    off = off_grid_weight(weights, g)
    extra = f" (+{off:.2g} on newline tokens)" if off else ""
    fig.suptitle((title or f"{g.kind} {g.index} of row {row}") + extra, fontsize=9)
    return fig
