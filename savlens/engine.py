"""The execution engine of :func:`savlens.trace`: a trace's requests become a plan of module reads in execution
order, run in one forward pass (plain torch hooks when every read is a module input / output, else an nnsight
trace), served by slicing positions inside the hook and applying edits; attention patterns are captured by
:mod:`savlens.attention` during the same pass. Resolved names, plans and module lookups are cached per model.

The user API (:class:`savlens.Trace`, :func:`savlens.trace`) is in :mod:`savlens.tracing`.
"""

import functools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import einsum, rearrange
from torch import Tensor

from savlens.attention import PatternCapture
from savlens.cache import CacheEntry
from savlens.errors import HookNotAvailableError, ModelSpecError
from savlens.inputs import Batch
from savlens.interventions import Edit, apply_edits
from savlens.loading import Model
from savlens.models import get_path
from savlens.names import QUERY_HEAD_HOOKS, hook_point, resolve, split_name
from savlens.positions import Positions, Selection, select_positions, take_positions

LogitsMode = Literal["last", "all"] | None


@dataclass
class Request:
    """One :meth:`savlens.Trace.save` call: concrete hook names, positions, where the values go."""

    names: list[str]
    positions: Positions | None
    device: torch.device | str | None
    dtype: torch.dtype | None


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


def _plan(model: Model, requests: list[Request], edits: "Sequence[Edit]" = ()) -> list[_Read]:
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


def execute(
    model: Model,
    batch: Batch,
    requests: list[Request],
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
    inputs = model_inputs(model, batch, logits_mode)
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
    model: Model, requests: list[Request], selections: dict[Any, Selection]
) -> dict[Any, PatternCapture]:
    """One :class:`PatternCapture` per distinct positions of the ``hook_pattern`` saves (every head of each layer)."""
    layers: dict[Any, dict[int, None]] = {}
    for req in requests:
        for name in req.names:
            layer, template = _split(name)
            if template == _PATTERN and layer is not None:
                layers.setdefault(_pos_key(req.positions), {})[layer] = None
    return {key: PatternCapture(model, ls, selections[key]) for key, ls in layers.items()}


def _fill_patterns(captures: dict[Any, PatternCapture], requests: list[Request], raw: list[dict[str, Tensor]]) -> None:
    if not captures:  # no hook_pattern saved (the common trace): nothing to walk
        return
    for i, req in enumerate(requests):
        for name in req.names:
            layer, template = _split(name)
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
        requests: list[Request],
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


def _entry(model: Model, name: str, x: Tensor, req: Request, selections: dict[Any, Selection]) -> CacheEntry:
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


def model_inputs(model: Model, batch: Batch, logits_mode: LogitsMode) -> dict[str, Any]:
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
CACHES: "weakref.WeakKeyDictionary[Model, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _model_cache(model: Model) -> dict[Any, Any]:
    """The resolution / plan cache of ``model``, emptied when its resolved spec is replaced or it grows large."""
    cache = CACHES.get(model)
    if cache is None or cache.get("resolved") is not model.resolved or len(cache) > _CACHE_SIZE:
        cache = CACHES[model] = {"resolved": model.resolved}
    return cache


def resolve_cached(model: Model, names: str | Sequence[str]) -> list[str]:
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


def _cached_plan(model: Model, requests: list[Request]) -> list[_Read]:
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
