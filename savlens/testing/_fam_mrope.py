"""Tiny recipes of Qwen3-VL, GLM-4.1V, Gemma 3, PaliGemma, Molmo 2, Llama 4 and Ovis 2.5 (stock processors).

Each text model has the shared tiny sizes (:func:`~savlens.testing._core.text_sizes`) plus the family's own text
fields (mRoPE sections, sliding window, chunked attention, NoPE layers); each vision tower has hidden size 32,
2 layers and 2 heads, and the processors are configured so that a 48-100 pixel image gives 4 to 40 image tokens.
"""

from typing import Any

from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2VideoProcessor,
    Ovis2_5Config,
    Ovis2_5ForConditionalGeneration,
    Ovis2_5ImageProcessor,
    Ovis2_5Processor,
    Ovis2_5VideoProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    SiglipImageProcessor,
)
from transformers.models.llama4.processing_llama4 import chat_template as LLAMA4_TEMPLATE

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer

# Qwen3-VL: patch 16, 2x2 merge -> one image token per 32x32 pixels; 64x64 -> 4 tokens, 48x100 -> 6
QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS = 64 * 64, 128 * 128


def _ids(tok: Any) -> Any:
    """``token -> id`` that raises KeyError (not silently ``[UNK]``) for a token the tokenizer lacks."""
    return tok.get_vocab().__getitem__


@recipe("qwen3_vl", notes="interleaved mRoPE from `image_grid_thw` + `mm_token_type_ids`; deepstack features")
def qwen3_vl(n_layers: int) -> Parts:
    specials = CHATML_SPECIALS + ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    template = chatml_template(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    )
    tok = word_tokenizer(specials, chat_template=template)
    ids = _ids(tok)
    cfg = Qwen3VLConfig(
        text_config=dict(
            text_sizes(tok, n_layers),
            rope_parameters=dict(ROPE, mrope_section=[4, 2, 2], mrope_interleaved=True),
        ),
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
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(patch_size=16, temporal_patch_size=2, merge_size=2)
    ip = Qwen2VLImageProcessor(size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}, **kw)
    vp = Qwen3VLVideoProcessor(size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": 4 * QWEN3_MAX_PIXELS}, **kw)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template)
    return Parts(cfg, Qwen3VLForConditionalGeneration, proc, tok)


GLM_SPECIALS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
]
#: GLM-4.1V's chat format: ``[gMASK]<sop><|user|>\n...<|assistant|>\n``
GLM_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# GLM-4.1V: patch 14, 2x2 merge -> one image token per 28x28 pixels; the pixel budgets count 2 frames
GLM_MIN_PIXELS, GLM_MAX_PIXELS = 2 * 56 * 56, 2 * 112 * 112


@recipe("glm4v", notes="mRoPE (partial rotary, half of each head) from `image_grid_thw` + `mm_token_type_ids`")
def glm4v(n_layers: int) -> Parts:
    tok = word_tokenizer(GLM_SPECIALS, chat_template=GLM_TEMPLATE, eos="<|user|>")
    ids = _ids(tok)
    text = text_sizes(tok, n_layers)
    text.pop("head_dim")  # GLM-4.1V's attention takes hidden_size // num_attention_heads (= 16)
    cfg = Glm4vConfig(
        text_config=dict(
            text,
            rope_parameters=dict(ROPE, mrope_section=[2, 1, 1], partial_rotary_factor=0.5),
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            image_size=56,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=64,
        ),
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
    ip = Glm4vImageProcessor(size={"shortest_edge": GLM_MIN_PIXELS, "longest_edge": GLM_MAX_PIXELS}, **kw)
    vp = Glm4vVideoProcessor(
        size={"shortest_edge": GLM_MIN_PIXELS, "longest_edge": 4 * GLM_MAX_PIXELS},
        max_image_size={"longest_edge": 4 * GLM_MAX_PIXELS},
        **kw,
    )
    proc = Glm4vProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=GLM_TEMPLATE)
    return Parts(cfg, Glm4vForConditionalGeneration, proc, tok)


#: Gemma's chat format: ``<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n``; a system message
#: becomes a user turn (the real template folds it into the first user turn)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE_MARKUP"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
# Gemma 3: a 64x64 SigLIP input in 8x8 patches (64 patches) pooled 2x2 into 16 image tokens per image
GEMMA3_IMAGE, GEMMA3_TOKENS = 64, 16


