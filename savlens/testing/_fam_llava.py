"""Tiny recipes of the LLaVA-like VLM families (a vision tower, a projector, a decoder LM): LLaVA, LLaVA-NeXT,
LLaVA-OneVision-1.5, InternVL, Mistral3 (Pixtral tower), Aya Vision and Cohere2-Vision.

Each uses the family's own config and model class and its stock HF processor with the stock image processor (and
video processor where the processor has that slot), sized to agree with the config: tiny towers (hidden 32, 2
layers, 2 heads; 32-pixel tiles of 8-pixel patches, or 14-pixel patches for LLaVA-OneVision-1.5), so an image
gives 4 to a few dozen image tokens. Where the real tokenizer has a BOS (Llama, Mistral, Cohere) so does the tiny
one; the chat templates are ChatML with the family's image placeholder.
"""

from typing import Any

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    Cohere2VisionConfig,
    Cohere2VisionForConditionalGeneration,
    Cohere2VisionImageProcessor,
    Cohere2VisionProcessor,
    Exaone4_5_Processor,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevision15Config,
    LlavaOnevision15ForConditionalGeneration,
    LlavaProcessor,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PixtralImageProcessor,
    PixtralProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer

#: tile / base image side in pixels and the vision patch size of the CLIP / SigLIP / InternViT towers
TILE, PATCH = 32, 8
#: LLaVA-NeXT's anyres grid (``[height, width]``): besides the base 32x32 view, a 1x1, 1x2 or 2x1 grid of tiles
NEXT_PINPOINTS = [[32, 32], [32, 64], [64, 32]]
#: the Qwen2-VL image processor's pixel budget for LLaVA-OneVision-1.5 (patch 14, 2x2 merge)
OV15_MIN_PIXELS, OV15_MAX_PIXELS = 56 * 56, 112 * 112
#: most tiles the InternVL / Aya / Cohere2-Vision image processors cut an image into (plus one global view)
MAX_TILES = 4


def _tower(model_type: str, **kw: Any) -> dict[str, Any]:
    """A tiny vision tower config: hidden 32, MLP 64, 2 layers, 2 heads, 32-pixel images, 8-pixel patches."""
    return {
        "model_type": model_type,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TILE,
        "patch_size": PATCH,
        **kw,
    }


def _ids(tok: Any) -> Any:
    return tok.get_vocab().__getitem__  # a KeyError, not silently [UNK], if a special is missing


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-1.5 and LLaVA-NeXT: CLIP tower, the second-to-last layer's patches (CLS dropped), Llama / Mistral LM
# ---------------------------------------------------------------------------------------------------------------


