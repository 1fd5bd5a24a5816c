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
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4TextConfig,
    Gemma4VideoProcessor,
    Lfm2Config,
    Lfm2ForCausalLM,
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
    Qwen2VLImageProcessor,
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer

#: what an image item renders to in a text LM's template
NO_IMAGE = "{{ raise_exception('this tiny text model has no image token') }}"


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
    tok = word_tokenizer(CHATML_SPECIALS, chat_template=chatml_template(NO_IMAGE, NO_IMAGE))
    text = _qwen35_text(tok, n_layers)
    text["rope_parameters"] = dict(ROPE, partial_rotary_factor=0.5)
    return Parts(Qwen3_5TextConfig(**text), Qwen3_5ForCausalLM, tok, tok)


# ---------------------------------------------------------------------------------------------------- LFM2

LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"]
#: LFM2's chat format: ``<|startoftext|><|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n``
LFM2_TEMPLATE = "{{ bos_token }}" + chatml_template("<image>", "")
LFM2_TEXT_TEMPLATE = "{{ bos_token }}" + chatml_template(NO_IMAGE, NO_IMAGE)


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


def _lfm2_tokenizer(extra: list[str] = [], template: str = LFM2_TEXT_TEMPLATE, **kw: Any) -> Any:  # noqa: B006
    return word_tokenizer(
        LFM2_SPECIALS + extra,
        chat_template=template,
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
    tok = _lfm2_tokenizer(
        list(LFM2_VL_MM.values()) + LFM2_VL_TILES, template=LFM2_TEMPLATE, extra_special_tokens=LFM2_VL_MM
    )
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


# ---------------------------------------------------------------------------------------------------- Mllama

MLLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|python_tag|>",
    "<|image|>",
]
#: Llama 3.2 Vision's chat format: ``<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>...
#: <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n``
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Mllama's cross-attention layers are tanh-gated by 1-element parameters that HF initialises to 0 and peaked
# weights leave alone (1-D): as built, a cross-attention layer adds nothing to the residual stream.
# Mllama: 32x32 tiles in 8x8 patches (16 patches + a class token per tile), up to 4 tiles per image
MLLAMA_TILE, MLLAMA_PATCH = 32, 8


@recipe(
    "mllama",
    hybrid=True,
    text_only_rows=False,  # the stock image processor gives `aspect_ratio_ids` no row for an image-less prompt
    notes="self-attention layers (0, 2) + cross-attention layer (1) reading the image tiles "
    "(`cross_attention_mask`); 1-D RoPE (positions from the mask under left padding)",
)
def mllama(n_layers: int) -> Parts:
    tok = word_tokenizer(
        MLLAMA_SPECIALS,
        chat_template=MLLAMA_TEMPLATE,
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        bos="<|begin_of_text|>",
        extra_words=["assistant"],
    )
    ids = _ids(tok)
    text = text_sizes(tok, n_layers)
    text.pop("head_dim")  # Mllama's attention takes hidden_size // num_attention_heads (= 16)
    cfg = MllamaConfig(
        text_config=dict(
            text,
            cross_attention_layers=[i for i in range(n_layers) if i % 3 == 1],
            rope_parameters=dict(ROPE),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            attention_heads=2,
            image_size=MLLAMA_TILE,
            patch_size=MLLAMA_PATCH,
            max_num_tiles=4,
            intermediate_layers_indices=[0],
            vision_output_dim=64,  # hidden_size x (1 + len(intermediate_layers_indices))
        ),
        image_token_index=ids("<|image|>"),
    )
    ip = MllamaImageProcessor(size={"height": MLLAMA_TILE, "width": MLLAMA_TILE}, max_image_tiles=4)
    proc = MllamaProcessor(image_processor=ip, tokenizer=tok, chat_template=MLLAMA_TEMPLATE)
    return Parts(cfg, MllamaForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------- Gemma 4

GEMMA4_MM = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}
GEMMA4_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<|video|>"]
#: Gemma's chat format (as Gemma 3's): ``<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n``;
#: an image item renders as the image token, which the processor expands into ``<|image>`` + soft tokens +
#: ``<image|>``
GEMMA4_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'video' %}<|video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Gemma 4: 8x8 patches pooled 2x2; the processor resizes every image to fill a budget of 70 soft tokens
# (280 patches): 64x64 -> 128x128 pixels -> 64 soft tokens
GEMMA4_PATCH, GEMMA4_POOL, GEMMA4_SOFT_TOKENS = 8, 2, 70


def _gemma4_tokenizer(template: str = GEMMA4_TEMPLATE) -> Any:
    return word_tokenizer(
        GEMMA4_SPECIALS + list(GEMMA4_MM.values()),
        chat_template=template,
        eos="<end_of_turn>",
        pad="<pad>",
        bos="<bos>",
        extra_words=["model"],
        extra_special_tokens=GEMMA4_MM,
    )


