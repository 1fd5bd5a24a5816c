"""Tiny random-init Hugging Face models (text LMs and VLMs) built in memory, offline, for tests.

Every model has 3 decoder layers (by default), hidden size 64, 4 query heads over 2 KV heads (GQA, head_dim
16), an MLP of width 128 and a word-level tokenizer of ~200 entries. The three VLM families come with real HF
processor classes, so ``processor.apply_chat_template`` and ``processor(text=..., images=...)`` behave as
for the full-size checkpoints (image-token expansion, ``pixel_values``, ``image_grid_thw``, ...).

Notes (see ``shared/TINY_VLMS.md`` for the measurements behind them):

* Without torchvision the stock VLM processors cannot be constructed (their ``video_processor`` slot is
  type-checked against a registry that needs torchvision). We use small subclasses whose ``__init__`` has
  no ``video_processor`` argument; they are still ``isinstance`` of the HF processor classes.
* The image processors are the ``*ImageProcessorPil`` classes, built directly: the default classes need
  torchvision and, without it, fall back to these with a warning at every construction. Built this way,
  nothing is logged at the default verbosity.
* ``peaked=True`` re-draws every >=2-D weight from N(0, 0.15), so attention is far from uniform and
  position / padding bugs show up in the outputs.

Example:
    >>> tm = build_tiny("qwen2_vl")
    >>> msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]}]
    >>> text = tm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    >>> enc = tm.processor(text=[text], images=sample_images(1), padding=True, return_tensors="pt")
    >>> logits = tm.model(**enc).logits
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

__all__ = [
    "FAMILIES",
    "LLAVA_PINPOINTS",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "TinyModel",
    "build_tiny",
    "build_tokenizer",
    "sample_images",
]

TEXT_FAMILIES = ("llama", "qwen2", "mistral")
VLM_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl")
FAMILIES = TEXT_FAMILIES + VLM_FAMILIES

PEAKED_STD = 0.15
LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 112 * 112

_BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SPECIALS = {
    "plain": _BASE_SPECIALS,
    "qwen": _BASE_SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": _BASE_SPECIALS + ["<image>", "<video>"],
}
_IMAGE_MARKUP = {
    "plain": "{{ raise_exception('this tiny text model has no image token') }}",
    "qwen": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>\n",
}
_KIND_OF = {
    "llama": "plain",
    "qwen2": "plain",
    "mistral": "plain",
    "llava_onevision": "llava",
    "qwen2_vl": "qwen",
    "qwen2_5_vl": "qwen",
}

# ~200 common English words (lower case: the tokenizer lower-cases its input), then punctuation and digits.
_WORD_TEXT = """
system user assistant you are a an the helpful is are was were be been it this that these those there here
what which who where when why how many much do does did can could will would should not no yes and or but
of in on at to from with without for by about into over under above below near behind between left right
top bottom front back middle up down color colour red green blue yellow black white orange purple pink
brown gray grey dark light bright image picture photo shown show see look describe answer question
word words short one two three four five six seven eight nine ten zero number count shape shapes circle square
triangle rectangle line dot object objects thing things background foreground big small large tiny
size same different more less most least than only all some any each other both text letter letters
animal animals cat cats dog dogs bird birds car tree sky sun water person people man woman house road
table chair book
please tell me my your its their i we they he she true false label class
"""
_WORDS = _WORD_TEXT.split()
_PUNCT = list(".,?!:;'\"()[]-/")
_DIGITS = list("0123456789")

_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE_MARKUP"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(kind: str = "plain") -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer with a small ChatML-style chat template, built in process.

    Args:
        kind: ``"plain"`` (text LMs), ``"qwen"`` (Qwen2-VL / Qwen2.5-VL specials) or ``"llava"``
            (LLaVA-OneVision specials); a family name from :data:`FAMILIES` picks its kind.

    The specials take ids 1..n (``[UNK]`` is 0); eos is ``<|im_end|>``, pad ``<|endoftext|>``, no bos.
    Input is lower-cased and split on whitespace, punctuation and single digits; unknown words map to
    ``[UNK]``. An image item in a message renders as ``<|vision_start|><|image_pad|><|vision_end|>``
    (qwen) or ``<image>`` (llava); the plain template raises on image items. Padding is on the left.
    """
    kind = _KIND_OF.get(kind, kind)
    if kind not in _SPECIALS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_SPECIALS)} or a family")
    specials = _SPECIALS[kind]
    vocab: dict[str, int] = {"[UNK]": 0}
    for tok in [*specials, *_WORDS, *_PUNCT, *_DIGITS]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tk.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=_TEMPLATE.replace("IMAGE_MARKUP", _IMAGE_MARKUP[kind]),
    )


class TinyModel(NamedTuple):
    """What :func:`build_tiny` returns. For text LMs ``processor`` is the tokenizer itself."""

    model: Any
    processor: Any
    tokenizer: PreTrainedTokenizerFast


