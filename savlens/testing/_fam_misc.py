"""Tiny recipes of the text LMs Gemma 2, Gemma 3 (text), Qwen3, Phi-3 and of the VLMs Idefics3, SmolVLM, Janus,
DeepSeek-VL, FastVLM and PerceptionLM (the last two with timm vision towers), each with its stock HF processor.

BOS: the text LMs whose real tokenizer has a BOS (Gemma, Phi-3) render it in the chat template (``{{ bos_token }}``,
as their real templates do: text is then tokenised with ``add_special_tokens=False``); the VLMs whose real tokenizer
has one (Idefics3, Janus, DeepSeek-VL, PerceptionLM) get it from the tokenizer's post-processor when the processor
tokenises (``add_special_tokens=True``, the processors' default), so their templates leave it out.
"""

from typing import Any

from transformers import (
    CLIPImageProcessor,
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLImageProcessor,
    DeepseekVLProcessor,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    LlavaProcessor,
    PerceptionLMConfig,
    PerceptionLMForConditionalGeneration,
    PerceptionLMImageProcessor,
    PerceptionLMProcessor,
    PerceptionLMVideoProcessor,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from savlens.testing._core import CHATML_SPECIALS, ROPE, Parts, chatml_template, recipe, text_sizes, word_tokenizer

NO_IMAGE = "{{ raise_exception('this tiny text model has no image token') }}"


def _ids(tok: Any) -> Any:
    """``token -> id``; a KeyError, not silently ``[UNK]``, if a special is missing."""
    return tok.get_vocab().__getitem__


def _alternating(n_layers: int) -> list[str]:
    """Sliding, full, sliding, ... (Gemma 2's own default pattern; Gemma 3's default is 5 sliding : 1 full)."""
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]


# ---------------------------------------------------------------------------------------------------------------
# text LMs
# ---------------------------------------------------------------------------------------------------------------

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
#: Gemma's turn format; the role ``assistant`` is written ``model``; a system message is folded into the first user
#: turn as the real template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ first_user_prefix if loop.first else '' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}" + NO_IMAGE + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma_tokenizer() -> Any:
    return word_tokenizer(
        GEMMA_SPECIALS,
        chat_template=GEMMA_TEMPLATE,
        eos="<end_of_turn>",
        pad="<pad>",
        bos="<bos>",
        extra_words=["model"],
    )


