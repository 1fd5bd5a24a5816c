"""Spec inference: read a :class:`ModelSpec` off an HF model's module tree and config.

For any model whose decoder layers use softmax attention with separate q / k / v / output projections,
:func:`infer_spec` finds, by role:

- the language model's decoder layer list: a ``ModuleList`` outside the vision tower whose length is the text
  config's ``num_hidden_layers`` and whose layers hold an attention module with q / k / v / output projections;
- in a layer: the attention module (``self_attn``, ``attention``, ``attn``, ...), its output projection
  (``o_proj``, ``out_proj``, ``dense``, ...) and the MLP (``mlp``, ``feed_forward``, ...);
- the final norm (a norm beside the layer list: ``norm``, ``final_layernorm``, ``embedding_norm``, ...), the
  unembedding (``get_output_embeddings()``);
- the vision tower (``vision_tower``, ``visual``, ``vision_model``, ...; its last block is the vision hook) and
  the projector (``multi_modal_projector``, ``connector``, ``aligner``, the ``merger`` inside ``visual``, ...);
- the image-token id (``image_token_id``, ``image_token_index``, ``image_patch_id``, or the vision
  sub-config's) and the position scheme (multimodal RoPE when the model builds it with ``get_rope_index`` or the
  text config has an ``mrope_section``; otherwise 1-D positions from the attention mask).

What cannot be found raises :class:`~savlens.errors.ModelSpecError` naming the role, what was tried, and how to
register a spec by hand.
"""

import dataclasses
import inspect
from typing import Any

from torch import nn

from savlens.errors import ModelSpecError
from savlens.models.families import FAMILY_FACTS
from savlens.models.spec import LayerSpec, ModelSpec

ATTN_NAMES = ("self_attn", "attention", "attn", "self_attention", "mixer")
Q_NAMES = ("q_proj", "query", "q", "wq")
K_NAMES = ("k_proj", "key", "k", "wk")
V_NAMES = ("v_proj", "value", "v", "wv")
QKV_NAMES = ("qkv_proj", "Wqkv", "query_key_value", "c_attn", "qkv")
O_NAMES = ("o_proj", "out_proj", "dense", "o", "wo", "proj", "c_proj")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mlp_block")
NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "embedding_norm", "norm_f")
VISION_NAMES = (
    "vision_tower",
    "visual",
    "vision_model",
    "vision_encoder",
    "vision_backbone",
    "vision",
    "vit",
    "image_encoder",
    "img_processor",
)
PROJECTOR_NAMES = (
    "multi_modal_projector",
    "mm_projector",
    "connector",
    "aligner",
    "embed_vision",
    "merger",
    "visual_projection",
    "vision_projection",
    "projector",
    "image_projector",
    "vision_embed_tokens",
    "img_projection_down",
)
IMAGE_TOKEN_ATTRS = (
    "image_token_id",
    "image_token_index",
    "image_patch_id",
    "vision_config.image_token_id",
    "image_token_ids",
)
VIDEO_TOKEN_ATTRS = ("video_token_id", "video_token_index")
TEXT_CONFIG_ATTRS = ("text_config", "llm_config", "language_config", "text_model_config")

_REGISTER_HINT = (
    "Describe the model by hand: savlens.wrap(model, processor, spec=savlens.models.ModelSpec(...)) or "
    "savlens.models.register(spec) (docs: models.md, 'Adding a model')."
)


