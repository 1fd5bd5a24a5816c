"""Resolving positions (``"last"``, ``"image"``, ``"video"``, ``"text"``, ``"all"``, indices) to per-row sequence
indices.

Indices are resolved per row against that row's own real tokens, so the same request means the same
token under left or right padding: ``0`` is a row's first real token, ``-1`` its last.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from savlens.errors import PositionError

if TYPE_CHECKING:
    from savlens.inputs import Batch

#: "last" | "image" | "video" | "text" | "all", an index, or indices (a plain str in the type, so a wrong word gets a
#: PositionError naming the valid ones rather than a type-checker error)
Positions = str | int | Sequence[int] | Tensor
_NAMED = ("last", "image", "video", "text", "all")


@dataclass(frozen=True)
class Selection:
    """Per-row positions to read.

    Attributes:
        index: ``batch pos`` sequence index read into each slot.
        mask: ``batch pos`` True where the slot holds a real position (ragged selections pad with False).
        ragged: True when rows select different numbers of positions (``"image"`` / ``"video"`` / ``"text"``).
    """

    index: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    ragged: bool


def select_positions(batch: "Batch", positions: Positions) -> Selection:
    """Resolve ``positions`` against ``batch`` (see module docstring).

    Raises:
        PositionError: an index outside a row's tokens, a batch with no image tokens for ``"image"`` (no video
            tokens for ``"video"``),
            an unknown position word.
    """
    mask = batch.attention_mask.bool()
    bsz, seq = mask.shape
    last = batch.last_index
    lengths = mask.sum(-1)
    if isinstance(positions, str):
        if positions == "last":
            return Selection(last[:, None].clone(), torch.ones(bsz, 1, dtype=torch.bool), False)
        if positions == "all":
            return Selection(torch.arange(seq).expand(bsz, seq).clone(), mask.clone(), False)
        if positions == "image":
            if not bool(batch.image_mask.any()):
                raise PositionError(
                    "positions='image' but no row of this batch has image tokens; add images to the examples "
                    "or use 'last' / 'text'."
                )
            return _ragged(batch.image_mask)
        if positions == "video":
            if batch.video_mask is None or not bool(batch.video_mask.any()):
                raise PositionError(
                    "positions='video' but no row of this batch has video tokens; add videos to the examples "
                    "(Example(videos=[...])) or use 'last' / 'image' / 'text'."
                )
            return _ragged(batch.video_mask)
        if positions == "text":
            return _ragged(batch.text_mask)
        raise PositionError(f"unknown positions {positions!r}; use one of {_NAMED} or a list of indices.")
    if isinstance(positions, bool) or positions is None:
        raise PositionError(f"positions must be one of {_NAMED} or indices; got {positions!r}.")
    if isinstance(positions, int):
        positions = [positions]
    try:
        raw = torch.as_tensor(list(positions) if not isinstance(positions, Tensor) else positions)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise PositionError(f"positions must be one of {_NAMED} or a list of ints; got {positions!r}.") from None
    if raw.numel() and (raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool):
        raise PositionError(
            f"positions must be whole token indices (ints); got {positions!r}. Use e.g. [0, -1], or 'last'."
        )
    rel = raw.long()
    if rel.ndim != 1 or rel.numel() == 0:
        raise PositionError(f"positions must be a non-empty 1-d list of ints; got shape {tuple(rel.shape)}.")
    lo, hi = int(rel.min()), int(rel.max())
    short = int(lengths.min())
    if hi >= short or lo < -short:
        row = int(lengths.argmin())
        raise PositionError(
            f"positions {rel.tolist()} do not exist in row {row} (example {batch.example_ids[row]!r}), which has "
            f"{short} real tokens: indices must lie in [{-short}, {short - 1}] (counted in each example's own "
            "tokens, negative from the end)."
        )
    start = last - lengths + 1
    idx = torch.where(rel[None, :] >= 0, start[:, None] + rel[None, :], last[:, None] + 1 + rel[None, :])
    return Selection(idx, torch.ones_like(idx, dtype=torch.bool), False)


def _ragged(select: Bool[Tensor, "batch pos"]) -> Selection:
    counts = select.sum(-1)
    width = max(int(counts.max()), 1)
    # stable sort puts the selected positions first, in sequence order
    order = torch.sort((~select).to(torch.int8), dim=-1, stable=True).indices[:, :width]
    slot_ok = torch.arange(width)[None, :] < counts[:, None]
    index = torch.where(slot_ok, order, torch.zeros_like(order))
    return Selection(index, slot_ok, True)


def take_positions(x: Tensor, sel: Selection, dim: int = 1) -> Tensor:
    """Gather ``sel``'s positions of ``x`` along ``dim`` (1: ``batch pos ...``; 2: attention patterns
    ``batch head_index query_pos key_pos``), zeroing padded slots of ragged selections."""
    idx = sel.index.to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    if dim == 1:
        out = x[rows, idx]
        if sel.ragged:
            out = out * sel.mask.to(x.device).view(*sel.mask.shape, *([1] * (out.ndim - 2))).to(out.dtype)
        return out
    if dim == 2:
        out = x[rows, :, idx]  # advanced indices split by a slice: batch pos head_index key_pos
        if sel.ragged:
            out = out * sel.mask.to(x.device)[:, :, None, None].to(out.dtype)
        return out.permute(0, 2, 1, 3)
    raise ValueError(f"take_positions: dim must be 1 or 2, got {dim}")


def last_real_index(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Return the sequence index of each row's last non-pad token (left or right padding).

    >>> import torch
    >>> last_real_index(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [2, 1]
    """
    seq = mask.shape[-1]
    return seq - 1 - mask.flip(-1).long().argmax(-1)


def mask_positions(mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Return padding-aware position ids: ``cumsum(mask) - 1``, 0 at pad slots.

    >>> import torch
    >>> mask_positions(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [[0, 0, 1], [0, 1, 0]]
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(mask == 0, 0)
