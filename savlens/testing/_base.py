"""Tiny recipes of the first families savlens supported: Llama, Qwen2, Mistral (text) and LLaVA-OneVision,
Qwen2-VL, Qwen2.5-VL (stock processors, with their video processors)."""

from typing import Any

from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    MistralConfig,
    MistralForCausalLM,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer

LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 112 * 112

SPECIALS = {
    "plain": CHATML_SPECIALS,
    "qwen": CHATML_SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": CHATML_SPECIALS + ["<image>", "<video>"],
}
IMAGE_MARKUP = {
    "plain": "{{ raise_exception('this tiny text model has no image token') }}",
    "qwen": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>\n",
}
VIDEO_MARKUP = {
    "plain": "{{ raise_exception('this tiny text model has no video token') }}",
    "qwen": "<|vision_start|><|video_pad|><|vision_end|>",
    "llava": "<video>\n",
}
KIND_OF = {
    "llama": "plain",
    "qwen2": "plain",
    "mistral": "plain",
    "llava_onevision": "llava",
    "qwen2_vl": "qwen",
    "qwen2_5_vl": "qwen",
}


def build_tokenizer(kind: str = "plain") -> Any:
    """A word-level tokenizer with a ChatML template: ``"plain"`` (text LMs), ``"qwen"`` (Qwen2-VL specials) or
    ``"llava"`` (LLaVA-OneVision specials); a family name from :data:`KIND_OF` picks its kind.

    The specials take ids 1..n (``[UNK]`` is 0); eos is ``<|im_end|>``, pad ``<|endoftext|>``, no bos. An image
    item renders as ``<|vision_start|><|image_pad|><|vision_end|>`` (qwen) or ``<image>`` (llava); the plain
    template raises on image items. Padding is on the left.
    """
    kind = KIND_OF.get(kind, kind)
    if kind not in SPECIALS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(SPECIALS)} or a family")
    return word_tokenizer(SPECIALS[kind], chat_template=chatml_template(IMAGE_MARKUP[kind], VIDEO_MARKUP[kind]))


@recipe("llama", vlm=False)
def llama(n_layers: int) -> Parts:
    tok = build_tokenizer("plain")
    return Parts(LlamaConfig(**text_sizes(tok, n_layers), rope_parameters=dict(ROPE)), LlamaForCausalLM, tok, tok)


@recipe("qwen2", vlm=False)
def qwen2(n_layers: int) -> Parts:
    tok = build_tokenizer("plain")
    return Parts(Qwen2Config(**text_sizes(tok, n_layers), rope_parameters=dict(ROPE)), Qwen2ForCausalLM, tok, tok)


@recipe("mistral", vlm=False)
def mistral(n_layers: int) -> Parts:
    tok = build_tokenizer("plain")
    cfg = MistralConfig(**text_sizes(tok, n_layers), rope_parameters=dict(ROPE), sliding_window=None)
    return Parts(cfg, MistralForCausalLM, tok, tok)


@recipe("llava_onevision", notes="anyres tiles + image newline; 1-D RoPE from the mask")
def llava_onevision(n_layers: int) -> Parts:
    tok = build_tokenizer("llava")
    ids = tok.get_vocab().__getitem__  # a KeyError, not silently [UNK], if a special is missing
    cfg = LlavaOnevisionConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="qwen2", rope_parameters=dict(ROPE)),
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
    ip = LlavaOnevisionImageProcessor(
        size={"height": 32, "width": 32}, image_grid_pinpoints=[list(p) for p in LLAVA_PINPOINTS]
    )
    vp = LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    proc = LlavaOnevisionProcessor(
        image_processor=ip,
        tokenizer=tok,
        video_processor=vp,
        chat_template=tok.chat_template,
        num_image_tokens=(32 // 8) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return Parts(cfg, LlavaOnevisionForConditionalGeneration, proc, tok)


def _qwen_ids(tok: Any) -> dict[str, Any]:
    ids = tok.get_vocab().__getitem__
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_processor(cls: type, tok: Any) -> Any:
    ip = Qwen2VLImageProcessor(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    vp = Qwen2VLVideoProcessor(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    return cls(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=tok.chat_template)


@recipe("qwen2_vl", notes="mRoPE from `get_rope_index` (`mm_token_type_ids`); 2x2 merged patches")
def qwen2_vl(n_layers: int) -> Parts:
    tok = build_tokenizer("qwen")
    cfg = Qwen2VLConfig(
        text_config=dict(text_sizes(tok, n_layers), rope_parameters=dict(ROPE, mrope_section=[2, 3, 3])),
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
        **_qwen_ids(tok),
    )
    return Parts(cfg, Qwen2VLForConditionalGeneration, _qwen_processor(Qwen2VLProcessor, tok), tok)


@recipe("qwen2_5_vl", notes="as Qwen2-VL, windowed vision attention")
def qwen2_5_vl(n_layers: int) -> Parts:
    tok = build_tokenizer("qwen")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(text_sizes(tok, n_layers), rope_parameters=dict(ROPE, mrope_section=[2, 3, 3])),
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
        **_qwen_ids(tok),
    )
    return Parts(cfg, Qwen2_5_VLForConditionalGeneration, _qwen_processor(Qwen2_5_VLProcessor, tok), tok)