def _child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is a direct child module of ``module``."""
    kids = dict(module.named_children())
    return next((n for n in names if isinstance(kids.get(n), nn.Module)), None)


def _attention_of(layer: nn.Module) -> tuple[str, str, str, str, str] | None:
    """(attn, q, k, v, o) names of the softmax attention in ``layer`` (q = k = v for a fused projection), or
    None."""
    for attn_name in ATTN_NAMES:
        attn = dict(layer.named_children()).get(attn_name)
        if attn is None:
            continue
        q, k, v, o = (_child(attn, names) for names in (Q_NAMES, K_NAMES, V_NAMES, O_NAMES))
        if q and k and v and o:
            return attn_name, q, k, v, o
        qkv = _child(attn, QKV_NAMES)
        if qkv and o:
            return attn_name, qkv, qkv, qkv, o
    return None


CROSS_NAMES = ("cross_attn", "cross_attention", "encoder_attn")
LINEAR_NAMES = ("linear_attn", "linear_attention", "mamba", "ssm")
CONV_NAMES = ("conv", "short_conv")


def _layer_of(layer: nn.Module, n_heads: int, default_d_head: int = 0) -> LayerSpec | None:
    """The kind, paths and sizes of one decoder layer, or None if its token mixer is not recognised."""
    att = _attention_of(layer)
    kind: str = "attention"
    if att is None:
        for name in CROSS_NAMES:
            sub = dict(layer.named_children()).get(name)
            if sub is None:
                continue
            q, k, v, o = (_child(sub, names) for names in (Q_NAMES, K_NAMES, V_NAMES, O_NAMES))
            if q and k and v and o:
                att, kind = (name, q, k, v, o), "cross_attention"
                break
    if att is not None:
        attn, q, k, v, o = att
        o_mod = layer.get_submodule(f"{attn}.{o}")
        q_out = getattr(layer.get_submodule(f"{attn}.{q}"), "out_features", 0)
        # a module without in_features (not a Linear) gets the config's width; validation then names the mismatch
        d_head = int(getattr(o_mod, "in_features", 0) or 0) // n_heads or default_d_head
        if d_head <= 0:
            return None
        fused = q == k == v
        if fused:
            n_kv = (q_out - n_heads * d_head) // (2 * d_head)
        else:
            n_kv = int(getattr(layer.get_submodule(f"{attn}.{k}"), "out_features", 0)) // d_head
        return LayerSpec(
            kind,  # type: ignore[arg-type]
            attn,
            f"{attn}.{q}",
            f"{attn}.{k}",
            f"{attn}.{v}",
            f"{attn}.{o}",
            n_heads,
            n_kv,
            d_head,
            fused_qkv=fused,
            gated_q=not fused and q_out == 2 * n_heads * d_head,
        )
    for names, other in ((LINEAR_NAMES, "linear_attention"), (CONV_NAMES, "convolution")):
        mixer = _child(layer, names)
        if mixer is not None:
            out = _child(layer.get_submodule(mixer), O_NAMES)
            return LayerSpec(other, mixer, None, None, None, f"{mixer}.{out}" if out else mixer, 0, 0, 0)  # type: ignore[arg-type]
    return None


def text_config_attr(config: Any) -> str | None:
    """The attribute of ``config`` holding the language model's sub-config (None: the config itself)."""
    for attr in TEXT_CONFIG_ATTRS:
        sub = getattr(config, attr, None)
        if sub is not None and hasattr(sub, "num_hidden_layers"):
            return attr
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            sub = get(decoder=True)
        except TypeError:
            sub = get()
        if sub is not None and sub is not config:
            for name, value in vars(config).items():
                if value is sub:
                    return name
    return None


def _get_dotted(obj: Any, path: str) -> Any:
    for seg in path.split("."):
        obj = getattr(obj, seg, None)
        if obj is None:
            return None
    return obj


def _vision_roots(model: nn.Module) -> list[str]:
    roots: list[str] = []
    for name, _ in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in VISION_NAMES and not any(name.startswith(r + ".") for r in roots):
            roots.append(name)
    return roots


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r + ".") for r in roots)


def _find_blocks(
    model: nn.Module, n_layers: int, n_heads: int, vision: list[str], default_d_head: int
) -> tuple[str, tuple[LayerSpec, ...]]:
    """The path of the decoder layer list and each layer's :class:`LayerSpec`."""
    candidates: list[tuple[str, tuple[LayerSpec, ...]]] = []
    seen: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not name or _inside(name, vision):
            continue
        seen.append(f"{name} ({len(mod)})")
        if len(mod) != n_layers:
            continue
        infos = [_layer_of(layer, n_heads, default_d_head) for layer in mod]
        if all(i is not None for i in infos) and any(i.kind == "attention" for i in infos):  # type: ignore[union-attr]
            candidates.append((name, tuple(infos)))  # type: ignore[arg-type]
    if not candidates:
        raise ModelSpecError(
            f"cannot infer the decoder layers of {type(model).__name__}: no ModuleList outside the vision tower "
            f"has num_hidden_layers={n_layers} layers that each hold an attention module ({'/'.join(ATTN_NAMES)}) "
            f"with q/k/v projections (or a fused {'/'.join(QKV_NAMES)}) and an output projection "
            f"({'/'.join(O_NAMES)}); lists seen: {', '.join(seen) or 'none'}. Other layers may be linear attention "
            f"({'/'.join(LINEAR_NAMES)}), convolution ({'/'.join(CONV_NAMES)}) or cross-attention, but at least one "
            f"must be softmax attention. {_REGISTER_HINT}"
        )
    if len(candidates) > 1:
        # nested wrappers expose the same list twice only under one name; distinct lists are ambiguous
        raise ModelSpecError(
            f"cannot infer the decoder layers of {type(model).__name__}: several lists qualify "
            f"({[name for name, _ in candidates]}). "
            f"{_REGISTER_HINT}"
        )
    return candidates[0]


