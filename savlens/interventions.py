"""Edits of per-head outputs inside a trace: set (zero, mean, patch, resample) or add, at chosen positions.

Every edit is written into the input of the attention output projection (``hook_z``), so the rest of the model
sees the change: the edited head's contribution to ``hook_attn_out`` changes, and everything downstream with it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError
from savlens.heads import Head
from savlens.positions import Positions, select_positions

if TYPE_CHECKING:
    from savlens.inputs import Batch
    from savlens.models.spec import LayerSpec


@dataclass
class Edit:
    """One edit of some heads of one layer.

    Attributes:
        layer: the model layer.
        heads: the query heads edited.
        op: ``"set"`` (replace the head's ``z``) or ``"add"`` (add to it).
        value: broadcastable to ``batch pos k d_head`` (k = len(heads)); None with ``op="set"`` means zeros.
        positions: where to edit (``"all"``, ``"last"``, indices, ``"image"``, ``"text"``).
        label: what the edit is, for messages.
    """

    layer: int
    heads: list[int]
    op: Literal["set", "add"]
    value: Tensor | None
    positions: Positions = "all"
    label: str = "edit"

    def describe(self) -> str:
        return f"{self.label} of " + ", ".join(str(Head(self.layer, h)) for h in self.heads)


def apply_edits(x: Float[Tensor, "batch pos hd"], edits: Sequence[Edit], batch: "Batch", sizes: "LayerSpec") -> Tensor:
    """Return a copy of the o_proj input ``x`` with ``edits`` applied (in order); ``sizes``: the edited layer's
    heads and widths."""
    out = x.clone()
    bsz, seq, _ = out.shape
    z = out.view(bsz, seq, sizes.n_heads, sizes.d_head)
    for e in edits:
        heads = torch.as_tensor(e.heads, device=x.device)
        if e.positions == "all":
            cur = z[:, :, heads]  # batch pos k d_head
            new = _combine(cur, e, x)
            z[:, :, heads] = new
            continue
        sel = select_positions(batch, e.positions)
        idx = sel.index.to(x.device)
        rows = torch.arange(bsz, device=x.device)[:, None]
        cur = z[rows, idx][:, :, heads]  # batch npos k d_head
        new = _combine(cur, e, x)
        if sel.ragged:
            keep = sel.mask.to(x.device)[:, :, None, None]
            new = torch.where(keep, new, cur)
        block = z[rows, idx]  # batch npos head_index d_head (a copy)
        block[:, :, heads] = new
        z[rows, idx] = block
    return out


def _combine(cur: Tensor, e: Edit, like: Tensor) -> Tensor:
    if e.value is None:
        return torch.zeros_like(cur) if e.op == "set" else cur
    v = e.value.to(device=like.device, dtype=like.dtype)
    try:
        v = torch.broadcast_to(v, cur.shape)
    except RuntimeError:
        raise FeatureError(
            f"{e.describe()}: the value of shape {tuple(e.value.shape)} does not broadcast to "
            f"[batch={cur.shape[0]}, pos={cur.shape[1]}, k={cur.shape[2]}, d_head={cur.shape[3]}]."
        ) from None
    return v.clone() if e.op == "set" else cur + v


# ---- helpers of the interventions -----------------------------------------------------------------
def by_layer(heads: Any, model: Any) -> list[tuple[int, list[int]]]:
    from savlens.heads import HeadSet

    hs = heads if isinstance(heads, HeadSet) else HeadSet([heads] if isinstance(heads, tuple) else heads)
    if not len(hs):
        raise ArgumentError("no heads given to intervene on.")
    groups: dict[int, list[int]] = {}
    for h in hs:
        if h.layer >= model.n_layers or h.head >= model.n_heads:
            raise ArgumentError(
                f"head {h} does not exist: {model.model_id!r} has {model.n_layers} layers x {model.n_heads} heads."
            )
        groups.setdefault(h.layer, []).append(h.head)
    return sorted(groups.items())


def require_head_features(source: Any) -> HeadFeatures:
    """Return ``source`` if it is :class:`HeadFeatures` (what patch / mean edits read), else raise FeatureError."""
    if not isinstance(source, HeadFeatures):
        raise FeatureError(f"expected HeadFeatures (from savlens.extract); got {type(source).__name__}.")
    return source


def layer_row(feats: Any, layer: int) -> int:
    layers = list(feats.layers)
    if layer not in layers:
        raise FeatureError(f"the features hold layers {layers}, not layer {layer}; extract that layer too.")
    return layers.index(layer)


def head_values(means: Any, layer: int, heads: list[int], model: Any) -> Tensor:
    if isinstance(means, Tensor):
        if means.ndim != 3 or means.shape[0] != model.n_layers:
            raise FeatureError(
                f"means must be a layer head_index d_head tensor with layer={model.n_layers}; got {tuple(means.shape)}."
            )
        return means[layer, heads]
    feats = require_head_features(means)
    return feats.z[:, layer_row(feats, layer)][:, heads].float().mean(0)


def row_values(source: Any, layer: int, heads: list[int], model: Any, n_rows: int) -> Tensor:
    if isinstance(source, Tensor):
        if source.ndim != 4 or source.shape[0] != n_rows or source.shape[1] != model.n_layers:
            raise FeatureError(
                f"patch source must be a batch layer head_index d_head tensor with batch={n_rows}, "
                f"layer={model.n_layers}; got {tuple(source.shape)}."
            )
        return source[:, layer, heads]
    feats = require_head_features(source)
    if feats.n_examples != n_rows:
        raise FeatureError(f"patch source has {feats.n_examples} examples but the batch has {n_rows} rows.")
    return feats.z[:, layer_row(feats, layer)][:, heads]
