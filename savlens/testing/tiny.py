"""Tiny random-init Hugging Face models (text LMs and VLMs) built in memory, offline, for tests.

Every model is built from its family's own config class: 3 decoder layers (by default), hidden size 64, 4 query
heads over 2 KV heads (GQA, head_dim 16), an MLP of width 128, a word-level tokenizer of ~200 entries, and, for
VLMs, a tiny vision tower with the stock HF processor (image and video processors included), so
``processor.apply_chat_template`` and ``processor(text=..., images=...)`` behave as for the full-size checkpoints.

* :data:`FAMILIES` are the six families the whole test suite runs on; :data:`ALL_FAMILIES` every family with a
  recipe (the model-contract tests run on all of them).
* ``peaked=True`` re-draws every >=2-D weight from N(0, 0.15), so attention is far from uniform and
  position / padding bugs show up in the outputs.

Example:
    >>> tm = build_tiny("qwen2_vl")
    >>> msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]}]
    >>> text = tm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    >>> enc = tm.processor(text=[text], images=sample_images(1), padding=True, return_tensors="pt")
    >>> logits = tm.model(**enc).logits
"""

import importlib
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import PreTrainedTokenizerFast

from savlens.testing._base import LLAVA_PINPOINTS, QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, build_tokenizer
from savlens.testing._core import RECIPES, Recipe

# the recipe modules register themselves in RECIPES on import
for _mod in ("_fam_llava", "_fam_mrope", "_fam_misc", "_fam_hybrid"):
    try:
        importlib.import_module(f"savlens.testing.{_mod}")
    except ModuleNotFoundError as _e:
        if _e.name != f"savlens.testing.{_mod}":
            raise

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "HYBRID_FAMILIES",
    "LLAVA_PINPOINTS",
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "RECIPES",
    "TEXT_FAMILIES",
    "VLM_FAMILIES",
    "Recipe",
    "TinyModel",
    "build_tiny",
    "build_tokenizer",
    "sample_images",
]

TEXT_FAMILIES = ("llama", "qwen2", "mistral")
VLM_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl")
#: the families the whole test suite runs on
FAMILIES = TEXT_FAMILIES + VLM_FAMILIES
#: every family with a recipe
ALL_FAMILIES = tuple(RECIPES)
#: families whose layers differ (linear attention, convolution, cross-attention, per-layer head sizes)
HYBRID_FAMILIES = tuple(f for f, r in RECIPES.items() if r.hybrid)

PEAKED_STD = 0.15


class TinyModel(NamedTuple):
    """What :func:`build_tiny` returns. For text LMs ``processor`` is the tokenizer itself."""

    model: Any
    processor: Any
    tokenizer: PreTrainedTokenizerFast


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
        family: one of :data:`ALL_FAMILIES`.
        seed: the weights are a deterministic function of ``(family, seed)``, bit-identical across calls;
            different families get different weights for the same seed. The global torch RNG is untouched.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (reaches the vision tower too).
        dtype: parameter dtype. Peaked weights are drawn in float32 and then cast, so a bf16 model holds
            the rounded weights of the float32 one.
        peaked: re-draw every >=2-D weight from N(0, 0.15) (HF's std 0.02 init gives near-uniform attention).
        n_layers: decoder layers of the language model.
    """
    if family not in RECIPES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {ALL_FAMILIES}")
    rec = RECIPES[family]
    cfg, model_cls, processor, tok = rec.build(n_layers)
    # mix the family in: llama / mistral (and qwen2, whose q/k/v biases init to 0) share parameter names and
    # shapes, so one seed would otherwise give three copies of the same function
    fseed = (seed * 1_000_003 + zlib.crc32(family.encode())) % 2**63
    with torch.random.fork_rng(devices=[]):  # HF init draws from the global RNG; keep the caller's state
        torch.manual_seed(fseed)
        model = model_cls._from_config(  # type: ignore[attr-defined]
            cfg, attn_implementation=attn_implementation, dtype=dtype
        )
    # VLM configs keep eos/pad in text_config only; make generate() stop and pad like the tokenizer
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    std = rec.peaked_std
    if peaked and std is not None:
        gen = torch.Generator().manual_seed(fseed)
        with torch.no_grad():
            for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
                elif pname.endswith("_gate") and p.numel() == 1:  # Mllama's tanh gates init to 0: open them
                    p.fill_(0.8)
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