class _QwenVLProc(Qwen2VLProcessor):
    """Qwen2VLProcessor without the video slot (constructible without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class _Qwen25VLProc(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without the video slot (constructible without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class _LlavaOVProc(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without the video slot (constructible without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _text_kwargs(tok: PreTrainedTokenizerFast, n_layers: int) -> dict[str, Any]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        vocab_size=-(-len(tok) // 16) * 16,  # rounded up to a multiple of 16
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def _config_and_processor(family: str, tok: PreTrainedTokenizerFast, n_layers: int) -> tuple[Any, Any, Any]:
    """(config, model class, processor) for one family."""
    txt = _text_kwargs(tok, n_layers)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if family == "llama":
        return LlamaConfig(**txt, rope_parameters=rope), LlamaForCausalLM, tok
    if family == "qwen2":
        return Qwen2Config(**txt, rope_parameters=rope), Qwen2ForCausalLM, tok
    if family == "mistral":
        return MistralConfig(**txt, rope_parameters=rope, sliding_window=None), MistralForCausalLM, tok
    vocab = tok.get_vocab()
    ids = vocab.__getitem__  # a KeyError, not silently [UNK], if a special is missing
    template = tok.chat_template
    cfg: Any
    if family == "llava_onevision":
        cfg = LlavaOnevisionConfig(
            text_config=dict(txt, model_type="qwen2", rope_parameters=rope),
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                patch_size=8,
                image_size=32,
                vision_use_head=False,
            ),
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            image_grid_pinpoints=[list(p) for p in LLAVA_PINPOINTS],
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=False,
        )
        ip = LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=[list(p) for p in LLAVA_PINPOINTS]
        )
        proc = _LlavaOVProc(
            image_processor=ip,
            tokenizer=tok,
            chat_template=template,
            num_image_tokens=(32 // 8) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
        return cfg, LlavaOnevisionForConditionalGeneration, proc
    qtext = dict(txt, rope_parameters=dict(rope, mrope_section=[2, 3, 3]))  # sums to head_dim / 2
    qids: dict[str, Any] = dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    qip = Qwen2VLImageProcessorPil(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    if family == "qwen2_vl":
        cfg = Qwen2VLConfig(
            text_config=qtext,
            vision_config=dict(
                depth=2,
                embed_dim=32,
                hidden_size=64,
                num_heads=2,
                mlp_ratio=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            tie_word_embeddings=False,
            **qids,
        )
        return cfg, Qwen2VLForConditionalGeneration, _QwenVLProc(qip, tok, chat_template=template)
    if family == "qwen2_5_vl":
        cfg = Qwen2_5_VLConfig(
            text_config=qtext,
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=56,
                fullatt_block_indexes=[1],
            ),
            tie_word_embeddings=False,
            **qids,
        )
        return cfg, Qwen2_5_VLForConditionalGeneration, _Qwen25VLProc(qip, tok, chat_template=template)
    raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")


def build_tiny(
    family: str,
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    peaked: bool = True,
    n_layers: int = 3,
) -> TinyModel:
    """Build a tiny random-init model of ``family`` with its processor and tokenizer, offline, in eval mode.

    Args:
        family: one of :data:`FAMILIES`.
        seed: the weights are a deterministic function of ``(family, seed)``, bit-identical across calls;
            different families get different weights for the same seed. The global torch RNG is untouched.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (reaches the vision tower too).
        dtype: parameter dtype. Peaked weights are drawn in float32 and then cast, so a bf16 model holds
            the rounded weights of the float32 one.
        peaked: re-draw every >=2-D weight from N(0, 0.15) (HF's std 0.02 init gives near-uniform attention).
        n_layers: decoder layers of the language model.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")
    tok = build_tokenizer(family)
    cfg, model_cls, processor = _config_and_processor(family, tok, n_layers)
    # mix the family in: llama / mistral (and qwen2, whose q/k/v biases init to 0) share parameter names and
    # shapes, so one seed would otherwise give three copies of the same function
    fseed = (seed * 1_000_003 + zlib.crc32(family.encode())) % 2**63
    with torch.random.fork_rng(devices=[]):  # HF init draws from the global RNG; keep the caller's state
        torch.manual_seed(fseed)
        model = model_cls._from_config(cfg, attn_implementation=attn_implementation, dtype=dtype)
    # VLM configs keep eos/pad in text_config only; make generate() stop and pad like the tokenizer
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if peaked:
        gen = torch.Generator().manual_seed(fseed)
        with torch.no_grad():
            for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * PEAKED_STD)
    return TinyModel(model.eval(), processor, tok)


def sample_images(
    n: int, seed: int = 0, sizes: Sequence[tuple[int, int]] = ((64, 64), (48, 100), (32, 32))
) -> list[Image.Image]:
    """``n`` deterministic RGB images: a noisy background with a few coloured shapes.

    Args:
        n: how many images.
        seed: the images are a deterministic function of ``seed``.
        sizes: ``(width, height)`` pairs, PIL's order, cycled through.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-40, 41, size=(h, w, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))
            fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        out.append(img)
    return out