@recipe(
    "gemma3",
    notes="1-D RoPE (local/global theta); sliding window 4 on alternate layers; "
    "`token_type_ids`: bidirectional attention within an image",
)
def gemma3(n_layers: int) -> Parts:
    mm = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
    template = GEMMA_TEMPLATE.replace("IMAGE_MARKUP", "<start_of_image>")
    tok = word_tokenizer(
        GEMMA_SPECIALS + list(mm.values()),
        chat_template=template,
        eos="<end_of_turn>",
        pad="<pad>",
        bos="<bos>",
        extra_words=["model"],
        extra_special_tokens=mm,
    )
    ids = _ids(tok)
    cfg = Gemma3Config(
        text_config=dict(
            text_sizes(tok, n_layers),
            query_pre_attn_scalar=16,
            sliding_window=4,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)],
            rope_parameters={
                "full_attention": dict(ROPE, rope_theta=1_000_000.0),
                "sliding_attention": dict(ROPE),
            },
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=GEMMA3_IMAGE,
            patch_size=8,
            vision_use_head=False,
        ),
        mm_tokens_per_image=GEMMA3_TOKENS,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    ip = Gemma3ImageProcessor(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=template, image_seq_length=GEMMA3_TOKENS)
    return Parts(cfg, Gemma3ForConditionalGeneration, proc, tok)


#: PaliGemma has no chat template; this one renders the prompt PaliGemma is fed raw (``<image>`` per image, then
#: the text; the processor adds ``<bos>`` after the images and a closing newline), so chat and raw text agree
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endif %}{% endfor %}"
)
# PaliGemma: a 32x32 SigLIP input in 8x8 patches -> 16 image tokens per image
PALIGEMMA_IMAGE, PALIGEMMA_PATCH = 32, 8


@recipe(
    "paligemma",
    text_only_rows=False,
    notes="1-D RoPE from 1; prefix-LM: `token_type_ids` make image + prompt bidirectional",
)
def paligemma(n_layers: int) -> Parts:
    tok = word_tokenizer(GEMMA_SPECIALS, chat_template=PALIGEMMA_TEMPLATE, eos="<eos>", pad="<pad>", bos="<bos>")
    n_tokens = (PALIGEMMA_IMAGE // PALIGEMMA_PATCH) ** 2
    # image_seq_length: as in PaliGemma's preprocessor_config.json; the processor reads it from the image processor
    ip = SiglipImageProcessor(size={"height": PALIGEMMA_IMAGE, "width": PALIGEMMA_IMAGE}, image_seq_length=n_tokens)
    # the processor adds <image> and PaliGemma's 1,024 <locXXXX> + 128 <segXXX> tokens to the tokenizer
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok, chat_template=PALIGEMMA_TEMPLATE)
    text = text_sizes(tok, n_layers)
    cfg = PaliGemmaConfig(
        text_config=dict(text, model_type="gemma", rope_parameters=dict(ROPE)),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=PALIGEMMA_IMAGE,
            patch_size=PALIGEMMA_PATCH,
            vision_use_head=False,
        ),
        image_token_index=proc.image_token_id,
        vocab_size=text["vocab_size"],
        projection_dim=64,
        hidden_size=64,
        tie_word_embeddings=False,
    )
    return Parts(cfg, PaliGemmaForConditionalGeneration, proc, tok)


