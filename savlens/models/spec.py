"""`ModelSpec`: the declarative description of one model family, and its validation against a model.

A spec names, for each role, the module path(s) where that role lives (several candidates are allowed,
since transformers moves modules between versions; the first that exists wins) and where the sizes live
in the config. Paths are dotted attribute paths from the HF model; integer segments index a
``ModuleList`` (``-1`` is the last element).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from savlens.errors import ModelSpecError

PositionRule = Literal["mask_cumsum", "mrope"]
LayerKind = Literal["attention", "linear_attention", "convolution", "cross_attention"]


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: its kind, the paths of its token mixer's modules (relative to the layer) and its sizes.

    Attributes:
        kind: ``"attention"`` (softmax self-attention heads), ``"cross_attention"`` (heads whose keys and values
            come from the image), ``"linear_attention"`` (e.g. Gated DeltaNet) or ``"convolution"`` (a short
            convolution); only the first two have heads that savlens reads.
        mixer: the token mixer (``self_attn``, ``cross_attn``, ``linear_attn``, ``conv``).
        q_proj, k_proj, v_proj: projections (None on linear-attention and convolution layers; the same fused
            module three times when ``fused_qkv``).
        o_proj: the mixer's output projection (``hook_z`` is its input on attention layers; ``hook_attn_out``
            its output on every layer).
        n_heads, n_kv_heads, d_head: the heads of this layer (0 where it has none).
        fused_qkv: q, k and v come out of one projection, in that order.
        gated_q: ``q_proj`` gives the query and an output gate per head (``2 * d_head`` per head, query first).
    """

    kind: LayerKind
    mixer: str
    q_proj: str | None
    k_proj: str | None
    v_proj: str | None
    o_proj: str
    n_heads: int
    n_kv_heads: int
    d_head: int
    fused_qkv: bool = False
    gated_q: bool = False

    @property
    def has_heads(self) -> bool:
        return self.kind in ("attention", "cross_attention")


