"""Where the report gets a head's attention over the image tokens: ONE adapter, :func:`head_image_attention`.

Everything the report shows of attention comes through this function, so its source can change in one place
without touching the page: the patterns come from :func:`savlens.attention_patterns` (never eager).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.example import Example
from savlens.heads import HeadSet
from savlens.loading import Model

#: the options of :meth:`savlens.Batch.from_examples` an SAV's extraction options may carry
BATCH_OPTIONS = ("prompt_template", "chat", "system_prompt")


@dataclass
class ImageAttention:
    """Each head's attention from the read position over each example's image tokens.

    Attributes:
        heads: the heads (the ``k`` axis).
        share: ``example k`` share of the query token's attention that goes to image tokens (0 without images).
        grids: per example, per image, a ``k row col`` tensor of attention weights at that image's token grid
            (row-major as the vision tower emits them); an example's list is empty when its image tokens do not
            split into one square grid per image (the grid is then unknown to this adapter).
    """

    heads: HeadSet
    share: Float[Tensor, "example k"]
    grids: list[list[Float[Tensor, "k row col"]]]


def _square_grids(weights: Tensor, n_images: int) -> list[Tensor]:
    """Split ``k n_image_tokens`` weights into ``n_images`` square ``k side side`` grids ([] if they do not split)."""
    n = weights.shape[1]
    if n_images < 1 or n == 0 or n % n_images:
        return []
    per = n // n_images
    side = round(per**0.5)
    if side * side != per:
        return []
    return [weights[:, i * per : (i + 1) * per].reshape(-1, side, side) for i in range(n_images)]


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
    backend, never switching it to eager), and each example's image tokens split
    evenly into one square grid per image (the tiny VLM's 2x2 grid; a family whose image tokens are not square
    per image gets the share but no grid).

    Args:
        model: the wrapped model the SAV's features came from.
        examples: the examples, in order.
        heads: the heads (e.g. ``sav.heads_``).
        query: the query position: ``"last"`` or an index in each example's own tokens (the SAV's
            ``positions``).
        batch_size: examples per forward pass.
        **batch_options: :meth:`savlens.Batch.from_examples` options (prompt template, chat, system prompt).
    """
    from savlens.attention import attention_patterns
    from savlens.inputs import Batch

    shares: list[Tensor] = []
    grids: list[list[Tensor]] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = Batch.from_examples(model, chunk, **batch_options)
        per_head = attention_patterns(model, batch, heads, query).value[:, :, -1]  # batch k key_pos
        image = batch.image_mask.cpu()
        for row, example in enumerate(chunk):
            on_image = per_head[row][:, image[row]]  # k n_image_tokens, in sequence order
            shares.append(on_image.sum(dim=1))
            grids.append(_square_grids(on_image, example.n_images))
    share = torch.stack(shares) if shares else torch.zeros(0, len(heads))
    return ImageAttention(heads, share, grids)