MOLMO2_SPECIALS = [
    "<|image|>",
    "<|video|>",
    "<im_patch>",
    "<im_col>",
    "<im_start>",
    "<low_res_im_start>",
    "<frame_start>",
    "<im_end>",
    "<frame_end>",
    "<im_low>",
]
#: Molmo 2's chat format: every image of the conversation first (``<|image|>``, or ``Image 1<|image|>Image 2...``
#: for several), then every video (``<|video|>``), then ChatML turns. The real template also raises unless roles
#: alternate user/assistant; this one renders a system message as a ChatML system turn.
MOLMO2_TEMPLATE = (
    "{% set n = namespace(images=0, videos=0) %}{% for message in messages %}"
    "{% if message['content'] is not string %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{% set n.images = n.images + 1 %}"
    "{% elif item['type'] == 'video' %}{% set n.videos = n.videos + 1 %}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if n.images == 1 %}<|image|>{% else %}{% for i in range(n.images) %}Image {{ i + 1 }}<|image|>"
    "{% endfor %}{% endif %}{% for i in range(n.videos) %}<|video|>{% endfor %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Molmo 2: 28x28 crops in 7x7 patches (4x4 per crop), pooled 2x2; a low-res view (2x2 tokens) plus overlapping
# high-res crops (1-patch margins): 64x64 -> 4 + 9 image tokens, 48x100 -> 4 + 8 (plus <im_col> row ends)
MOLMO2_CROP, MOLMO2_PATCH = 28, 7


@recipe(
    "molmo2",
    notes="1-D RoPE; `mm_token_type_ids`: all image tokens attend bidirectionally; image features added to "
    "the <im_patch> embeddings",
)
def molmo2(n_layers: int) -> Parts:
    tok = word_tokenizer(
        CHATML_SPECIALS + MOLMO2_SPECIALS,
        chat_template=MOLMO2_TEMPLATE,
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    ids = _ids(tok)
    n_patches = (MOLMO2_CROP // MOLMO2_PATCH) ** 2
    text = text_sizes(tok, n_layers)
    cfg = Molmo2Config(
        text_config=dict(text, additional_vocab_size=0, rope_parameters=dict(ROPE)),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            image_size=[MOLMO2_CROP, MOLMO2_CROP],
            patch_size=MOLMO2_PATCH,
            num_position_embeddings=n_patches,
        ),
        adapter_config=dict(
            vision_feature_layer=[-1, -2],
            hidden_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=64,
            text_hidden_size=text["hidden_size"],
        ),
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(
        size={"height": MOLMO2_CROP, "width": MOLMO2_CROP}, patch_size=MOLMO2_PATCH, pooling_size=[2, 2]
    )
    ip = Molmo2ImageProcessor(max_crops=4, overlap_margins=[1, 1], **kw)
    vp = Molmo2VideoProcessor(num_frames=4, **kw)
    proc = Molmo2Processor(image_processor=ip, video_processor=vp, tokenizer=tok, chat_template=tok.chat_template)
    return Parts(cfg, Molmo2ForConditionalGeneration, proc, tok)


LLAMA4_SPECIALS = [
    "<|begin_of_text|>",
    "<|eot|>",
    "<|finetune_right_pad|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
]
# Llama 4: 32x32 tiles in 8x8 patches, pixel-shuffled 2x2 -> 4 <|patch|> tokens per tile; up to 4 tiles plus the
# global view: 64x64 -> 2x2 tiles (20 tokens), 48x100 -> 1x3 tiles or fewer
LLAMA4_TILE, LLAMA4_PATCH = 32, 8


@recipe(
    "llama4",
    notes="1-D RoPE; chunked attention (chunk 4) on RoPE layers, global NoPE layers; MoE every other layer",
)
def llama4(n_layers: int) -> Parts:
    tok = word_tokenizer(
        LLAMA4_SPECIALS,
        chat_template=LLAMA4_TEMPLATE,
        eos="<|eot|>",
        pad="<|finetune_right_pad|>",
        bos="<|begin_of_text|>",
    )
    ids = _ids(tok)
    cfg = Llama4Config(
        text_config=dict(
            text_sizes(tok, n_layers),
            intermediate_size_mlp=128,
            num_local_experts=2,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
            no_rope_layer_interval=2,
            attention_chunk_size=4,
            rope_parameters=dict(ROPE),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=128,  # = hidden_size / pixel_shuffle_ratio**2, as the adapter requires
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=LLAMA4_TILE,
            patch_size=LLAMA4_PATCH,
            pixel_shuffle_ratio=0.5,
            vision_output_dim=64,
            projector_input_dim=64,
            projector_output_dim=64,
            rope_parameters=dict(ROPE),
        ),
        boi_token_index=ids("<|image_start|>"),
        eoi_token_index=ids("<|image_end|>"),
        image_token_index=ids("<|patch|>"),
        tie_word_embeddings=False,
    )
    ip = Llama4ImageProcessor(size={"height": LLAMA4_TILE, "width": LLAMA4_TILE}, max_patches=4)
    proc = Llama4Processor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=LLAMA4_PATCH,
        pixel_shuffle_ratio=0.5,
        chat_template=LLAMA4_TEMPLATE,
    )
    return Parts(cfg, Llama4ForConditionalGeneration, proc, tok)


OVIS_MM = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<|image_start|>",
    "image_end_token": "<|image_end|>",
    "video_start_token": "<|video_start|>",
    "video_end_token": "<|video_end|>",
}
# Ovis 2.5: patch 16, 2x2 merge -> one image token per 32x32 pixels: 64x64 -> 4 tokens, 48x100 -> 6
OVIS_MIN_PIXELS, OVIS_MAX_PIXELS = 64 * 64, 128 * 128


@recipe(
    "ovis2_5",
    notes="1-D RoPE (Qwen3); image = start indicator + probabilistic visual tokens + end indicator",
)
def ovis2_5(n_layers: int) -> Parts:
    template = chatml_template("<|image_pad|>", "<|video_pad|>")
    tok = word_tokenizer(CHATML_SPECIALS + list(OVIS_MM.values()), chat_template=template, extra_special_tokens=OVIS_MM)
    ids = _ids(tok)
    cfg = Ovis2_5Config(
        text_config=dict(text_sizes(tok, n_layers), model_type="qwen3", rope_parameters=dict(ROPE)),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            image_size=64,
            window_size=64,
            layer_types=["window_attention", "full_attention"],
            temporal_patch_size=1,
            vocab_size=64,
            num_visual_indicator_tokens=4,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        image_start_token_id=ids("<|image_start|>"),
        image_end_token_id=ids("<|image_end|>"),
        video_start_token_id=ids("<|video_start|>"),
        video_end_token_id=ids("<|video_end|>"),
        tie_word_embeddings=False,
    )
    kw: dict[str, Any] = dict(patch_size=16, merge_size=2, temporal_patch_size=1)
    ip = Ovis2_5ImageProcessor(size={"shortest_edge": OVIS_MIN_PIXELS, "longest_edge": OVIS_MAX_PIXELS}, **kw)
    vp = Ovis2_5VideoProcessor(size={"shortest_edge": OVIS_MIN_PIXELS, "longest_edge": OVIS_MAX_PIXELS}, **kw)
    proc = Ovis2_5Processor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template)
    return Parts(cfg, Ovis2_5ForConditionalGeneration, proc, tok)