@dataclass(frozen=True)
class Sizes:
    """The sizes of a model's language part, read from its config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_vocab: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """Return the KV head that query head ``head`` reads (HF ``repeat_kv`` layout)."""
        return head // self.group_size


@dataclass(frozen=True)
class ModelSpec:
    """Where each role lives in one model family, and how to read its sizes.

    Attributes:
        family: short family name (``"llama"``, ``"llava_onevision"``, ...).
        classes: HF model class names this spec serves (matched on ``type(model).__name__``).
        blocks: candidate paths of the ``ModuleList`` of decoder layers.
        attn, q_proj, k_proj, v_proj, o_proj, mlp: paths relative to one decoder layer.
        final_norm, unembed: candidate paths of the final norm and the unembedding.
        vision_encoder: candidate paths of the vision tower's last block (empty for text LMs).
        vision_projector: candidate paths of the projector into the LM's embedding space.
        text_config: attribute of the config that holds the LM sizes (None: the config itself).
        image_token_attr: config attribute(s) holding the image-token id.
        video_token_attr: config attribute(s) holding the video-token id (empty: the family has none, or writes
            video frames with the image token).
        positions: ``"mask_cumsum"`` (savlens passes ``position_ids = cumsum(mask) - 1``) or ``"mrope"``
            (the model builds multimodal rotary positions itself from ``mm_token_type_ids``; savlens passes
            mask-derived positions only for text-only batches).
        vision_dims / projector_dims: the dim words of the vision hooks in this family.
        image_item: the chat-message content item that stands for one image.
        nested_images: the processor takes images as one list per image-bearing row (LLaVA-OV: a flat
            list would treat the images of a multi-image row as separate single images).
        fused_qkv: ``q_proj``, ``k_proj`` and ``v_proj`` name one fused projection (Phi-3's ``qkv_proj``) whose
            output is q, k and v concatenated; ``hook_q/k/v`` are split out of it by the config's sizes.
        post_norms: the block normalises each sublayer's output before adding it to the residual (Gemma 2 / 3,
            GLM-4V); ``hook_attn_out`` / ``hook_mlp_out`` stay the outputs of ``o_proj`` / the MLP, so
            ``resid_pre + attn_out + mlp_out != resid_post`` there.
        position_offset: the first position id of a sequence (PaliGemma counts from 1; 0 elsewhere).
        text_rows_with_images: the processor accepts a text-only row in a batch with images (PaliGemma's does
            not: it splices its BOS into the text of such a row).
        layers: per-layer kinds, paths and sizes, for models whose layers differ (linear attention, convolution,
            cross-attention, per-layer head sizes); None: every layer is softmax attention with the paths
            ``attn`` / ``q_proj`` / ... and the config's sizes.
        videos_with_images: the model takes images and videos in one forward (GLM-4V, Molmo 2 and SmolVLM do not,
            in transformers 5.25: their video frames share the image token, or the processor drops the images).
        raw_image_text: the text for one image in a raw (``chat=False``) prompt (None: what the chat template
            writes for an image item).
        matches: optional extra predicate ``model -> bool`` (for user specs of custom modules).
    """

    family: str
    classes: tuple[str, ...]
    blocks: tuple[str, ...]
    final_norm: tuple[str, ...]
    unembed: tuple[str, ...] = ("lm_head",)
    attn: str = "self_attn"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    mlp: str = "mlp"
    vision_encoder: tuple[str, ...] = ()
    vision_projector: tuple[str, ...] = ()
    text_config: str | None = None
    image_token_attr: tuple[str, ...] = ()
    video_token_attr: tuple[str, ...] = ()
    positions: PositionRule = "mask_cumsum"
    vision_dims: tuple[str, ...] = ("vision_batch", "vision_pos", "d_vision")
    projector_dims: tuple[str, ...] = ("vision_batch", "vision_pos", "d_model")
    image_item: dict[str, Any] = field(default_factory=lambda: {"type": "image"})
    nested_images: bool = False
    fused_qkv: bool = False
    post_norms: bool = False
    position_offset: int = 0
    text_rows_with_images: bool = True
    videos_with_images: bool = True
    raw_image_text: str | None = None
    layers: tuple[LayerSpec, ...] | None = None
    matches: Callable[[nn.Module], bool] | None = None

    @property
    def multimodal(self) -> bool:
        return bool(self.vision_projector)

    # ---- config ----------------------------------------------------------------------------------
    def lm_config(self, config: Any) -> Any:
        """Return the (sub-)config that holds the language model's sizes."""
        return getattr(config, self.text_config) if self.text_config else config

    def sizes(self, config: Any) -> Sizes:
        """Read the sizes from an HF config."""
        c = self.lm_config(config)
        try:
            n_heads = int(c.num_attention_heads)
            d_model = int(c.hidden_size)
            try:
                d_head = getattr(c, "head_dim", None) or d_model // n_heads
            except RuntimeError:  # Gemma 4: head_dim differs by layer; the per-layer sizes hold it
                d_head = d_model // n_heads
            n_kv = getattr(c, "num_key_value_heads", None) or n_heads
            return Sizes(
                n_layers=int(c.num_hidden_layers),
                n_heads=n_heads,
                n_kv_heads=int(n_kv),
                d_head=int(d_head),
                d_model=d_model,
                d_vocab=int(c.vocab_size),
            )
        except AttributeError as e:
            raise ModelSpecError(
                f"spec {self.family!r}: the config ({type(c).__name__}) lacks a size field ({e}); "
                "give text_config= the sub-config that holds num_hidden_layers / num_attention_heads."
            ) from None

    def image_token_id(self, config: Any) -> int | None:
        """The image-token id: the first of :attr:`image_token_attr` (dotted paths allowed) set in ``config``."""
        return self._token_id(config, self.image_token_attr)

    def video_token_id(self, config: Any) -> int | None:
        """The video-token id: the first of :attr:`video_token_attr` set in ``config`` (None: no such token)."""
        return self._token_id(config, self.video_token_attr)

    @staticmethod
    def _token_id(config: Any, attrs: tuple[str, ...]) -> int | None:
        for attr in attrs:
            v: Any = config
            for seg in attr.split("."):
                v = getattr(v, seg, None)
            if v is not None:
                return int(v)
        return None