def _find_final_norm(model: nn.Module, blocks: str) -> str:
    parent_path = blocks.rsplit(".", 1)[0] if "." in blocks else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    name = _child(parent, NORM_NAMES)
    if name is None:
        raise ModelSpecError(
            f"cannot infer the final norm of {type(model).__name__}: {parent_path or 'the model'} (which holds the "
            f"decoder layers) has none of {list(NORM_NAMES)}; children: {[n for n, _ in parent.named_children()]}. "
            f"{_REGISTER_HINT}"
        )
    return f"{parent_path}.{name}" if parent_path else name


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((name for name, mod in model.named_modules() if mod is target), None)


def _find_unembed(model: nn.Module) -> str:
    get = getattr(model, "get_output_embeddings", None)
    path = _path_of(model, get() if callable(get) else None)
    if path is None:
        path = _child(model, ("lm_head",))
    if path is None:
        raise ModelSpecError(
            f"cannot infer the unembedding of {type(model).__name__}: get_output_embeddings() gives no submodule "
            f"and there is no lm_head. Load the ...ForCausalLM / ...ForConditionalGeneration class. {_REGISTER_HINT}"
        )
    return path


def _find_projector(model: nn.Module, blocks: str) -> str | None:
    best: str | None = None
    for name, _ in model.named_modules():
        if not name or name.rsplit(".", 1)[-1] not in PROJECTOR_NAMES or name.startswith(blocks + "."):
            continue
        if best is None or name.count(".") < best.count("."):
            best = name
    return best


#: norms applied to a sublayer's output before the residual addition (a "sandwich" block)
POST_NORM_NAMES = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_self_attn_layernorm", "post_attn_norm")

BLOCK_LIST_NAMES = ("layers", "blocks", "layer", "block", "resblocks")


def _vision_hook(model: nn.Module, root: str) -> str:
    """The last block of the vision tower: the last element of its last block list (``layers``, ``blocks``, ...;
    in module order, so a CNN's last stage), else of its longest list, else the tower itself."""
    tower = model.get_submodule(root)
    named, longest, best_len = None, None, 0
    for name, mod in tower.named_modules():
        if not isinstance(mod, nn.ModuleList | nn.Sequential) or not len(mod):
            continue
        if any(part in name.split(".") for part in ("merger", "projector", "head")):
            continue
        if name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES:
            named = (name, len(mod))
        if len(mod) > best_len:
            longest, best_len = (name, len(mod)), len(mod)
    found = named or longest
    if found is None:
        return root
    return f"{root}.{found[0]}.{found[1] - 1}"


def _video_token_attr(config: Any) -> str | None:
    return _image_token_attr(config, VIDEO_TOKEN_ATTRS)


