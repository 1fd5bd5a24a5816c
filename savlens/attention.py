"""Attention patterns under any attention backend, for chosen heads and query positions.

SDPA, flash and flex attention never materialise the attention probabilities. Every softmax-attention module of a
transformers model hands its post-RoPE queries and keys to one backend function, looked up by
``config._attn_implementation`` in ``transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS``, as
``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., sliding_window=..., softcap=...)``.
:class:`PatternCapture` wraps that function for the duration of one forward pass: the model's own call goes
through unchanged (the logits are bit-identical), and for the chosen layers the wrapper recomputes

    softmax(softcap(q_h k_g^T * scaling) + mask)

only for the chosen query heads ``h`` (``g`` their KV head under GQA) and the chosen query rows, from the very
queries (with the family's rotary embedding, mRoPE included), keys and mask that the backend received: the
memory is ``batch x heads x query rows x keys``, never ``head x query x key`` for all heads. Under eager
attention the module's own attention weights are read instead (a forward hook, sliced at once).

Masks: the 4-D boolean or additive mask of SDPA / eager, the 2-D padding mask of flash attention (causal and
sliding window then come from the call), a flex ``BlockMask`` (its ``mask_mod`` is evaluated on the chosen rows),
or none (causal, as the backend's ``is_causal``). Calls with an attention-sink (``s_aux``) or position-bias term
are refused (:class:`~savlens.errors.HookNotAvailableError`), as are layers whose attention never reaches the
backend function (checked after the run: nothing is silently missing).

Use :func:`attention_patterns` (chosen heads), or ``blocks.{l}.attn.hook_pattern`` in a trace (every head of
the layer, at the saved positions).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from savlens.errors import ArgumentError, HookNotAvailableError
from savlens.heads import Head, HeadSet
from savlens.loading import Model
from savlens.positions import Selection, take_positions

#: backend-call keyword arguments that change the scores in ways the capture does not reproduce
_REFUSED_KWARGS = ("s_aux", "position_bias")


@dataclass
class _Target:
    """One layer to capture: its query heads (None: all) and where its result goes."""

    layer: int
    heads: Tensor | None
    out_dtype: torch.dtype | None  # None: the query's dtype (as eager's weights)


class PatternCapture:
    """Context manager: capture attention patterns of chosen layers and heads during the forward passes inside it.

    Args:
        model: the model.
        heads: ``{layer: query heads}`` (a list of head numbers, or None for every head of the layer).
        selection: the query rows per batch row (:func:`savlens.positions.select_positions`).
        dtype: dtype of the captured patterns (None: the model's dtype, as eager's weights; they are always
            computed in float32).

    After the block, ``capture.patterns[layer]`` is ``batch head query_pos key_pos`` (the chosen heads in the
    given order; query rows of ragged selections padded with zeros).

    Raises:
        HookNotAvailableError: a layer without softmax self-attention heads (linear attention, convolution,
            cross-attention), or, after the run, a layer whose attention never reached the backend function or
            that used an attention sink / position bias.
    """

    def __init__(
        self,
        model: Model,
        heads: Mapping[int, Sequence[int] | None],
        selection: Selection,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.selection = model, selection
        self.impl = model.attn_implementation
        self.patterns: dict[int, Tensor] = {}
        self._targets: dict[int, _Target] = {}
        self._problems: list[str] = []
        self._undo: list[Callable[[], None]] = []
        kinds = model.resolved.kinds
        for layer, hs in heads.items():
            if not 0 <= layer < model.n_layers:
                raise ArgumentError(f"layer {layer} is out of range: this model has {model.n_layers} layers.")
            if kinds[layer] != "attention":
                raise HookNotAvailableError(
                    f"layer {layer} is a {kinds[layer].replace('_', ' ')} layer: attention patterns exist on softmax "
                    f"self-attention layers only. Layers by kind: {_by_kind(kinds)}."
                )
            n_heads = model.resolved.layers[layer].n_heads
            idx = None
            if hs is not None:
                bad = [h for h in hs if not 0 <= int(h) < n_heads]
                if bad:
                    raise ArgumentError(f"heads {bad} of layer {layer} are out of range: it has {n_heads} query heads.")
                idx = torch.tensor([int(h) for h in hs], dtype=torch.long)
            module = model.module(model.resolved.block_path(layer, "attn"))
            self._targets[id(module)] = _Target(layer, idx, dtype)
        self._modules = [model.module(model.resolved.block_path(t.layer, "attn")) for t in self._targets.values()]

    # ---- installing ----------------------------------------------------------------------------------
    def __enter__(self) -> "PatternCapture":
        self.patterns.clear()
        self._problems.clear()
        if self.impl == "eager":
            for module in self._modules:
                handle = module.register_forward_hook(self._eager_hook)
                self._undo.append(handle.remove)
        else:
            self._wrap_backend(self.impl)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        while self._undo:
            self._undo.pop()()
        if exc_type is not None:
            return
        if self._problems:
            raise HookNotAvailableError(" ".join(dict.fromkeys(self._problems)))
        missing = sorted({t.layer for t in self._targets.values()} - set(self.patterns))
        if missing:
            raise HookNotAvailableError(
                f"the attention of layer(s) {missing} never reached transformers' attention function "
                f"{self.impl!r} in this forward pass, so no attention pattern was captured there. savlens captures "
                "patterns at ALL_ATTENTION_FUNCTIONS (every transformers model of the supported families calls it); "
                "a model with its own attention code needs attn_implementation='eager' for patterns."
            )

    def _wrap_backend(self, impl: str) -> None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

        # an entry on the shared instance (a local override) wins over the class-wide mapping; wrap both
        mappings: tuple[dict[str, Any], ...] = (
            ALL_ATTENTION_FUNCTIONS._local_mapping,
            AttentionInterface._global_mapping,
        )
        for mapping in mappings:
            if impl in mapping:
                original = mapping[impl]
                mapping[impl] = self._wrapper(original)
                self._undo.append(functools.partial(mapping.__setitem__, impl, original))
        if not self._undo:
            raise HookNotAvailableError(
                f"attention implementation {impl!r} is not registered in transformers' AttentionInterface, so "
                "savlens cannot capture attention patterns under it; load the model with attn_implementation='sdpa' "
                "or 'eager'."
            )

    def _wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def capture_attention(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            target = self._targets.get(id(args[0])) if args else None
            if target is not None:
                self._capture(target, args, kwargs)
            return out

        return capture_attention

    # ---- capturing -----------------------------------------------------------------------------------
    def _capture(self, target: _Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        module, query, key = args[0], args[1], args[2]
        mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
        where = f"layer {target.layer} ({type(module).__name__}, {self.impl!r})"
        if len(args) > 5:
            self._problems.append(f"{where}: the attention function got {len(args)} positional arguments; savlens "
                                  "reads scaling, softcap and sliding_window as keywords.")  # fmt: skip
            return
        refused = [k for k in _REFUSED_KWARGS if kwargs.get(k) is not None]
        if refused:
            self._problems.append(
                f"{where} adds {refused} to its attention scores, which savlens does not reproduce; load the model "
                "with attn_implementation='eager' for its attention patterns."
            )
            return
        if target.layer in self.patterns:
            self._problems.append(f"{where}: the attention module ran twice in one forward pass.")
            return
        if int(self.selection.index.max()) >= query.shape[2] or key.shape[2] != query.shape[2]:
            self._problems.append(
                f"{where}: its queries / keys cover {query.shape[2]} / {key.shape[2]} positions, not the batch's "
                "sequence; savlens reads patterns of a full forward pass over the batch (no KV cache)."
            )
            return
        causal = kwargs.get("is_causal")
        try:
            with torch.no_grad():
                probs = pattern_rows(
                    query,
                    key,
                    mask,
                    self.selection,
                    heads=target.heads,
                    scaling=kwargs.get("scaling"),
                    softcap=kwargs.get("softcap"),
                    sliding_window=kwargs.get("sliding_window"),
                    is_causal=bool(causal if causal is not None else getattr(module, "is_causal", True)),
                )
        except HookNotAvailableError as e:  # raised after the pass: an error inside it would reach nnsight
            self._problems.append(f"{where}: {e.detail}")
            return
        self.patterns[target.layer] = probs.to(target.out_dtype or query.dtype)

    def _eager_hook(self, module: Any, inputs: Any, output: Any) -> None:
        target = self._targets[id(module)]
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, Tensor):
            self._problems.append(
                f"layer {target.layer} ({type(module).__name__}) returned no attention weights under eager attention."
            )
            return
        if target.heads is not None:
            weights = weights[:, target.heads.to(weights.device)]
        rows = take_positions(weights, self.selection, dim=2)
        self.patterns[target.layer] = rows.to(target.out_dtype or weights.dtype)


def _by_kind(kinds: Sequence[str]) -> dict[str, list[int]]:
    return {k: [i for i, kk in enumerate(kinds) if kk == k] for k in dict.fromkeys(kinds)}


def pattern_rows(
    query: Float[Tensor, "batch head_index q_len d_head"],
    key: Float[Tensor, "batch kv_head_index k_len d_head"],
    mask: Any,
    selection: Selection,
    *,
    heads: Int[Tensor, " k"] | None = None,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    is_causal: bool = True,
) -> Float[Tensor, "batch k query_pos key_pos"]:
    """Attention probabilities of ``heads`` at the ``selection``'s query rows, as the backend computes them.

    ``mask`` is what the backend received: a 4-D boolean (True: attend) or additive float mask (used as is), a
    2-D ``batch key_pos`` padding mask (flash attention: ``is_causal`` and ``sliding_window`` are applied on top),
    a flex ``BlockMask`` (its ``mask_mod``), or None (``is_causal`` and ``sliding_window`` only). Float32 throughout.
    """
    bsz, n_heads, q_len, d_head = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    device = query.device
    idx = torch.arange(n_heads, device=device) if heads is None else heads.to(device)
    kv_idx = idx // (n_heads // n_kv)  # HF repeat_kv layout: query head h reads KV head h // group
    sel = Selection(selection.index.to(device), selection.mask.to(device), selection.ragged)
    q = take_positions(query[:, idx], sel, dim=2).float()  # batch k n d_head
    k = key[:, kv_idx].float()  # batch k k_len d_head
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else d_head**-0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    rows = sel.index[:, None, :, None]  # batch 1 n 1: query index of each row
    cols = torch.arange(k_len, device=device)[None, None, None, :]
    keep: Tensor | None = None
    if isinstance(mask, Tensor) and mask.ndim == 4:
        m = mask[..., :k_len]
        if m.shape[1] != 1:
            m = m[:, idx]
        m = take_positions(m.expand(bsz, -1, -1, -1), sel, dim=2)
        scores = scores + (_additive(m) if m.dtype == torch.bool else m.float())
    elif isinstance(mask, Tensor) and mask.ndim == 2:  # flash attention: padding of the keys
        keep = mask[:, None, None, :k_len].bool()
    elif mask is not None and hasattr(mask, "mask_mod"):  # flex attention's BlockMask
        b = torch.arange(bsz, device=device)[:, None, None, None]
        h = idx[None, :, None, None]
        keep = mask.mask_mod(b, h, rows, cols).expand(bsz, len(idx), -1, k_len)
    elif mask is not None:
        raise HookNotAvailableError(
            f"savlens cannot read an attention mask of type {type(mask).__name__} (it reads 4-D and 2-D tensors and "
            "flex BlockMasks); load the model with attn_implementation='sdpa' or 'eager' for attention patterns."
        )
    if mask is None or (isinstance(mask, Tensor) and mask.ndim == 2):
        if is_causal and q_len > 1:
            keep = (cols <= rows) if keep is None else keep & (cols <= rows)
        if sliding_window is not None:
            near = cols > rows - sliding_window
            if not is_causal:
                near = near & (cols < rows + sliding_window)
            keep = near if keep is None else keep & near
    if keep is not None:
        scores = scores + _additive(keep)
    probs = torch.softmax(scores, dim=-1)
    if sel.ragged:
        probs = probs * sel.mask[:, None, :, None].to(probs.dtype)
    return probs


def _additive(keep: Tensor) -> Tensor:
    """A boolean mask (True: attend) as eager attention adds it: 0 where kept, the float32 minimum elsewhere."""
    return torch.where(keep, 0.0, torch.finfo(torch.float32).min)


# ---- the user-facing call -----------------------------------------------------------------------------
@dataclass
class AttentionPatterns:
    """Attention probabilities of chosen heads at chosen query positions (:func:`attention_patterns`).

    Attributes:
        heads: the heads, in order.
        value: ``batch k query_pos key_pos`` float32 probabilities (``key_pos`` spans the batch's padded sequence).
        index: ``batch query_pos`` sequence index of each query row.
        mask: ``batch query_pos`` True where the row is a real position (ragged selections pad with False and
            zero probabilities).
    """

    heads: HeadSet
    value: Float[Tensor, "batch k query_pos key_pos"]
    index: Int[Tensor, "batch query_pos"]
    mask: Bool[Tensor, "batch query_pos"]

    def __getitem__(self, head: "Head | str | tuple[int, int]") -> Float[Tensor, "batch query_pos key_pos"]:
        """One head's ``batch query_pos key_pos`` pattern (``patterns["L14H3"]``)."""
        h = Head.coerce(head)
        if h not in self.heads:
            raise ArgumentError(f"head {h} is not one of the captured heads ({self.heads}).")
        return self.value[:, list(self.heads).index(h)]


__all__ = ["AttentionPatterns", "PatternCapture", "pattern_rows"]