def get_path(root: Any, path: str) -> Any:
    """Follow a dotted path from ``root`` (a module or an nnsight envoy); integer segments index sequences.

    Raises AttributeError."""
    obj: Any = root
    for seg in path.split("."):
        if seg.lstrip("-").isdigit():
            try:
                obj = obj[int(seg)]
            except (IndexError, TypeError, KeyError):
                raise AttributeError(f"no item {seg} at {path!r}") from None
        else:
            obj = getattr(obj, seg)
    return obj


def first_path(root: nn.Module, candidates: tuple[str, ...], role: str, family: str) -> str:
    """Return the first candidate path that exists under ``root``, or raise :class:`ModelSpecError`."""
    for p in candidates:
        try:
            target = get_path(root, p)
        except AttributeError:
            continue
        if "-" in p:  # canonicalise negative indices to the module's own name
            return next(name for name, mod in root.named_modules() if mod is target)
        return p
    raise ModelSpecError(
        f"spec {family!r}: no module for role {role!r} in {type(root).__name__}; tried {list(candidates)}. "
        "The spec does not match this model: register a spec with the right paths (savlens.models.register)."
    )


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec bound to one model: concrete paths, sizes and the image-token id."""

    spec: ModelSpec
    sizes: Sizes
    blocks: str
    final_norm: str
    unembed: str
    vision_encoder: str | None
    vision_projector: str | None
    image_token_id: int | None
    source: str = "built-in"
    layers: tuple[LayerSpec, ...] = ()
    video_token_id: int | None = None

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def multimodal(self) -> bool:
        return self.vision_projector is not None

    def block_path(self, layer: int, role: str = "") -> str:
        """Return the path of ``role`` (``"attn"``, ``"q_proj"``, ``"o_proj"``, ``"mlp"``, ..., or "" for the
        block) in ``layer``."""
        base = f"{self.blocks}.{layer}"
        if not role:
            return base
        if role == "mlp":
            return f"{base}.{self.spec.mlp}"
        info = self.layers[layer]
        rel = info.mixer if role == "attn" else getattr(info, role)
        if rel is None:
            raise ModelSpecError(f"layer {layer} ({info.kind.replace('_', ' ')}) has no {role}.")
        return f"{base}.{rel}"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of each decoder layer."""
        return tuple(info.kind for info in self.layers)

    @property
    def uniform(self) -> bool:
        """Every layer is softmax attention with the same head sizes."""
        return len({(i.kind, i.n_heads, i.n_kv_heads, i.d_head) for i in self.layers}) == 1 and all(
            i.kind == "attention" for i in self.layers
        )