def _eager_only(cls: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """``cls`` with a ``_from_config`` that builds a plain ``cls`` instance, under ``"eager"`` where SDPA is asked
    for: Gemma 2's attention soft-capping has no SDPA path, and HF refuses ``attn_implementation="sdpa"`` for it
    (``from_pretrained`` without an ``attn_implementation`` picks eager itself)."""

    class EagerOnly(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def _from_config(klass, config: Any, **kwargs: Any) -> Any:
            if kwargs.get("attn_implementation") in (None, "sdpa"):
                kwargs["attn_implementation"] = "eager"
            return cls._from_config(config, **kwargs)

    EagerOnly.__name__ = EagerOnly.__qualname__ = f"{cls.__name__}EagerOnly"
    return EagerOnly


@recipe(
    "gemma2",
    vlm=False,
    notes="sliding window 4 on alternate layers; logit soft-capping; eager attention only (HF has no SDPA for it)",
)
def gemma2(n_layers: int) -> Parts:
    tok = _gemma_tokenizer()
    cfg = Gemma2Config(
        **text_sizes(tok, n_layers),
        rope_parameters=dict(ROPE),
        sliding_window=4,
        layer_types=_alternating(n_layers),
        query_pre_attn_scalar=16,  # head_dim, as the real checkpoints
    )
    return Parts(cfg, _eager_only(Gemma2ForCausalLM), tok, tok)


@recipe("gemma3_text", vlm=False, notes="sliding window 4 on alternate layers; q/k norms; local and global RoPE")
def gemma3_text(n_layers: int) -> Parts:
    tok = _gemma_tokenizer()
    cfg = Gemma3TextConfig(
        **text_sizes(tok, n_layers),
        sliding_window=4,
        layer_types=_alternating(n_layers),
        query_pre_attn_scalar=16,
    )
    return Parts(cfg, Gemma3ForCausalLM, tok, tok)


@recipe("qwen3", vlm=False, notes="q/k RMS norms per head; no BOS")
def qwen3(n_layers: int) -> Parts:
    tok = word_tokenizer(CHATML_SPECIALS, chat_template=chatml_template(NO_IMAGE, NO_IMAGE))
    cfg = Qwen3Config(**text_sizes(tok, n_layers), rope_parameters=dict(ROPE))
    return Parts(cfg, Qwen3ForCausalLM, tok, tok)


PHI3_SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}" + NO_IMAGE + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@recipe("phi3", vlm=False, notes="fused `qkv_proj` and `gate_up_proj`")
def phi3(n_layers: int) -> Parts:
    tok = word_tokenizer(PHI3_SPECIALS, chat_template=PHI3_TEMPLATE, eos="<|end|>", pad="<|endoftext|>", bos="<s>")
    sizes = text_sizes(tok, n_layers)
    del sizes["head_dim"]  # Phi-3 has no head_dim field: hidden_size / num_attention_heads = 16
    cfg = Phi3Config(**sizes, rope_parameters=dict(ROPE), original_max_position_embeddings=512)
    return Parts(cfg, Phi3ForCausalLM, tok, tok)


# ---------------------------------------------------------------------------------------------------------------
# Idefics3 and SmolVLM: SigLIP-style tower, pixel-shuffle connector, image splitting into <row_r_col_c> crops
# ---------------------------------------------------------------------------------------------------------------

#: vision tower: 32-pixel crops of 8-pixel patches (16 patches); pixel shuffle by 2 -> 4 tokens per crop
IDEFICS_CROP, IDEFICS_PATCH, IDEFICS_SCALE = 32, 8, 2
IDEFICS_SEQ_LEN = (IDEFICS_CROP // IDEFICS_PATCH) ** 2 // IDEFICS_SCALE**2
#: images are first resized to a longest edge of 64, then split into 32-pixel crops (at most 2 x 2) plus a global view
IDEFICS_LONGEST = 64
ROW_COL = [f"<row_{r + 1}_col_{c + 1}>" for r in range(6) for c in range(6)]
IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", *ROW_COL]


def _idefics_template(prefix: str, video: bool) -> str:
    """The Idefics3 / SmolVLM turn format: ``User:<image>text<end_of_utterance>\\nAssistant:``."""
    video_branch = "{% elif line['type'] == 'video' %}{{ '<video>' }}" if video else ""
    return (
        prefix + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
        "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}" + video_branch + "{% endif %}{% endfor %}{% endif %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


def _idefics_vision() -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IDEFICS_CROP,
        patch_size=IDEFICS_PATCH,
    )


def _idefics_image_kwargs() -> dict[str, Any]:
    return dict(
        size={"longest_edge": IDEFICS_LONGEST},
        max_image_size={"longest_edge": IDEFICS_CROP},
        do_image_splitting=True,
    )


@recipe(
    "idefics3",
    image_sizes=((64, 64), (48, 100)),
    notes="image split into 32-px crops (<row_r_col_c>) + a global view; 4 tokens per crop; `pixel_attention_mask`",
)
def idefics3(n_layers: int) -> Parts:
    tok = word_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", *IDEFICS_SPECIALS],
        chat_template=_idefics_template("", video=False),
        eos="<end_of_utterance>",
        pad="<|end_of_text|>",
        bos="<|begin_of_text|>",
    )
    proc = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**_idefics_image_kwargs()),
        tokenizer=tok,
        image_seq_len=IDEFICS_SEQ_LEN,
        chat_template=tok.chat_template,
    )
    cfg = Idefics3Config(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=_idefics_vision(),
        image_token_id=_ids(tok)("<image>"),
        scale_factor=IDEFICS_SCALE,
        tie_word_embeddings=False,
        **{"pad_token_id": tok.pad_token_id},  # a kwarg only: the deprecated top-level pad id (else 128002)
    )
    return Parts(cfg, Idefics3ForConditionalGeneration, proc, tok)


#: the words of SmolVLM's video prompt ("You are provided the following series of four frames from a 0:00:03
#: [H:MM:SS] video. Frame from 00:00: ...")
VIDEO_INTRO_WORDS = ["provided", "following", "series", "frames", "frame", "video", "h", "mm", "ss"]


