"""Where heads look: one head's attention over the image-token grid, and per-head shares of attention on the
image, the prompt's text and the template."""

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from savlens.errors import ArgumentError, FeatureError, PositionError
from savlens.plot._common import figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from savlens.causal import AttentionShares
    from savlens.inputs import Batch


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

    ``pattern`` is ``t.save("blocks.{l}.attn.hook_pattern", positions="last").value`` (under any attention
    backend: :mod:`savlens.attention`; the query axis holds the last token; its last entry is used if it holds
    more). The image tokens of row ``row``
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
    fig, ax = figure((4.6, 4.0))
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
    fig, ax = figure((6.0, 0.8 + 0.28 * len(labels)), ax)
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
