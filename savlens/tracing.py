"""`savlens.trace`: read (and later edit) activations by hook name, over nnsight.

Inside ``with savlens.trace(model, batch) as t:`` you declare what to save (``t.save``); the model runs once
when the block ends, and the handles hold their values after the block. Saves are read in execution order
whatever order you declare them in, positions are sliced inside the hook (no full-sequence tensor is kept
unless asked for), and ``t.cache`` holds every saved tensor with its dims.
"""

import functools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from savlens.attention import PatternCapture
from savlens.cache import ActivationCache, CacheEntry, stack_layers
from savlens.errors import (
    ArgumentError,
    HookNotAvailableError,
    InputError,
    ModelSpecError,
    PositionError,
    TraceStateError,
)
from savlens.inputs import Batch
from savlens.interventions import (
    Edit,
    apply_edits,
    by_layer,
    head_values,
    layer_row,
    require_head_features,
    row_values,
)
from savlens.loading import Model
from savlens.models import get_path
from savlens.names import QUERY_HEAD_HOOKS, hook_point, resolve, split_name
from savlens.positions import Positions, Selection, select_positions, take_positions

LogitsMode = Literal["last", "all"] | None


@dataclass
class _Request:
    names: list[str]
    positions: Positions | None
    device: torch.device | str | None
    dtype: torch.dtype | None


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
        self._requests: list[_Request] = []
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
        concrete = _resolved(self.model, names)
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
        self._requests.append(_Request(concrete, positions, device, dtype))
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
        per_request, self._logits = _execute(
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


# ---- execution ----------------------------------------------------------------------------------

#: where each hook is read: (module role, "input" | "output", index into a tuple output or None)
_ACCESS: dict[str, tuple[str, str]] = {
    "vision_encoder.hook_out": ("vision_encoder", "output"),
    "vision_projector.hook_out": ("vision_projector", "output"),
    "hook_embed": ("block", "input"),
    "blocks.{l}.hook_resid_pre": ("block", "input"),
    "blocks.{l}.attn.hook_q": ("q_proj", "output"),
    "blocks.{l}.attn.hook_k": ("k_proj", "output"),
    "blocks.{l}.attn.hook_v": ("v_proj", "output"),
    "blocks.{l}.attn.hook_z": ("o_proj", "input"),
    "blocks.{l}.attn.hook_result": ("o_proj", "input"),
    "blocks.{l}.hook_attn_out": ("o_proj", "output"),
    "blocks.{l}.attn.hook_pattern": ("block", "output"),  # computed by savlens.attention; see _plan
    "blocks.{l}.cross_attn.hook_q": ("q_proj", "output"),
    "blocks.{l}.cross_attn.hook_z": ("o_proj", "input"),
    "blocks.{l}.cross_attn.hook_result": ("o_proj", "input"),
    "blocks.{l}.hook_mlp_out": ("mlp", "output"),
    "blocks.{l}.hook_resid_post": ("block", "output"),
}
#: execution order of module accesses inside one layer
_STEP = {
    ("block", "input"): 0,
    ("q_proj", "output"): 1,
    ("k_proj", "output"): 2,
    ("v_proj", "output"): 3,
    ("o_proj", "input"): 4,
    ("o_proj", "output"): 5,
    ("mlp", "output"): 6,
    ("block", "output"): 7,
}


@dataclass
class _Read:
    """One module access and the saves it serves."""

    path: str
    kind: str
    order: tuple[int, int, int]
    saves: list[tuple[str, int]] = field(default_factory=list)  # (hook name, index of its request)
    edits: list["Edit"] = field(default_factory=list)


def _plan(model: Model, requests: list[_Request], edits: "Sequence[Edit]" = ()) -> list[_Read]:
    rs = model.resolved
    reads: dict[tuple[str, str], _Read] = {}
    for edit in edits:
        path = rs.block_path(edit.layer, "o_proj")
        reads.setdefault((path, "input"), _Read(path, "input", (2, edit.layer, _STEP[("o_proj", "input")])))
        reads[(path, "input")].edits.append(edit)
    for i, req in enumerate(requests):
        for name in req.names:
            layer, template = split_name(name)
            role, kind = _ACCESS[template]
            if role == "vision_encoder":
                path, order = str(rs.vision_encoder), (0, 0, 0)
            elif role == "vision_projector":
                path, order = str(rs.vision_projector), (1, 0, 0)
            else:
                layer = 0 if layer is None else layer
                path = rs.block_path(layer, "" if role == "block" else role)
                order = (2, layer, _STEP[(role, kind)])
            read = reads.setdefault((path, kind), _Read(path, kind, order))
            if template != _PATTERN:  # a pattern is captured by savlens.attention; its read (the block's
                read.saves.append((name, i))  # output) only keeps the pass going until the attention ran
    return sorted(reads.values(), key=lambda r: r.order)


def _first(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    raise ModelSpecError(f"cannot read a tensor from a module output of type {type(x).__name__}.")


def _execute(
    model: Model,
    batch: Batch,
    requests: list[_Request],
    logits_mode: LogitsMode,
    stop_at_layer: int | None,
    edits: Sequence[Edit] = (),
) -> tuple[list[dict[str, CacheEntry]], Tensor | None]:
    plan = _cached_plan(model, requests) if not edits else _plan(model, requests, edits)
    selections: dict[Any, Selection] = {}
    for req in requests:
        key = _pos_key(req.positions)
        if key not in selections:
            selections[key] = _select(batch, req.positions or "last")
    captures = _pattern_captures(model, requests, selections)
    inputs = _model_inputs(model, batch, logits_mode)
    raw: list[dict[str, Tensor]] = [{} for _ in requests]
    logits_box: list[Tensor] = []
    last = batch.last_index.to(inputs["input_ids"].device)

    applied: list[Edit] = []
    serve = _Server(requests, batch, model.resolved.layers, selections, raw, applied)
    with torch.no_grad(), _entered(captures.values()):
        if PLAIN_HOOKS and plan and all(r.kind in ("input", "output") for r in plan):
            _run_hooks(model, plan, inputs, serve, logits_mode, stop_at_layer, last, logits_box)
        else:
            env = model.envoy
            with env.trace(**inputs) as tracer:
                # the body runs in a plain function: nnsight executes a with-block's own code against a dict
                # scope (every name a dict lookup, globals after a KeyError), which cost ~0.3 ms per trace
                _interleave(env, plan, serve)
                if stop_at_layer is not None:
                    tracer.stop()
                elif logits_mode is not None:
                    _read_logits(env, logits_mode, last, logits_box)
    _fill_patterns(captures, requests, raw)

    missed = [e for e in edits if not any(e is a for a in applied)]
    if missed:
        raise HookNotAvailableError(
            f"interventions on {', '.join(e.describe() for e in missed)} never ran: the output projection of that "
            "layer was not called in this forward pass."
        )
    out: list[dict[str, CacheEntry]] = []
    for req, values in zip(requests, raw):
        entries = {}
        for name in req.names:  # keep the declared (execution) order
            entry = _entry(model, name, values[name], req, selections)
            if _split(name)[1] in _RESULT:
                entry = _result_entry(model, name, entry)
            entries[name] = entry
        out.append(entries)
    return out, (logits_box[0] if logits_box else None)


# ---- attention patterns (hook_pattern): computed by savlens.attention during the pass -------------------
@contextmanager
def _entered(captures: Iterable[PatternCapture]) -> Iterator[None]:
    with ExitStack() as stack:
        for capture in captures:
            stack.enter_context(capture)
        yield


def _pattern_captures(
    model: Model, requests: list[_Request], selections: dict[Any, Selection]
) -> dict[Any, PatternCapture]:
    """One :class:`PatternCapture` per distinct positions of the ``hook_pattern`` saves (every head of each layer)."""
    layers: dict[Any, dict[int, None]] = {}
    for req in requests:
        for name in req.names:
            layer, template = split_name(name)
            if template == _PATTERN and layer is not None:
                layers.setdefault(_pos_key(req.positions), {})[layer] = None
    return {key: PatternCapture(model, ls, selections[key]) for key, ls in layers.items()}


def _fill_patterns(captures: dict[Any, PatternCapture], requests: list[_Request], raw: list[dict[str, Tensor]]) -> None:
    for i, req in enumerate(requests):
        for name in req.names:
            layer, template = split_name(name)
            if template == _PATTERN and layer is not None:
                x = captures[_pos_key(req.positions)].patterns[layer]
                raw[i][name] = x.to(device=req.device, dtype=req.dtype) if req.device or req.dtype else x


def _interleave(env: Any, plan: list[_Read], serve: "_Server") -> None:
    """Inside the nnsight trace: read each planned module access in execution order, apply edits, save slices."""
    for read in plan:
        module = get_path(env, read.path)
        value = module.input if read.kind == "input" else module.output
        edited = serve(read, value, save=True)
        if read.edits:
            module.input = edited


class _Server:
    """Serves one planned module access: applies its edits and stores the slices of its saves."""

    def __init__(
        self,
        requests: list[_Request],
        batch: Batch,
        layers: Sequence[Any],
        selections: dict[Any, Selection],
        raw: list[dict[str, Tensor]],
        applied: list[Edit],
    ) -> None:
        self.requests, self.batch, self.layers = requests, batch, layers
        self.selections, self.raw, self.applied = selections, raw, applied
        self._index: dict[tuple[int, Any], tuple[Tensor, Tensor]] = {}

    def _gather_index(self, sel: Selection, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (id(sel), device)
        index = self._index.get(key)
        if index is None:
            idx = sel.index.to(device)
            index = self._index[key] = (torch.arange(idx.shape[0], device=device)[:, None], idx)
        return index

    def __call__(self, read: _Read, value: Any, save: bool) -> Any:
        """Return the (edited) value of the access; ``save`` marks saved tensors for nnsight."""
        batch, layers = self.batch, self.layers
        if read.edits:
            value = apply_edits(value, read.edits, batch, layers[read.edits[0].layer])
            self.applied.extend(read.edits)
        for name, i in read.saves:
            req = self.requests[i]
            layer, template = _split(name)
            x: Any  # an nnsight proxy inside an nnsight trace, a tensor under plain hooks
            if template in _QKV_PART:
                x = _qkv_part(value, template, layers[layer or 0])
            elif read.kind == "output" or template in ("hook_embed", "blocks.{l}.hook_resid_pre"):
                x = _first(value)
                if x.ndim == 2 and template == "blocks.{l}.hook_mlp_out":  # an MoE (Llama 4) flattens the tokens
                    x = x.view(batch.size, -1, x.shape[-1])
            else:
                x = value
            if not name.startswith("vision_") and req.positions != "all":
                sel = self.selections[_pos_key(req.positions)]
                # ragged: take_positions; else its gather, with the index tensors built once per trace
                x = take_positions(x, sel, dim=1) if sel.ragged else x[self._gather_index(sel, x.device)]
            if req.device is not None or req.dtype is not None:
                x = x.to(device=req.device, dtype=req.dtype)
            self.raw[i][name] = x.save() if save else x
        return value


_QKV_PART = (
    "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k",
    "blocks.{l}.attn.hook_v",
    "blocks.{l}.cross_attn.hook_q",
)


def _qkv_part(out: Tensor, template: str, info: Any) -> Tensor:
    """The query, key or value part of a projection's output: split out of a fused qkv projection (q, then k,
    then v along the last axis), or the query half of a gated query projection (per head: query, then gate)."""
    if info.fused_qkv:
        nq, nkv = info.n_heads * info.d_head, info.n_kv_heads * info.d_head
        start, width = {_QKV_PART[0]: (0, nq), _QKV_PART[1]: (nq, nkv), _QKV_PART[2]: (nq + nkv, nkv)}[template]
        return out[..., start : start + width]
    if info.gated_q and template in (_QKV_PART[0], _QKV_PART[3]):
        per_head = out.unflatten(-1, (info.n_heads, 2 * info.d_head))[..., : info.d_head]
        return per_head.flatten(-2)
    return out


def _read_logits(env: Any, logits_mode: LogitsMode, last: Tensor, box: list[Tensor]) -> None:
    """Inside the trace: save the logits (each row's last real token for ``"last"``)."""
    lg = env.output.logits
    if logits_mode == "last" and lg.shape[1] != 1:
        lg = lg[torch.arange(lg.shape[0], device=lg.device), last][:, None]
    box.append(lg.save())


def _pos_key(positions: Positions | None) -> Any:
    if isinstance(positions, (list, tuple, range)):
        return ("idx", tuple(int(p) for p in positions))
    if isinstance(positions, Tensor):
        return ("idx", tuple(int(p) for p in positions.flatten().tolist()))
    return positions


def _entry(model: Model, name: str, x: Tensor, req: _Request, selections: dict[Any, Selection]) -> CacheEntry:
    _, template = _split(name)
    point = hook_point(name)
    spec = model.resolved.spec
    if template == "vision_encoder.hook_out":
        return CacheEntry(
            x,
            spec.vision_dims[-x.ndim :] if x.ndim <= len(spec.vision_dims) else tuple(f"dim{i}" for i in range(x.ndim)),
            "all",
        )
    if template == "vision_projector.hook_out":
        return CacheEntry(
            x,
            spec.projector_dims[-x.ndim :]
            if x.ndim <= len(spec.projector_dims)
            else tuple(f"dim{i}" for i in range(x.ndim)),
            "all",
        )
    layer = _split(name)[0]
    info = model.resolved.layers[layer] if layer is not None else None
    if template in _PER_QUERY_HEAD and info is not None:
        # batch pos (head_index d_head) -> batch pos head_index d_head (a view; unflatten is ~10x cheaper than einops)
        x = x.unflatten(-1, (info.n_heads, info.d_head))
    elif template in ("blocks.{l}.attn.hook_k", "blocks.{l}.attn.hook_v") and info is not None:
        x = x.unflatten(-1, (info.n_kv_heads, info.d_head))  # batch pos (kv_head_index d_head) -> ...
    sel = selections.get(_pos_key(req.positions)) if req.positions != "all" else None
    dims = point.dims
    if template in _RESULT:
        dims = ("batch", "pos", "head_index", "d_head")  # replaced by _result_entry
    return CacheEntry(
        x,
        dims,
        req.positions if req.positions is not None else "last",
        mask=sel.mask if sel is not None and sel.ragged else None,
        index=sel.index if sel is not None else None,
    )


_PER_QUERY_HEAD = QUERY_HEAD_HOOKS
_PATTERN = "blocks.{l}.attn.hook_pattern"
_RESULT = ("blocks.{l}.attn.hook_result", "blocks.{l}.cross_attn.hook_result")


def _result_entry(model: Model, name: str, z_entry: CacheEntry) -> CacheEntry:
    """Derive ``hook_result`` (per-head contribution to the attention output) from the saved z slice."""
    layer, _ = split_name(name)
    o_proj = model.module(model.resolved.block_path(int(layer or 0), "o_proj"))
    weight: Tensor = o_proj.weight  # type: ignore[assignment]
    n_heads = model.resolved.layers[int(layer or 0)].n_heads
    w: Tensor = rearrange(weight, "d_model (head_index d_head) -> head_index d_head d_model", head_index=n_heads)
    z = z_entry.value
    result: Tensor = einsum(
        z.to(w.dtype).to(w.device),
        w,
        "batch pos head_index d_head, head_index d_head d_model -> batch pos head_index d_model",
    )
    result = result.to(device=z.device, dtype=z.dtype)
    return CacheEntry(result, ("batch", "pos", "head_index", "d_model"), z_entry.positions, z_entry.mask, z_entry.index)


def _model_inputs(model: Model, batch: Batch, logits_mode: LogitsMode) -> dict[str, Any]:
    p = _first_parameter(model)  # one lookup (model.device and model.dtype each walk the parameters)
    device, dtype = p.device, p.dtype
    out: dict[str, Any] = {}
    for k, v in batch.inputs.items():
        if isinstance(v, Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    params = model.forward_params
    if "use_cache" in params:
        out["use_cache"] = False
    if logits_mode != "all" and batch.padding_side == "left" and "logits_to_keep" in params:
        out["logits_to_keep"] = 1
    return out


# ---- fixed cost: cached resolution and plans, plain torch hooks ----------------------------------------
# A trace of a small model spent ~1.2 ms of CPU time on top of the bare forward: resolving names (~45 us), the
# plan (~10 us), nnsight's trace (~0.45 ms empty, ~0.15 ms per module access) and its logits read. Names and plans
# are cached per model; plans whose accesses are all module inputs / outputs run with plain torch hooks.

PLAIN_HOOKS = True
"""Run plans of plain module inputs / outputs with torch hooks instead of an nnsight trace (same values; False
forces nnsight, which tests compare against)."""

_CACHE_SIZE = 256
_CACHES: "weakref.WeakKeyDictionary[Model, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _model_cache(model: Model) -> dict[Any, Any]:
    """The resolution / plan cache of ``model``, emptied when its resolved spec is replaced or it grows large."""
    cache = _CACHES.get(model)
    if cache is None or cache.get("resolved") is not model.resolved or len(cache) > _CACHE_SIZE:
        cache = _CACHES[model] = {"resolved": model.resolved}
    return cache


def _resolved(model: Model, names: str | Sequence[str]) -> list[str]:
    """``resolve(names)`` for ``model``, cached per model."""
    key = ("names", names if isinstance(names, str) else tuple(names))
    cache = _model_cache(model)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = tuple(resolve(names, model.n_layers, model.multimodal, model.resolved.kinds))
    return list(hit)


def _first_parameter(model: Model) -> Tensor:
    """The HF model's first parameter, cached per model (its device and dtype follow ``.to()``, which keeps the
    parameter objects)."""
    cache = _model_cache(model)
    p = cache.get("parameter")
    if p is None:
        p = cache["parameter"] = next(model.hf.parameters())
    return p


def _select(batch: Batch, positions: Positions) -> Selection:
    """``select_positions(batch, positions)``; ``"last"`` read straight from the batch (its cost was ~70 us)."""
    if positions == "last":
        return Selection(batch.last_index[:, None].clone(), torch.ones(batch.size, 1, dtype=torch.bool), False)
    return select_positions(batch, positions)


def _module(model: Model, path: str) -> Any:
    """``model.module(path)``, cached per model."""
    cache = _model_cache(model)
    module = cache.get(("module", path))
    if module is None:
        module = cache["module", path] = model.module(path)
    return module


def _cached_plan(model: Model, requests: list[_Request]) -> list[_Read]:
    """``_plan(model, requests)`` (no edits), cached per model, hook names and positions; reads are not mutated."""
    key = ("plan", tuple((tuple(r.names), _pos_key(r.positions)) for r in requests))
    cache = _model_cache(model)
    plan = cache.get(key)
    if plan is None:
        plan = cache[key] = _plan(model, requests)
    return plan


_split = functools.lru_cache(maxsize=4096)(split_name)


class _Stop(Exception):
    """Raised by the last planned hook of a trace with ``stop_at_layer``: the forward pass ends there."""


def _run_hooks(
    model: Model,
    plan: list[_Read],
    inputs: dict[str, Any],
    serve: _Server,
    logits_mode: LogitsMode,
    stop_at_layer: int | None,
    last: Tensor,
    logits_box: list[Tensor],
) -> None:
    """Run the forward pass with a torch hook per planned access (each serves the module's first call only, as
    an nnsight trace reads it); stop after the last access with ``stop_at_layer``."""
    done: set[int] = set()
    final = len(plan) - 1

    def serve_once(i: int, value: Any) -> Any:
        if i in done:
            return value
        done.add(i)
        value = serve(plan[i], value, save=False)
        if stop_at_layer is not None and i == final:
            raise _Stop
        return value

    def pre_hook(i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            value = args[0] if args else next(iter(kwargs.values()))
            edited = serve_once(i, value)
            if edited is value:
                return None
            if args:
                return (edited, *args[1:]), kwargs
            return args, {**kwargs, next(iter(kwargs)): edited}

        return hook

    def post_hook(i: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            serve_once(i, output)

        return hook

    handles = []
    try:
        for i, read in enumerate(plan):
            module = _module(model, read.path)
            if read.kind == "input":
                handles.append(module.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(post_hook(i)))
        with torch.no_grad():
            try:
                out = model.hf(**inputs)
            except _Stop:
                out = None
    finally:
        for h in handles:
            h.remove()
    missed = [plan[i] for i in range(len(plan)) if i not in done and plan[i].saves]
    if missed:
        raise HookNotAvailableError(
            f"{missed[0].saves[0][0]!r} was never computed: the module {missed[0].path!r} was not called in this "
            "forward pass."
        )
    if out is not None and logits_mode is not None:
        lg = out.logits
        if logits_mode == "last" and lg.shape[1] != 1:
            lg = lg[torch.arange(lg.shape[0], device=lg.device), last][:, None]
        logits_box.append(lg)


__all__ = ["Handle", "Trace", "run_with_cache", "trace"]
