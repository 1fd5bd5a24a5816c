"""`savlens.trace`: read (and later edit) activations by hook name, over nnsight.

Inside ``with savlens.trace(model, batch) as t:`` you declare what to save (``t.save``); the model runs once
when the block ends, and the handles hold their values after the block. Saves are read in execution order
whatever order you declare them in, positions are sliced inside the hook (no full-sequence tensor is kept
unless asked for), and ``t.cache`` holds every saved tensor with its dims.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.attention import AttentionPatterns, PatternCapture
from savlens.cache import ActivationCache, stack_layers
from savlens.engine import LogitsMode, Request, execute, resolve_cached
from savlens.errors import (
    ArgumentError,
    HookNotAvailableError,
    InputError,
    PositionError,
    TraceStateError,
)
from savlens.heads import HeadSet
from savlens.inputs import Batch
from savlens.interventions import (
    Edit,
    by_layer,
    head_values,
    layer_row,
    require_head_features,
    row_values,
)
from savlens.loading import Model
from savlens.names import split_name
from savlens.positions import Positions, select_positions


@dataclass
class Handle:
    """What :meth:`Trace.save` returns: empty inside the block, filled when it ends.

    ``handle.value`` is the tensor of a single name, or for a pattern that matches one hook per layer,
    the tensors stacked on a ``layer`` axis after ``batch pos`` (``batch pos layer ...``).
    ``handle[name]`` gives one name's tensor; ``handle.dims`` the dim words of ``value``.
    """

    names: list[str]
    _cache: ActivationCache | None = field(default=None, repr=False)  # this save's own entries

    def _filled(self) -> ActivationCache:
        if self._cache is None:
            raise TraceStateError(
                f"the value of {self.names[0]!r}{' ...' if len(self.names) > 1 else ''} is not available yet: "
                "saved values are filled when the `with savlens.trace(...)` block ends."
            )
        return self._cache

    @property
    def value(self) -> Tensor:
        cache = self._filled()
        if len(self.names) == 1:
            return cache[self.names[0]]
        return stack_layers([cache[n] for n in self.names], cache.dims(self.names[0]), self.names[0])

    @property
    def dims(self) -> tuple[str, ...]:
        d = self._filled().dims(self.names[0])
        if len(self.names) == 1:
            return d
        ax = _layer_axis(d)
        return (*d[:ax], "layer", *d[ax:])

    def __getitem__(self, name: str) -> Tensor:
        return self._filled()[name]

    def __repr__(self) -> str:
        if self._cache is None:
            return f"Handle({len(self.names)} names, not filled yet)"
        sizes = " ".join(f"{d}={s}" for d, s in zip(self.dims, self.value.shape))
        return f"Handle({self.names[0]}{' ...' if len(self.names) > 1 else ''} [{sizes}])"


def _layer_axis(dims: tuple[str, ...]) -> int:
    return 2 if dims[:2] == ("batch", "pos") else 1


class Trace:
    """One forward pass of ``model`` on ``batch`` with saves declared by name (see :func:`trace`)."""

    def __init__(
        self, model: Model, batch: Batch, *, logits: LogitsMode = "last", stop_at_layer: int | None = None
    ) -> None:
        if not isinstance(model, Model):
            raise ArgumentError(
                f"savlens.trace needs a savlens.Model (savlens.load / savlens.wrap); got {type(model).__name__}."
            )
        if not isinstance(batch, Batch):
            raise InputError(
                f"savlens.trace needs a savlens.Batch (savlens.Batch.from_examples); got {type(batch).__name__}."
            )
        batch.check_model(model)
        if logits not in ("last", "all", None):
            raise ArgumentError(f"logits must be 'last', 'all' or None; got {logits!r}.")
        if stop_at_layer is not None and not 0 <= stop_at_layer < model.n_layers:
            raise ArgumentError(f"stop_at_layer={stop_at_layer} is out of range for {model.n_layers} layers.")
        if stop_at_layer is not None and logits is not None:
            raise ArgumentError("stop_at_layer stops the forward pass before the logits: pass logits=None with it.")
        self.model, self.batch = model, batch
        self._logits_mode: LogitsMode = logits
        self._stop_at_layer = stop_at_layer
        self._requests: list[Request] = []
        self._edits: list[Edit] = []
        self._handles: list[Handle] = []
        self._cache: ActivationCache | None = None
        self._logits: Tensor | None = None
        self._ran = False

    # ---- declaring -------------------------------------------------------------------------------
    def save(
        self,
        names: str | Sequence[str],
        positions: Positions | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Handle:
        """Declare hooks to save; return a :class:`Handle` that holds the values after the block.

        Args:
            names: canonical hook names or glob patterns (``"blocks.*.attn.hook_z"``).
            positions: ``"last"`` (default for language-model hooks: each row's last real token),
                ``"image"`` / ``"text"`` (ragged: padded on ``pos``, with a mask in ``t.cache.entry``),
                ``"all"``, or indices within each example's own tokens (negative counts from the end).
                Vision-tower hooks are always saved whole.
            device: move saved values here inside the hook (e.g. ``"cpu"`` to offload).
            dtype: cast saved values to this dtype inside the hook.

        Raises:
            HookNameError: a name or pattern that matches no hook of this model.
            HookNotAvailableError: a hook the named layer's kind does not have, or one past ``stop_at_layer``.
        """
        if self._ran:
            raise TraceStateError("this trace already ran; open a new `with savlens.trace(...)` block to save more.")
        check_device_dtype(device, dtype, "t.save")
        concrete = resolve_cached(self.model, names)
        for n in concrete:
            if n.startswith("vision_") and positions not in (None, "all"):
                raise PositionError(
                    f"{n!r} is a vision-tower hook and is saved whole; it takes no positions "
                    f"(got positions={positions!r}). Save it in a separate t.save call."
                )
            layer, _ = split_name(n)
            if self._stop_at_layer is not None and layer is not None and layer > self._stop_at_layer:
                raise HookNotAvailableError(f"{n!r} is past stop_at_layer={self._stop_at_layer}; it would never run.")
        if positions is not None and positions != "all":
            select_positions(self.batch, positions)  # validate now, inside the user's block
        self._requests.append(Request(concrete, positions, device, dtype))
        handle = Handle(concrete)
        self._handles.append(handle)
        return handle

    # ---- results ---------------------------------------------------------------------------------
    @property
    def cache(self) -> ActivationCache:
        """Every saved tensor, keyed by hook name (available after the block).

        A name saved twice (e.g. at two different positions) holds the value of the later ``t.save`` here;
        each :class:`Handle` keeps its own."""
        if self._cache is None:
            raise TraceStateError("t.cache is filled when the `with savlens.trace(...)` block ends.")
        return self._cache

    @property
    def logits(self) -> Float[Tensor, "batch pos d_vocab"]:
        """The logits (``pos`` = 1 for ``logits="last"``), available after the block."""
        if not self._ran:
            raise TraceStateError("t.logits is available when the `with savlens.trace(...)` block ends.")
        if self._logits is None:
            raise TraceStateError("this trace ran with logits=None (or stop_at_layer); no logits were kept.")
        return self._logits

    # ---- interventions ---------------------------------------------------------------------------
    def ablate(
        self, heads: Any, how: Literal["zero", "mean"] = "zero", *, means: Any = None, positions: Positions = "all"
    ) -> None:
        """Ablate ``heads``: set their ``hook_z`` to zero or to a mean, at ``positions``.

        Args:
            heads: a :class:`~savlens.heads.HeadSet`, ``"L14H3"`` labels or ``(layer, head)`` pairs.
            how: ``"zero"`` or ``"mean"``.
            means: for ``how="mean"``: :class:`HeadFeatures` (their mean over examples is used) or a
                ``layer head_index d_head`` tensor over all layers.
            positions: where to ablate (default every position).
        """
        if how not in ("zero", "mean"):
            raise ArgumentError(f"ablate(how=...) must be 'zero' or 'mean'; got {how!r}.")
        if how == "mean" and means is None:
            raise ArgumentError("ablate(how='mean') needs means=: HeadFeatures or a layer head_index d_head tensor.")
        for layer, hs in by_layer(heads, self.model):
            value = None if how == "zero" else head_values(means, layer, hs, self.model)
            self._add_edit(Edit(layer, hs, "set", value, positions, f"{how}-ablation"))

    def patch(self, heads: Any, source: Any, *, positions: Positions = "last") -> None:
        """Replace ``heads``' ``hook_z`` with values from another input (activation patching).

        Args:
            heads: the heads to patch.
            source: :class:`HeadFeatures` with one row per batch row (features of the source inputs, read at
                one position), or a ``batch layer head_index d_head`` tensor.
            positions: where to write the source values (default the last token).
        """
        for layer, hs in by_layer(heads, self.model):
            value = row_values(source, layer, hs, self.model, self.batch.size)
            self._add_edit(Edit(layer, hs, "set", value[:, None], positions, "patch"))

    def resample(self, heads: Any, source: Any, *, seed: int = 0, positions: Positions = "last") -> None:
        """Resample-ablate ``heads``: patch in the values of randomly drawn examples of ``source``."""
        feats = require_head_features(source)
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, feats.n_examples, (self.batch.size,), generator=gen)  # with replacement
        for layer, hs in by_layer(heads, self.model):
            value = feats.z[rows][:, layer_row(feats, layer)][:, hs]
            self._add_edit(Edit(layer, hs, "set", value[:, None], positions, "resample-ablation"))

    def add(self, heads: Any, vector: Tensor, *, positions: Positions = "last") -> None:
        """Add ``vector`` (``d_head``, or ``k d_head`` for the k heads of each layer) to ``heads``' ``hook_z``."""
        for layer, hs in by_layer(heads, self.model):
            self._add_edit(Edit(layer, hs, "add", torch.as_tensor(vector), positions, "addition"))

    def _add_edit(self, edit: Edit) -> None:
        if self._ran:
            raise TraceStateError("this trace already ran; declare interventions inside the `with` block.")
        if self._stop_at_layer is not None and edit.layer > self._stop_at_layer:
            raise HookNotAvailableError(
                f"{edit.describe()} is past stop_at_layer={self._stop_at_layer}; it would never run."
            )
        if edit.positions != "all":
            select_positions(self.batch, edit.positions)
        self._edits.append(edit)

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.run()

    def run(self) -> "Trace":
        """Run the forward pass now (called by the ``with`` block's end)."""
        if self._ran:
            return self
        per_request, self._logits = execute(
            self.model, self.batch, self._requests, self._logits_mode, self._stop_at_layer, self._edits
        )
        self._cache = ActivationCache()
        for h, entries in zip(self._handles, per_request):
            h._cache = ActivationCache(entries)
            for name, entry in entries.items():
                self._cache._set(name, entry)
        self._ran = True
        return self


def check_device_dtype(device: Any, dtype: Any, what: str) -> None:
    """Raise :class:`ArgumentError` unless ``device`` (None or a usable torch device) and ``dtype`` (None or a
    floating torch dtype) can take saved values; checked when the save is declared, not inside the run."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ArgumentError(
            f"{what}: dtype={dtype!r} is not a floating torch dtype; pass e.g. torch.float32 or torch.bfloat16."
        )
    if device is None:
        return
    try:
        torch.empty(0, device=device)
    except Exception as e:  # an unknown device string, or a build / machine without that device
        raise ArgumentError(
            f"{what}: device={device!r} cannot be used here ({type(e).__name__}: {str(e).splitlines()[0]}); pass "
            "'cpu' or a device this machine has (torch.cuda.is_available())."
        ) from None


def trace(model: Model, batch: Batch, *, logits: LogitsMode = "last", stop_at_layer: int | None = None) -> Trace:
    """Open a trace of one forward pass of ``model`` on ``batch``.

    Example::

        with savlens.trace(model, batch) as t:
            z = t.save("blocks.*.attn.hook_z")          # batch pos=1 layer head_index d_head, at the last token
        z.value, t.logits, t.cache

    Args:
        model: a :class:`savlens.Model`.
        batch: a :class:`savlens.Batch` built for this model.
        logits: ``"last"`` (each row's last real token, default), ``"all"`` or None (not kept).
        stop_at_layer: stop the forward pass after this layer (no logits); saves must not go past it.
    """
    return Trace(model, batch, logits=logits, stop_at_layer=stop_at_layer)


def run_with_cache(
    model: Model,
    batch: Batch,
    names: str | Sequence[str] = "blocks.*.attn.hook_z",
    positions: Positions | None = None,
    *,
    logits: LogitsMode = "last",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, ActivationCache]:
    """Run ``model`` on ``batch`` once and return ``(logits, cache)`` (TransformerLens style)."""
    with trace(model, batch, logits=logits) as t:
        t.save(names, positions, device=device, dtype=dtype)
    return (t.logits if logits is not None else None), t.cache


def attention_patterns(
    model: Model,
    batch: Batch,
    heads: Any,
    positions: Positions = "last",
    *,
    device: torch.device | str | None = "cpu",
) -> AttentionPatterns:
    """Return the attention probabilities of ``heads`` at the query ``positions`` of ``batch``, under the model's
    own attention backend (SDPA, flash, flex or eager; never switching it).

    The forward pass stops after the last layer of ``heads``. Memory: ``batch x k x query rows x keys``.

    Args:
        model: the model.
        batch: the batch.
        heads: a :class:`HeadSet`, ``"L14H3"`` labels or ``(layer, head)`` pairs (self-attention layers only).
        positions: query rows: ``"last"`` (default: each row's last real token), ``"image"``, ``"text"``,
            ``"all"`` or indices (as :meth:`savlens.Trace.save`).
        device: where the result goes (default CPU).

    Example::

        p = savlens.attention_patterns(model, batch, ["L1H0", "L2H3"])   # from the last token
        p["L1H0"][0, 0]                                                  # row 0's attention over its keys
    """
    hs = heads if isinstance(heads, HeadSet) else HeadSet(heads)
    if not len(hs):
        raise ArgumentError("attention_patterns needs at least one head.")
    sel = select_positions(batch, positions)
    per_layer: dict[int, list[int]] = {}
    for h in hs:
        per_layer.setdefault(h.layer, []).append(h.head)
    last = max(per_layer)
    capture = PatternCapture(model, per_layer, sel, dtype=torch.float32)
    with capture, trace(model, batch, logits=None, stop_at_layer=last) as t:
        t.save(f"blocks.{last}.hook_resid_post")  # keeps the pass going until the last layer's attention ran
    order = {layer: {h: i for i, h in enumerate(hh)} for layer, hh in per_layer.items()}
    value = torch.stack([capture.patterns[h.layer][:, order[h.layer][h.head]] for h in hs], dim=1)
    return AttentionPatterns(hs, value.to(device), sel.index.clone(), sel.mask.clone())


__all__ = ["Handle", "Trace", "attention_patterns", "run_with_cache", "trace"]
