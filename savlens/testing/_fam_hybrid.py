"""Tiny recipes of the families whose decoder layers are not all alike (issue 15): Qwen3.5 (Gated DeltaNet
linear-attention layers + gated full attention), LFM2 / LFM2-VL (short-convolution layers + attention), Mllama
(self-attention + cross-attention layers), Gemma 4 (sliding and global layers of different head sizes) and
Phi-4 multimodal (fused ``qkv_proj``), with the text-only siblings transformers has (Qwen3.5 text, LFM2, Gemma 4
text).

Each text model has the shared tiny sizes (:func:`~savlens.testing._core.text_sizes`) plus the family's own
layer-type fields, set so that the default 3 layers hold both kinds of layer; each vision tower has hidden size
32, 2 layers and 2 heads. All are registered with ``hybrid=True``.
"""

from typing import Any

from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    Qwen2VLImageProcessor,
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer


def _ids(tok: Any) -> Any:
    """``token -> id`` that raises KeyError (not silently ``[UNK]``) for a token the tokenizer lacks."""
    return tok.get_vocab().__getitem__


# ---------------------------------------------------------------------------------------------------- Qwen3.5

QWEN_VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen3.5 (as Qwen3-VL): patch 16, 2x2 merge -> one image token per 32x32 pixels; 64x64 -> 4 tokens, 48x100 -> 6
QWEN35_MIN_PIXELS, QWEN35_MAX_PIXELS = 64 * 64, 128 * 128


def _qwen35_text(tok: Any, n_layers: int) -> dict[str, Any]:
    """Qwen3.5's text fields: every 2nd layer full attention (the real models: every 4th), the rest Gated
    DeltaNet (2 key heads, 4 value heads of 16 dims, conv kernel 4); full attention's ``q_proj`` is 2x wide
    (query + output gate); mRoPE on half of each head (sections 2+1+1 = 8 / 2), interleaved."""
    return dict(
        text_sizes(tok, n_layers),
        layer_types=["full_attention" if i % 2 == 1 else "linear_attention" for i in range(n_layers)],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters=dict(ROPE, mrope_section=[2, 1, 1], mrope_interleaved=True, partial_rotary_factor=0.5),
    )


@recipe(
    "qwen3_5",
    hybrid=True,
    notes="Gated DeltaNet `linear_attn` layers (0, 2) + gated full attention (1); interleaved mRoPE "
    "(partial rotary) from `image_grid_thw` + `mm_token_type_ids`",
)
def qwen3_5(n_layers: int) -> Parts:
    template = chatml_template(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    )
    tok = word_tokenizer(CHATML_SPECIALS + QWEN_VISION_SPECIALS, chat_template=template)
    ids = _ids(tok)
    cfg = Qwen3_5Config(
        text_config=_qwen35_text(tok, n_layers),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=64,
            num_position_embeddings=64,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
    ip = Qwen2VLImageProcessor(size={"shortest_edge": QWEN35_MIN_PIXELS, "longest_edge": QWEN35_MAX_PIXELS}, **kw)
    vp = Qwen3VLVideoProcessor(size={"shortest_edge": QWEN35_MIN_PIXELS, "longest_edge": 4 * QWEN35_MAX_PIXELS}, **kw)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template)
    return Parts(cfg, Qwen3_5ForConditionalGeneration, proc, tok)


@recipe(
    "qwen3_5_text",
    vlm=False,
    hybrid=True,
    notes="Gated DeltaNet `linear_attn` layers (0, 2) + gated full attention (1); 1-D RoPE (partial rotary)",
)
def qwen3_5_text(n_layers: int) -> Parts:
    tok = word_tokenizer(CHATML_SPECIALS, chat_template=chatml_template("", ""))
    text = _qwen35_text(tok, n_layers)
    text["rope_parameters"] = dict(ROPE, partial_rotary_factor=0.5)
    return Parts(Qwen3_5TextConfig(**text), Qwen3_5ForCausalLM, tok, tok)


# ---------------------------------------------------------------------------------------------------- LFM2

LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"]
#: LFM2's chat format: ``<|startoftext|><|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n``
LFM2_TEMPLATE = "{{ bos_token }}" + chatml_template("<image>", "")


def _lfm2_text(tok: Any, n_layers: int) -> dict[str, Any]:
    """LFM2's text fields: attention on every 2nd layer (1, 3, ...), short convolutions (kernel 3) on the rest;
    the MLP is the given 128 wide (no auto-adjusted width)."""
    text = text_sizes(tok, n_layers)
    text.pop("head_dim")  # LFM2's attention takes hidden_size // num_attention_heads (= 16)
    return dict(
        text,
        layer_types=["full_attention" if i % 2 == 1 else "conv" for i in range(n_layers)],
        conv_L_cache=3,
        conv_bias=False,
        block_auto_adjust_ff_dim=False,
        rope_parameters=dict(ROPE),
    )


def _lfm2_tokenizer(extra: list[str] = [], **kw: Any) -> Any:  # noqa: B006 - read only
    return word_tokenizer(
        LFM2_SPECIALS + extra,
        chat_template=LFM2_TEMPLATE,
        eos="<|im_end|>",
        pad="<|pad|>",
        bos="<|startoftext|>",
        **kw,
    )


@recipe(
    "lfm2",
    vlm=False,
    hybrid=True,
    notes="short-convolution `conv` layers (0, 2) + attention (1) with `out_proj`; 1-D RoPE",
)
def lfm2(n_layers: int) -> Parts:
    tok = _lfm2_tokenizer()
    return Parts(Lfm2Config(**_lfm2_text(tok, n_layers)), Lfm2ForCausalLM, tok, tok)


LFM2_VL_MM = {
    "image_token": "<image>",
    "image_start_token": "<|image_start|>",
    "image_end_token": "<|image_end|>",
    "image_thumbnail_token": "<|img_thumbnail|>",
}
# LFM2-VL: SigLIP2 patches of 8, pixel-unshuffled 2x2 -> one image token per 16x16 pixels, 4 to 16 tokens per
# image (64x64 -> 16, 48x100 -> 10); larger images split into 32x32 tiles (4 tokens each) + a thumbnail
LFM2_VL_PATCH, LFM2_VL_TILE = 8, 32
LFM2_VL_TILES = [f"<|img_row_{r}_col_{c}|>" for r in range(1, 5) for c in range(1, 5)]


@recipe(
    "lfm2_vl",
    hybrid=True,
    notes="short-convolution `conv` layers (0, 2) + attention (1) with `out_proj`; 1-D RoPE; SigLIP2 "
    "NaFlex tower (`pixel_attention_mask`, `spatial_shapes`)",
)
def lfm2_vl(n_layers: int) -> Parts:
    tok = _lfm2_tokenizer(list(LFM2_VL_MM.values()) + LFM2_VL_TILES, extra_special_tokens=LFM2_VL_MM)
    ids = _ids(tok)
    max_tokens = 16
    cfg = Lfm2VlConfig(
        text_config=dict(_lfm2_text(tok, n_layers), model_type="lfm2"),
        vision_config=dict(
            model_type="siglip2_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=LFM2_VL_PATCH,
            num_patches=max_tokens * 4,
            vision_use_head=False,
        ),
        image_token_id=ids("<image>"),
        projector_hidden_size=64,
        downsample_factor=2,
        tie_word_embeddings=False,
    )
    ip = Lfm2VlImageProcessor(
        encoder_patch_size=LFM2_VL_PATCH,
        downsample_factor=2,
        tile_size=LFM2_VL_TILE,
        min_image_tokens=4,
        max_image_tokens=max_tokens,
        min_tiles=2,
        max_tiles=4,
        size={"height": LFM2_VL_TILE, "width": LFM2_VL_TILE},
    )
    proc = Lfm2VlProcessor(image_processor=ip, tokenizer=tok, chat_template=LFM2_TEMPLATE)
    return Parts(cfg, Lfm2VlForConditionalGeneration, proc, tok)
