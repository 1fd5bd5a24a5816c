"""Where heads look: one head's attention over the image-token grid, and per-head shares of attention on the
image, the prompt's text and the template."""

from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

from savlens.errors import ArgumentError, FeatureError, PositionError
from savlens.plot._common import figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from savlens.causal import AttentionShares
    from savlens.inputs import Batch
    from savlens.loading import Model


def attention_on_image(
    pattern: Float[Tensor, "batch head_index query_pos key_pos"],
    model: "Model",
    batch: "Batch",
    head: int,
    *,
    layer: int | None = None,
    row: int = 0,
    image: Any = None,
    media: int = 0,
    title: str | None = None,
) -> "Figure":
    """Draw one head's attention from the last token over the ``media``-th image (or video) of one batch row, at
    the image's real token grid: :func:`savlens.plot.attention_on_grid` with that head's weights (tiles, views,
    newline tokens and video frames as :func:`savlens.models.grids.token_grids` maps them).

    ``pattern`` is ``t.save("blocks.{l}.attn.hook_pattern", positions="last").value`` (under any attention
    backend: :mod:`savlens.attention`; the query axis holds the last token; its last entry is used if it holds
    more), or :func:`savlens.attention_patterns`' value.

    Args:
        pattern: ``batch head_index query_pos key_pos`` attention probabilities.
        model: the model the pattern comes from (its token layout).
        batch: the batch the trace ran on.
        head: the query head (index into ``head_index``).
        layer: the layer the pattern comes from (for the title).
        row: the batch row.
        image: the row's image (PIL or ``height width 3`` array) or the video's sampled frames, drawn underneath.
        media: which image or video of the row, in prompt order.
        title: the figure's title (default: the head and its share of last-token attention on image and video
            tokens).
    """
    from savlens.plot.grid import attention_on_grid

    if pattern.ndim != 4:
        raise FeatureError(
            "attention_on_image: pattern must be [batch head_index query_pos key_pos]; "
            f"got shape {tuple(pattern.shape)}."
        )
    if not 0 <= row < pattern.shape[0] or not 0 <= head < pattern.shape[1]:
        raise ArgumentError(
            f"attention_on_image: row={row}, head={head} out of range for shape {tuple(pattern.shape)}."
        )
    if pattern.shape[-1] != batch.image_mask.shape[1]:
        raise FeatureError(
            f"attention_on_image: pattern has key_pos={pattern.shape[-1]} but the batch has "
            f"pos={batch.image_mask.shape[1]}."
        )
    tokens = batch.image_mask[row] | (batch.video_mask[row] if batch.video_mask is not None else False)
    if not bool(tokens.any()):
        raise PositionError(f"attention_on_image: row {row} of the batch has no image or video tokens.")
    weights = pattern[row, head, -1].detach().float().cpu()
    if image is not None and hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    share = float(weights[tokens.cpu()].sum())
    name = f"L{layer}H{head}" if layer is not None else f"head {head}"
    video = batch.video_mask is not None and bool(batch.video_mask[row].any())
    what = "image and video tokens" if video else "image tokens"
    title = title or f"{name}: {share:.0%} of last-token attention on {what}"
    return attention_on_grid(weights, model, batch, row=row, media=media, picture=image, title=title)


def attention_share_bars(shares: "AttentionShares", *, title: str | None = None, ax: "Axes | None" = None) -> "Figure":
    """Draw, per head, the mean share of its last-token attention on image tokens, video tokens (when there are
    any), the prompt's text and the chat template / system prompt (stacked bars; one bar per head in
    ``shares.heads`` order, top to bottom).

    ``shares`` is :func:`savlens.causal.attention_shares`' result.
    """
    means = shares.mean()
    labels = list(means)
    fig, ax = figure((6.0, 0.8 + 0.28 * len(labels)), ax)
    left = np.zeros(len(labels))
    regions = [("image", "tab:orange"), ("video", "tab:green"), ("text", "tab:blue"), ("system", "tab:gray")]
    if shares.video is None or not bool(shares.video.any()):
        regions.pop(1)  # no video token in these examples: no empty legend entry
    for region, color in regions:
        values = np.array([means[h][region] for h in labels])
        ax.barh(range(len(labels)), values, left=left, color=color, label=region)
        left += values
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of last-token attention (mean over {shares.image.shape[0]} examples)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=len(regions), frameon=False)
    ax.set_title(title or "where the heads look from the last token", fontsize=9)
    return fig
