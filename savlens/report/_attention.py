"""Where the report gets a head's attention over the image tokens: ONE adapter, :func:`head_image_attention`.

Everything the report shows of attention comes through this function, so its source can change in one place
without touching the page: the patterns come from :func:`savlens.attention_patterns` (never eager).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.errors import ArgumentError
from savlens.example import Example
from savlens.heads import HeadSet
from savlens.loading import Model

if TYPE_CHECKING:
    from savlens.inputs import Batch
    from savlens.models.grids import MediaGrid

#: the options of :meth:`savlens.Batch.from_examples` an SAV's extraction options may carry
BATCH_OPTIONS = ("prompt_template", "chat", "system_prompt")


@dataclass
class MediaAttention:
    """Each head's attention over the tokens of one image or video of an example, at its real token grid.

    Attributes:
        grid: where the tokens sit (:func:`savlens.models.grids.token_grids`): panels (tiles, views, frames),
            each panel's box on the picture, the picture's size.
        cells: per panel of ``grid``, a ``k rows cols`` tensor of the heads' weights on its cells
            (:func:`savlens.plot.grid.panel_cells`: the same cells :func:`savlens.plot.attention_on_grid` draws).
        off_grid: ``k`` weights on the tokens that are no cell (LLaVA-OneVision's newline tokens).
    """

    grid: "MediaGrid"
    cells: list[Tensor]  # per panel: k rows cols (the rows and columns differ by panel)
    off_grid: Float[Tensor, " k"]

    def total(self) -> Float[Tensor, " k"]:
        """Each head's whole weight on this image's (video's) tokens: its cells and its newline tokens."""
        return sum((c.sum((-2, -1)) for c in self.cells), self.off_grid.clone())


@dataclass
class ImageAttention:
    """Each head's attention from the read position over each example's image and video tokens.

    Attributes:
        heads: the heads (the ``k`` axis).
        share: ``example k`` share of the query token's attention that goes to image and video tokens (0 without).
        grids: per example, one :class:`MediaAttention` per image and video in prompt order (images first for
            examples without messages); an example's list is empty when the family's token layout is not mapped
            (docs/positions.md, "Token grids"): the grid is then unknown.
    """

    heads: HeadSet
    share: Float[Tensor, "example k"]
    grids: list[list[MediaAttention]]


def _media_attention(model: Model, batch: "Batch", row: int, weights: Tensor) -> list[MediaAttention]:
    """``weights`` (``k pos``, the heads' weights over row ``row``) at each image's and video's token grid; []
    for a family without a map."""
    from savlens.models.grids import token_grids
    from savlens.plot.grid import panel_cells

    try:
        grids = token_grids(model, batch, row)
    except ArgumentError:  # a family without a map: the page says "grid unknown"
        return []
    return [
        MediaAttention(g, panel_cells(weights, g, "head_image_attention"), weights[:, g.positions[g.panel < 0]].sum(-1))
        for g in grids
    ]


def head_image_attention(
    model: Model,
    examples: Sequence[Example],
    heads: HeadSet,
    *,
    query: str | int = "last",
    batch_size: int = 8,
    **batch_options: Any,
) -> ImageAttention:
    """Return ``heads``' attention from the ``query`` position over each example's image tokens.

    The source: :func:`savlens.attention_patterns` at ``query`` (computed inside the model's own attention
    backend, never switching it to eager), and each image's and video's tokens at its real token grid
    (:func:`savlens.models.grids.token_grids`: tiles, views, newline tokens, video frames); a family without a
    map gets the share but no grid.

    Args:
        model: the wrapped model the SAV's features came from.
        examples: the examples, in order.
        heads: the heads (e.g. ``sav.heads_``).
        query: the query position: ``"last"`` or an index in each example's own tokens (the SAV's
            ``positions``).
        batch_size: examples per forward pass.
        **batch_options: :meth:`savlens.Batch.from_examples` options (prompt template, chat, system prompt).
    """
    from savlens.inputs import Batch
    from savlens.tracing import attention_patterns

    shares: list[Tensor] = []
    grids: list[list[MediaAttention]] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = Batch.from_examples(model, chunk, **batch_options)
        per_head = attention_patterns(model, batch, heads, query).value[:, :, -1]  # batch k key_pos
        media = batch.image_mask.cpu()
        if batch.video_mask is not None:
            media = media | batch.video_mask.cpu()
        for row, example in enumerate(chunk):
            weights = per_head[row].detach().float().cpu()  # k key_pos
            shares.append(weights[:, media[row]].sum(dim=1))
            grids.append(_media_attention(model, batch, row, weights) if example.n_images or example.n_videos else [])
    share = torch.stack(shares) if shares else torch.zeros(0, len(heads))
    return ImageAttention(heads, share, grids)