def _image_token_attr(config: Any, attrs: tuple[str, ...] = IMAGE_TOKEN_ATTRS) -> str | None:
    for attr in attrs:
        v = _get_dotted(config, attr)
        if isinstance(v, int) and not isinstance(v, bool):
            return attr
    return None


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _uses_mrope(model: nn.Module, text_cfg: Any) -> bool:
    rope = getattr(text_cfg, "rope_parameters", None) or getattr(text_cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and ("mrope_section" in rope or "mrope_interleaved" in rope):
        return True
    return any(callable(getattr(m, "get_rope_index", None)) for m in (model, getattr(model, "model", None)))


def infer_spec(model: nn.Module) -> ModelSpec:
    """Infer the spec of ``model`` from its module tree and config (see the module docstring).

    Raises:
        ModelSpecError: a role cannot be found (the message names it, what was tried, and how to register a
            spec by hand).
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ModelSpecError(
            f"cannot infer a spec for {type(model).__name__}: it has no .config to read sizes from. {_REGISTER_HINT}"
        )
    text_attr = text_config_attr(config)
    text_cfg = getattr(config, text_attr) if text_attr else config
    n_layers = getattr(text_cfg, "num_hidden_layers", None)
    if not isinstance(n_layers, int):
        raise ModelSpecError(
            f"cannot infer a spec for {type(model).__name__}: its text config ({type(text_cfg).__name__}) has no "
            f"num_hidden_layers. {_REGISTER_HINT}"
        )
    n_heads = getattr(text_cfg, "num_attention_heads", None)
    if not isinstance(n_heads, int):
        raise ModelSpecError(
            f"cannot infer a spec for {type(model).__name__}: its text config ({type(text_cfg).__name__}) has no "
            f"num_attention_heads. {_REGISTER_HINT}"
        )
    vision = _vision_roots(model)
    hidden = getattr(text_cfg, "hidden_size", 0)
    default_d_head = int(hidden) // n_heads if isinstance(hidden, int) else 0
    blocks, infos = _find_blocks(model, n_layers, n_heads, vision, default_d_head)
    first = next(i for i in infos if i.kind == "attention")
    attn, q, k, v, o = first.mixer, first.q_proj, first.k_proj, first.v_proj, first.o_proj
    uniform = len(set(infos)) == 1
    layer0 = model.get_submodule(f"{blocks}.0")
    mlp = _child(layer0, MLP_NAMES)
    if mlp is None:
        raise ModelSpecError(
            f"cannot infer the MLP of {type(model).__name__}'s decoder layers ({blocks}.0 has none of "
            f"{list(MLP_NAMES)}; children: {[n for n, _ in layer0.named_children()]}). {_REGISTER_HINT}"
        )
    final_norm = _find_final_norm(model, blocks)
    unembed = _find_unembed(model)
    multimodal = hasattr(config, "vision_config") or bool(vision)
    projector = _find_projector(model, blocks) if multimodal else None
    image_attr = _image_token_attr(config) if multimodal else None
    video_attr = _video_token_attr(config) if multimodal else None
    if multimodal and (projector is None or image_attr is None or not vision):
        missing = [
            what
            for what, found in (
                (f"vision tower ({'/'.join(VISION_NAMES)})", vision),
                (f"projector ({'/'.join(PROJECTOR_NAMES)})", projector),
                (f"image-token id in the config ({'/'.join(IMAGE_TOKEN_ATTRS)})", image_attr),
            )
            if not found
        ]
        raise ModelSpecError(
            f"cannot infer the vision side of {type(model).__name__} (its config has a vision_config): found "
            f"no {'; no '.join(missing)}. {_REGISTER_HINT}"
        )
    params = _forward_params(model)
    packed = "image_grid_thw" in params  # Qwen-style towers pack every image's patches on one axis
    family = str(getattr(config, "model_type", "") or type(model).__name__)
    spec = ModelSpec(
        family=family,
        classes=(type(model).__name__,),
        blocks=(blocks,),
        final_norm=(final_norm,),
        unembed=(unembed,),
        attn=attn,
        q_proj=str(q),
        k_proj=str(k),
        v_proj=str(v),
        o_proj=o,
        mlp=mlp,
        vision_encoder=(_vision_hook(model, vision[0]),) if multimodal else (),
        vision_projector=(projector,) if projector else (),
        text_config=text_attr,
        image_token_attr=(image_attr,) if image_attr else (),
        video_token_attr=(video_attr,) if video_attr else (),
        positions="mrope" if _uses_mrope(model, text_cfg) else "mask_cumsum",
        vision_dims=("vision_pos", "d_vision") if packed else ("vision_batch", "vision_pos", "d_vision"),
        projector_dims=("image_token", "d_model") if packed else ("vision_batch", "vision_pos", "d_model"),
        nested_images="batch_num_images" in params,
        fused_qkv=first.fused_qkv,
        post_norms=_child(layer0, POST_NORM_NAMES) is not None,
        layers=None if uniform and not first.gated_q else infos,  # type: ignore[arg-type]
    )
    return dataclasses.replace(spec, **FAMILY_FACTS.get(family, {}))  # type: ignore[arg-type]