def resolve_spec(spec: ModelSpec, model: nn.Module, *, source: str = "built-in") -> ResolvedSpec:
    """Bind ``spec`` to ``model`` and check that they agree (paths exist, sizes match the modules).

    Raises:
        ModelSpecError: a role's module is missing, or a size in the config disagrees with the weights.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ModelSpecError(f"spec {spec.family!r}: {type(model).__name__} has no .config to read sizes from.")
    sizes = spec.sizes(config)
    blocks = first_path(model, spec.blocks, "blocks", spec.family)
    layers = get_path(model, blocks)
    problems: list[str] = []
    if len(layers) != sizes.n_layers:
        problems.append(f"config says n_layers={sizes.n_layers} but {blocks} has {len(layers)} blocks")
    infos = spec.layers or tuple(_uniform_layer(spec, sizes) for _ in range(len(layers)))
    if len(infos) != len(layers):
        problems.append(f"the spec describes {len(infos)} layers but {blocks} has {len(layers)}")
        infos = ()
    for layer, info in enumerate(infos):
        roles = {"attn": info.mixer, "o_proj": info.o_proj, "mlp": spec.mlp}
        roles.update({r: getattr(info, r) for r in ("q_proj", "k_proj", "v_proj") if getattr(info, r)})
        for role, rel in roles.items():
            try:
                get_path(layers[layer], rel)
            except AttributeError:
                raise ModelSpecError(
                    f"spec {spec.family!r}: layer {layer} has no module {rel!r} (role {role!r}); "
                    "the spec does not match this model. savlens reads heads at the attention output projection: "
                    "pass savlens.wrap a spec= with this model's module paths (docs: adding a model)."
                ) from None
        problems += _size_problems(layer, layers[layer], info, sizes.d_model)
        if problems:
            break
    if problems:
        raise ModelSpecError(
            f"spec {spec.family!r} does not match {type(model).__name__}: "
            + "; ".join(problems)
            + ". Pass savlens.wrap a spec= that matches this model (docs: adding a model)."
        )
    final_norm = first_path(model, spec.final_norm, "final_norm", spec.family)
    unembed = first_path(model, spec.unembed, "unembed", spec.family)
    venc = first_path(model, spec.vision_encoder, "vision_encoder", spec.family) if spec.vision_encoder else None
    vproj = first_path(model, spec.vision_projector, "vision_projector", spec.family) if spec.vision_projector else None
    image_token_id = spec.image_token_id(config)
    if spec.multimodal and image_token_id is None:
        raise ModelSpecError(
            f"spec {spec.family!r}: the config has none of {list(spec.image_token_attr)} (the image-token id)."
        )
    video_token_id = spec.video_token_id(config) if spec.multimodal else None
    return ResolvedSpec(
        spec, sizes, blocks, final_norm, unembed, venc, vproj, image_token_id, source, infos, video_token_id
    )


def _uniform_layer(spec: ModelSpec, sizes: Sizes) -> LayerSpec:
    return LayerSpec(
        "attention",
        spec.attn,
        spec.q_proj,
        spec.k_proj,
        spec.v_proj,
        spec.o_proj,
        sizes.n_heads,
        sizes.n_kv_heads,
        sizes.d_head,
        fused_qkv=spec.fused_qkv,
    )


def _size_problems(layer: int, block: nn.Module, info: LayerSpec, d_model: int) -> list[str]:
    """Disagreements between a layer's projection sizes and its declared heads."""
    if not info.has_heads:
        return []
    if info.n_kv_heads <= 0 or info.n_heads % info.n_kv_heads:
        return [f"layer {layer}: n_heads={info.n_heads} is not a multiple of n_kv_heads={info.n_kv_heads}"]
    nq, nkv = info.n_heads * info.d_head, info.n_kv_heads * info.d_head
    want: dict[str, tuple[int, int]] = {
        "o_proj": (nq, d_model),
        "q_proj": (d_model, nq * (2 if info.gated_q else 1)),
        "k_proj": (d_model, nkv),
        "v_proj": (d_model, nkv),
    }
    if info.fused_qkv:  # one projection: q, then k, then v along the output features
        del want["k_proj"], want["v_proj"]
        want["q_proj"] = (d_model, nq + 2 * nkv)
    out = []
    for role, (fin, fout) in want.items():
        if info.kind == "cross_attention" and role in ("k_proj", "v_proj"):
            fin = getattr(get_path(block, getattr(info, role)), "in_features", fin)  # keys / values from the image
        mod = get_path(block, getattr(info, role))
        got = (getattr(mod, "in_features", None), getattr(mod, "out_features", None))
        if got != (fin, fout):
            out.append(
                f"layer {layer} {role}: expected in/out features {fin}/{fout} from the config "
                f"(n_heads={info.n_heads}, n_kv_heads={info.n_kv_heads}, d_head={info.d_head}, "
                f"d_model={d_model}), got {got[0]}/{got[1]}"
            )
    return out