@recipe(
    "smolvlm",
    image_sizes=((64, 64), (48, 100)),
    notes="as Idefics3 (crops, `pixel_attention_mask`); batches need nested images (one list per row); video slot",
)
def smolvlm(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*CHATML_SPECIALS, *IDEFICS_SPECIALS, "<video>"],
        chat_template=_idefics_template("<|im_start|>", video=True),
        eos="<end_of_utterance>",
        pad="<|endoftext|>",
        extra_words=VIDEO_INTRO_WORDS,
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "image_token": "<image>",
            "end_of_utterance_token": "<end_of_utterance>",
            "global_image_token": "<global-img>",
            "video_token": "<video>",
        },
    )
    vp = SmolVLMVideoProcessor(
        size={"longest_edge": IDEFICS_CROP}, max_image_size={"longest_edge": IDEFICS_CROP}, num_frames=4, fps=1
    )
    proc = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**_idefics_image_kwargs()),
        tokenizer=tok,
        video_processor=vp,
        image_seq_len=IDEFICS_SEQ_LEN,
        chat_template=tok.chat_template,
    )
    cfg = SmolVLMConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=_idefics_vision(),
        image_token_id=_ids(tok)("<image>"),
        scale_factor=IDEFICS_SCALE,
        tie_word_embeddings=False,
        **{"pad_token_id": tok.pad_token_id},  # a kwarg only: the deprecated top-level pad id (else 128002)
    )
    return Parts(cfg, SmolVLMForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# Janus and DeepSeek-VL: a fixed-size square image (padded to square), one token per patch, an MLP `aligner`
# ---------------------------------------------------------------------------------------------------------------

#: 32-pixel square images of 8-pixel patches: 16 image tokens
DS_IMAGE, DS_PATCH = 32, 8
DS_TOKENS = (DS_IMAGE // DS_PATCH) ** 2
DS_SPECIALS = ["<|begin_of_sentence|>", "<|end_of_sentence|>", "<|pad|>", "<image_placeholder>"]


def _deepseek_template(user: str, assistant: str) -> str:
    """DeepSeek-VL / Janus turns: ``{user}: <image_placeholder>\\ntext\\n\\n{assistant}:`` (a system message is
    written as is, ending in a blank line)."""
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}" + user + ": "
        "{% elif message['role'] == 'assistant' %}" + assistant + ": "
        "{% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}<image_placeholder>\n"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if message['role'] == 'assistant' %}<|end_of_sentence|>{% else %}\n\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}" + assistant + ":{% endif %}"
    )


def _ds_tokenizer(specials: list[str], template: str, **extra: str) -> Any:
    return word_tokenizer(
        specials,
        chat_template=template,
        eos="<|end_of_sentence|>",
        pad="<|pad|>",
        bos="<|begin_of_sentence|>",
        extra_special_tokens={"image_token": "<image_placeholder>", **extra},
    )


def _ds_image_kwargs() -> dict[str, Any]:
    return dict(size={"height": DS_IMAGE, "width": DS_IMAGE}, min_size=8)