def _gemma4_text(tok: Any, n_layers: int) -> dict[str, Any]:
    """Gemma 4's text fields: sliding layers (window 8) with head_dim 16, global (full-attention) layers with
    head_dim 32 (``global_head_dim``; every 3rd layer and the last); RoPE theta 10k on sliding layers,
    proportional RoPE on a quarter of each global head; no per-layer input embeddings, no KV sharing."""
    return dict(
        text_sizes(tok, n_layers),
        sliding_window=8,
        layer_types=[
            "full_attention" if (i + 1) % 3 == 0 or i == n_layers - 1 else "sliding_attention" for i in range(n_layers)
        ],
        global_head_dim=32,
        rope_parameters={
            "sliding_attention": dict(ROPE),
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
        },
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=-(-len(tok) // 16) * 16,
        final_logit_softcapping=30.0,
    )


@recipe(
    "gemma4",
    hybrid=True,
    notes="sliding layers (0, 1; window 8, head_dim 16) + global layer (2; head_dim 32, partial RoPE); "
    "`mm_token_type_ids`: image tokens bidirectional on sliding layers",
)
def gemma4(n_layers: int) -> Parts:
    tok = _gemma4_tokenizer()
    ids = _ids(tok)
    cfg = Gemma4Config(
        text_config=dict(_gemma4_text(tok, n_layers), use_bidirectional_attention="vision"),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            patch_size=GEMMA4_PATCH,
            pooling_kernel_size=GEMMA4_POOL,
            position_embedding_size=160,  # > the most patches along a side (70 tokens x 2)
        ),
        audio_config=None,
        boi_token_id=ids("<|image>"),
        eoi_token_id=ids("<image|>"),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        boa_token_id=ids("<|audio>"),
        eoa_token_index=ids("<audio|>"),
        audio_token_id=ids("<|audio|>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(
        patch_size=GEMMA4_PATCH, pooling_kernel_size=GEMMA4_POOL, max_soft_tokens=GEMMA4_SOFT_TOKENS
    )
    proc = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**kw),
        tokenizer=tok,
        video_processor=Gemma4VideoProcessor(num_frames=4, **kw),
        chat_template=GEMMA4_TEMPLATE,
        image_seq_length=GEMMA4_SOFT_TOKENS,
    )
    return Parts(cfg, Gemma4ForConditionalGeneration, proc, tok)


@recipe(
    "gemma4_text",
    vlm=False,
    hybrid=True,
    notes="sliding layers (0, 1; window 8, head_dim 16) + global layer (2; head_dim 32, partial RoPE); 1-D RoPE",
)
def gemma4_text(n_layers: int) -> Parts:
    tok = _gemma4_tokenizer(GEMMA4_TEMPLATE.replace("<|image|>", NO_IMAGE).replace("<|video|>", NO_IMAGE))
    return Parts(Gemma4TextConfig(**_gemma4_text(tok, n_layers)), Gemma4ForCausalLM, tok, tok)


# ---------------------------------------------------------------------------------------------------- Phi-4 MM

PHI4_MM = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
PHI4_SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
#: Phi-4's chat format: ``<|user|>...<|end|><|assistant|>``
PHI4_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'audio' %}<|audio|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Phi-4 MM's vision attention has `is_causal = True` (transformers 5.25): under SDPA an image whose crops have no
# padded patches gets causal vision attention, one in a batch with padded crops bidirectional; eager is always
# bidirectional.
# Phi-4 MM: the stock processor counts 16x16 (+ 16 row separators + 1) tokens for the global view, so a crop must
# be 32x32 patches (real: 448 / 14) pooled 2x2: 64x64 crops of 2x2 patches; up to 4 sub-crops; a 64x64 image gives
# 273 (global) + 272 (one crop) tokens
PHI4_CROP, PHI4_PATCH = 64, 2


@recipe(
    "phi4_multimodal",
    hybrid=True,
    image_sizes=((64, 64), (64, 32)),  # one crop each: 545 and 409 image tokens
    notes="fused `qkv_proj` (4 query + 2 KV heads of 16) and fused MLP `gate_up_proj`; 1-D RoPE on 3/4 of "
    "each head; image embeddings written over the image tokens",
)
def phi4_multimodal(n_layers: int) -> Parts:
    tok = word_tokenizer(
        PHI4_SPECIALS + list(PHI4_MM.values()),
        chat_template=PHI4_TEMPLATE,
        eos="<|end|>",
        pad="<|endoftext|>",
        extra_special_tokens=PHI4_MM,
    )
    ids = _ids(tok)
    text = text_sizes(tok, n_layers)
    text.pop("head_dim")  # Phi-4's attention takes hidden_size // num_attention_heads (= 16)
    text["max_position_embeddings"] = 2048  # one image is 500+ tokens
    cfg = Phi4MultimodalConfig(
        **text,
        rope_parameters=dict(ROPE, partial_rotary_factor=0.75),
        original_max_position_embeddings=2048,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=PHI4_CROP,
            crop_size=PHI4_CROP,
            patch_size=PHI4_PATCH,
            image_token_id=ids("<|image|>"),
        ),
        audio_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_blocks=2,
            num_attention_heads=2,
            ext_pw_out_channel=32,
            depthwise_separable_out_channel=32,
            nemo_conv_channels=32,
            input_size=80,
            time_reduction=8,
            bias_max_distance=32,
            audio_token_id=ids("<|audio|>"),
        ),
    )
    ip = Phi4MultimodalImageProcessor(
        size={"height": PHI4_CROP, "width": PHI4_CROP}, patch_size=PHI4_PATCH, dynamic_hd=4
    )
    proc = Phi4MultimodalProcessor(
        image_processor=ip,
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tok,
        chat_template=PHI4_TEMPLATE,
    )
    return Parts(cfg, Phi4MultimodalForCausalLM, proc, tok)