def _llava_tok() -> Any:
    return word_tokenizer(
        [*CHATML_SPECIALS, "<s>", "<image>"],
        chat_template=chatml_template("<image>\n"),
        bos="<s>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _clip_tower() -> dict[str, Any]:
    return _tower("clip_vision_model", projection_dim=32)


@recipe(
    "llava",
    notes="1-D RoPE; every image resized + centre-cropped to 32x32: 16 image tokens (CLS dropped)",
)
def llava(n_layers: int) -> Parts:
    tok = _llava_tok()
    n_tokens = (TILE // PATCH) ** 2
    cfg = LlavaConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=_clip_tower(),
        image_token_index=_ids(tok)("<image>"),
        image_seq_length=n_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    ip = LlavaImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" drops again
        chat_template=tok.chat_template,
    )
    return Parts(cfg, LlavaForConditionalGeneration, proc, tok)


@recipe(
    "llava_next",
    notes="1-D RoPE; anyres: base 32x32 view + unpadded tile grid with a newline per row (`image_sizes`)",
)
def llava_next(n_layers: int) -> Parts:
    tok = _llava_tok()
    cfg = LlavaNextConfig(
        text_config=dict(
            text_sizes(tok, n_layers), model_type="mistral", rope_parameters=dict(ROPE), sliding_window=None
        ),
        vision_config=_clip_tower(),
        image_token_index=_ids(tok)("<image>"),
        image_grid_pinpoints=[list(p) for p in NEXT_PINPOINTS],
        image_seq_length=(TILE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    ip = LlavaNextImageProcessor(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=[list(p) for p in NEXT_PINPOINTS],
    )
    proc = LlavaNextProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return Parts(cfg, LlavaNextForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# LLaVA-OneVision-1.5: RICE ViT (2-D RoPE, CLS per image) + 2x2 patch merger, Qwen3 LM, Qwen2-VL-style processor
# ---------------------------------------------------------------------------------------------------------------


@recipe(
    "llava_onevision1_5",
    notes="1-D RoPE (positions from arange unless `position_ids` are passed); Qwen2-VL patches, `image_grid_thw`",
)
def llava_onevision1_5(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*CHATML_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        chat_template=chatml_template(
            "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
        ),
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = _ids(tok)
    cfg = LlavaOnevision15Config(
        text_config=dict(text_sizes(tok, n_layers), model_type="qwen3", rope_parameters=dict(ROPE)),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            out_hidden_size=64,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    # the RICE patch embedding is 2-D: one frame per patch (temporal_patch_size 1), unlike Qwen2-VL's 2
    px: dict[str, Any] = dict(
        min_pixels=OV15_MIN_PIXELS, max_pixels=OV15_MAX_PIXELS, patch_size=14, merge_size=2, temporal_patch_size=1
    )
    proc = Exaone4_5_Processor(
        image_processor=Qwen2VLImageProcessor(**px),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**px),
        chat_template=tok.chat_template,
    )
    return Parts(cfg, LlavaOnevision15ForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# InternVL: InternViT tower, pixel shuffle 0.5, Qwen2 LM; <img> <IMG_CONTEXT>*n </img> per tile set
# ---------------------------------------------------------------------------------------------------------------


@recipe(
    "internvl",
    notes="1-D RoPE; dynamic tiles + thumbnail, each 4 `<IMG_CONTEXT>` tokens, wrapped in <img> ... </img>",
)
def internvl(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*CHATML_SPECIALS, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        chat_template=chatml_template("<IMG_CONTEXT>\n", "<video>\n"),
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    downsample = 0.5
    seq = int((TILE // PATCH * downsample) ** 2)
    cfg = InternVLConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="qwen2", rope_parameters=dict(ROPE)),
        vision_config=_tower("internvl_vision", image_size=[TILE, TILE], patch_size=[PATCH, PATCH]),
        image_token_id=_ids(tok)("<IMG_CONTEXT>"),
        image_seq_length=seq,
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    ip = GotOcr2ImageProcessor(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES
    )
    vp = InternVLVideoProcessor(size={"height": TILE, "width": TILE})
    proc = InternVLProcessor(
        image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=seq, chat_template=tok.chat_template
    )
    return Parts(cfg, InternVLForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# Mistral3: Pixtral tower (2-D RoPE over the native aspect ratio), 2x2 patch merger, Mistral LM
# ---------------------------------------------------------------------------------------------------------------


@recipe(
    "mistral3",
    notes="1-D RoPE (2-D RoPE only in the Pixtral tower); native aspect ratio, [IMG] grid with [IMG_BREAK] rows",
)
def mistral3(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*CHATML_SPECIALS, "<s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
        chat_template=chatml_template("[IMG]"),
        bos="<s>",
    )
    merge, longest = 2, 2 * TILE
    cfg = Mistral3Config(
        text_config=dict(
            text_sizes(tok, n_layers), model_type="mistral", rope_parameters=dict(ROPE), sliding_window=None
        ),
        vision_config=dict(
            model_type="pixtral",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            head_dim=16,
            image_size=longest,
            patch_size=PATCH,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        image_token_index=_ids(tok)("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    ip = PixtralImageProcessor(
        size={"longest_edge": longest}, patch_size={"height": PATCH * merge, "width": PATCH * merge}
    )
    proc = PixtralProcessor(
        image_processor=ip, tokenizer=tok, patch_size=PATCH, spatial_merge_size=merge, chat_template=tok.chat_template
    )
    return Parts(cfg, Mistral3ForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# Aya Vision and Cohere2-Vision: SigLIP tower, pixel shuffle 2, Cohere2 LM (sliding + global layers)
# ---------------------------------------------------------------------------------------------------------------


def _cohere2_text(tok: Any, n_layers: int) -> dict[str, Any]:
    """Cohere2 text config: 3 sliding-window layers to 1 global (NoPE) layer as in Command R7B / A, the last layer
    always global; a 32-token window so it bites on prompts with images."""
    layer_types = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n_layers)]
    layer_types[-1] = "full_attention"
    return dict(
        text_sizes(tok, n_layers),
        model_type="cohere2",
        rope_parameters=dict(ROPE),
        sliding_window=32,
        layer_types=layer_types,
    )


AYA_SPECIALS = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]


@recipe(
    "aya_vision",
    notes="1-D RoPE, sliding layers; <image> expands to tiles of <|IMG_PATCH|> (the config's image token)",
)
def aya_vision(n_layers: int) -> Parts:
    tiles = ["TILE", "TILE_GLOBAL", *(f"TILE_{i}" for i in range(1, MAX_TILES + 1))]
    tok = word_tokenizer(
        [*CHATML_SPECIALS, "<BOS_TOKEN>", "<image>", *AYA_SPECIALS, *tiles],
        chat_template=chatml_template("<image>"),
        bos="<BOS_TOKEN>",
    )
    downsample = 2
    cfg = AyaVisionConfig(
        text_config=_cohere2_text(tok, n_layers),
        vision_config=_tower("siglip_vision_model", vision_use_head=False),
        image_token_index=_ids(tok)("<|IMG_PATCH|>"),
        downsample_factor=downsample,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    ip = GotOcr2ImageProcessor(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES
    )
    proc = AyaVisionProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=PATCH,
        img_size=TILE,
        downsample_factor=downsample,
        chat_template=tok.chat_template,
    )
    return Parts(cfg, AyaVisionForConditionalGeneration, proc, tok)


@recipe(
    "cohere2_vision",
    notes="1-D RoPE, sliding layers; <|IMG_PATCH|> expands to <|START_OF_IMG|> tiles + line breaks <|END_OF_IMG|>",
)
def cohere2_vision(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*CHATML_SPECIALS, "<BOS_TOKEN>", *AYA_SPECIALS],
        chat_template=chatml_template("<|IMG_PATCH|>"),
        bos="<BOS_TOKEN>",
        extra_special_tokens={
            "boi_token": "<|START_OF_IMG|>",
            "eoi_token": "<|END_OF_IMG|>",
            "image_token": "<|IMG_PATCH|>",
            "img_line_break_token": "<|IMG_LINE_BREAK|>",
        },
    )
    downsample = 2
    cfg = Cohere2VisionConfig(
        text_config=_cohere2_text(tok, n_layers),
        vision_config=_tower("siglip_vision_model", vision_use_head=False),
        image_token_id=_ids(tok)("<|IMG_PATCH|>"),
        downsample_factor=downsample,
        alignment_intermediate_size=64,
        tie_word_embeddings=False,
    )
    # the image processor's patch_size is the tokens per tile side after the pixel shuffle
    ip = Cohere2VisionImageProcessor(  # type: ignore[call-arg]  # patch_size: a class attribute, not a typed kwarg
        size={"height": TILE, "width": TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=MAX_TILES,
        patch_size=TILE // PATCH // downsample,
    )
    proc = Cohere2VisionProcessor(image_processor=ip, tokenizer=tok, chat_template=tok.chat_template)
    return Parts(cfg, Cohere2VisionForConditionalGeneration, proc, tok)