@recipe("janus", notes="square padded 32-px image, 16 tokens between <begin_of_image>/<end_of_image>; VQ-VAE unused")
def janus(n_layers: int) -> Parts:
    tok = _ds_tokenizer(
        [*DS_SPECIALS, "<|User|>", "<|Assistant|>", "<begin_of_image>", "<end_of_image>"],
        _deepseek_template("<|User|>", "<|Assistant|>"),
        boi_token="<begin_of_image>",
        eoi_token="<end_of_image>",
    )
    proc = JanusProcessor(
        image_processor=JanusImageProcessor(**_ds_image_kwargs()),
        tokenizer=tok,
        chat_template=tok.chat_template,
        num_image_tokens=DS_TOKENS,
    )
    cfg = JanusConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2.0,
            image_size=DS_IMAGE,
            patch_size=DS_PATCH,
            projection_dim=64,  # the aligner's output: the text hidden size
            depth=2,
            num_image_tokens=DS_TOKENS,
        ),
        # the image-generation half (VQ-VAE, generation embeddings / aligner / head): as small as GroupNorm(32) allows
        vq_config=dict(
            embed_dim=8,
            num_embeddings=64,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            projection_dim=64,
            image_token_embed_dim=64,
        ),
        image_token_id=_ids(tok)("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return Parts(cfg, JanusForConditionalGeneration, proc, tok)


@recipe("deepseek_vl", notes="square padded 32-px image, 16 tokens; SigLIP tower, MLP `aligner`")
def deepseek_vl(n_layers: int) -> Parts:
    tok = _ds_tokenizer(DS_SPECIALS, _deepseek_template("User", "Assistant"))
    proc = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessor(**_ds_image_kwargs()),
        tokenizer=tok,
        chat_template=tok.chat_template,
        num_image_tokens=DS_TOKENS,
    )
    cfg = DeepseekVLConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=DS_IMAGE,
            patch_size=DS_PATCH,
            vision_use_head=False,
        ),
        image_token_id=_ids(tok)("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return Parts(cfg, DeepseekVLForConditionalGeneration, proc, tok)


# ---------------------------------------------------------------------------------------------------------------
# FastVLM and PerceptionLM: timm towers behind `TimmWrapperModel` (built by timm with pretrained=False)
# ---------------------------------------------------------------------------------------------------------------

#: FastViT-MCi3 in small: a stem (stride 4), a RepMixer stage, a downsampling attention stage (stride 8 in all),
#: then `final_conv` doubling the channels: a 32-pixel image gives 4 x 4 = 16 tokens of 64 channels
FASTVIT_IMAGE, FASTVIT_STRIDE, FASTVIT_DIMS = 32, 8, (16, 32)
FASTVIT_ARGS: dict[str, Any] = dict(
    inference_mode=True,
    layers=(2, 2),
    embed_dims=FASTVIT_DIMS,
    mlp_ratios=(2, 2),
    se_downsamples=(False, False),
    downsamples=(False, True),
    pos_embs=(None, None),
    token_mixers=("repmixer", "attention"),
    lkc_use_act=True,
    stem_use_scale_branch=False,
)
#: FastVLM's template puts a message's images first, then each text item after a newline
FASTVLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@recipe("fast_vlm", notes="timm FastViT tower (conv + attention stages), 32-px image -> 16 tokens; LlavaProcessor")
def fast_vlm(n_layers: int) -> Parts:
    tok = word_tokenizer([*CHATML_SPECIALS, "<image>"], chat_template=FASTVLM_TEMPLATE, image_token="<image>")
    ip = CLIPImageProcessor(
        size={"shortest_edge": FASTVIT_IMAGE},
        crop_size={"height": FASTVIT_IMAGE, "width": FASTVIT_IMAGE},
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=FASTVIT_STRIDE,  # the tower's total stride
        vision_feature_select_strategy="full",
        chat_template=tok.chat_template,
    )
    cfg = FastVlmConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="qwen2", rope_parameters=dict(ROPE)),
        vision_config=dict(
            model_type="timm_wrapper",
            architecture="fastvit_mci3",
            hidden_size=2 * FASTVIT_DIMS[-1],  # timm's num_features (after `final_conv`)
            do_pooling=False,
            model_args=dict(FASTVIT_ARGS),
        ),
        image_token_index=_ids(tok)("<image>"),
        image_seq_length=(FASTVIT_IMAGE // FASTVIT_STRIDE) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return Parts(cfg, FastVlmForConditionalGeneration, proc, tok)


#: PE-core ViT in small: 32-pixel tiles of 8-pixel patches (16 patches + CLS), 2-D RoPE; the projector pools 2 x 2
PLM_TILE, PLM_PATCH, PLM_POOL = 32, 8, 2
PLM_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
PLM_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = 'You are a helpful assistant.' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}{%- else %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<|image|>' }}{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<|video|>' }}{%- endfor %}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{- content['text'] | trim }}"
    "{%- endfor %}{%- endif %}{{ '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


@recipe(
    "perception_lm",
    notes="timm PE ViT tower (CLS dropped); thumbnail + 1 tile of 32 px, 4 tokens each after 2x2 pooling",
)
def perception_lm(n_layers: int) -> Parts:
    tok = word_tokenizer(
        [*PLM_SPECIALS, "<|image|>", "<|video|>"],
        chat_template=PLM_TEMPLATE,
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        bos="<|begin_of_text|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    # one tile besides the thumbnail: with more, images of different aspect get different tile counts, and the
    # stock image processor cannot stack those into one `pixel_values` tensor (a batch of two sizes fails)
    ip = PerceptionLMImageProcessor(tile_size=PLM_TILE, max_num_tiles=1, vision_input_type="thumb+tile")
    vp = PerceptionLMVideoProcessor(size={"height": PLM_TILE, "width": PLM_TILE})
    proc = PerceptionLMProcessor(
        video_processor=vp,
        image_processor=ip,
        tokenizer=tok,
        patch_size=PLM_PATCH,
        pooling_ratio=PLM_POOL,
        chat_template=tok.chat_template,
    )
    cfg = PerceptionLMConfig(
        text_config=dict(text_sizes(tok, n_layers), model_type="llama", rope_parameters=dict(ROPE)),
        vision_config=dict(
            model_type="timm_wrapper",
            architecture="vit_pe_core_large_patch14_336",
            do_pooling=False,
            model_args=dict(
                embed_dim=32,
                depth=2,
                num_heads=2,
                mlp_ratio=2.0,
                img_size=(PLM_TILE, PLM_TILE),
                patch_size=PLM_PATCH,
                ref_feat_shape=(PLM_TILE // PLM_PATCH, PLM_TILE // PLM_PATCH),
                global_pool="",
                use_post_transformer_norm=False,
                init_values=0.1,
            ),
        ),
        vision_use_cls_token=True,
        projector_pooling_ratio=PLM_POOL,
        image_token_id=_ids(tok)("<|image|>"),
        video_token_id=_ids(tok)("<|video|>"),
        tie_word_embeddings=False,
    )
    return Parts(cfg, PerceptionLMForConditionalGeneration, proc, tok)
