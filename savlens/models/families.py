"""The built-in family specs: one declarative `ModelSpec` each. Adding a family = adding one spec here
(or in a file of its own) plus its contract tests (tests/test_models.py runs every family)."""

from savlens.models.spec import ModelSpec

#: Decoder-only LMs with Llama-style attention (q/k/v/o projections, RoPE, optional GQA).
DECODER_LM = ModelSpec(
    family="decoder_lm",
    classes=(
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "MistralForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma2ForCausalLM",
    ),
    blocks=("model.layers", "model.model.layers"),
    final_norm=("model.norm",),
    unembed=("lm_head",),
)

#: LLaVA-OneVision: SigLIP tower -> 2-layer MLP projector -> Qwen2 LM (anyres tiles, image newline).
LLAVA_ONEVISION = ModelSpec(
    family="llava_onevision",
    classes=("LlavaOnevisionForConditionalGeneration",),
    blocks=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.norm", "language_model.model.norm"),
    unembed=("lm_head", "language_model.lm_head"),
    vision_encoder=(
        "model.vision_tower.vision_model.encoder.layers.-1",
        "model.vision_tower.encoder.layers.-1",
        "vision_tower.vision_model.encoder.layers.-1",
    ),
    vision_projector=("model.multi_modal_projector", "multi_modal_projector"),
    text_config="text_config",
    image_token_attr=("image_token_id", "image_token_index"),
    video_token_attr=("video_token_id", "video_token_index"),
    positions="mask_cumsum",
    vision_dims=("vision_batch", "vision_pos", "d_vision"),
    projector_dims=("vision_batch", "vision_pos", "d_model"),
    nested_images=True,
)

_QWEN_COMMON = dict(
    blocks=("model.language_model.layers", "model.layers"),
    final_norm=("model.language_model.norm", "model.norm"),
    unembed=("lm_head",),
    vision_encoder=("model.visual.blocks.-1", "visual.blocks.-1"),
    vision_projector=("model.visual.merger", "visual.merger"),
    text_config="text_config",
    image_token_attr=("image_token_id",),
    video_token_attr=("video_token_id",),
    positions="mrope",
    # the Qwen vision tower packs the patches of all images on one axis
    vision_dims=("vision_pos", "d_vision"),
    projector_dims=("image_token", "d_model"),
)

#: Qwen2-VL: ViT with 2-D RoPE and a patch merger; LM with multimodal rotary positions (mRoPE).
QWEN2_VL = ModelSpec(family="qwen2_vl", classes=("Qwen2VLForConditionalGeneration",), **_QWEN_COMMON)  # type: ignore[arg-type]

#: Qwen2.5-VL: as Qwen2-VL with windowed vision attention and a gated vision MLP.
QWEN2_5_VL = ModelSpec(
    family="qwen2_5_vl",
    classes=("Qwen2_5_VLForConditionalGeneration",),
    **_QWEN_COMMON,  # type: ignore[arg-type]
)

#: savlens' own tiny VLM (savlens.zoo.tiny_vlm): EfficientNet-Lite0 -> trained MLP projector -> SmolLM2-135M.
TINY_VLM = ModelSpec(
    family="tiny_vlm",
    classes=("TinyVLM",),
    blocks=("language_model.model.layers",),
    final_norm=("language_model.model.norm",),
    unembed=("language_model.lm_head",),
    vision_encoder=("vision_tower.head_act",),  # the CNN's output grid (1280 channels), what the projector reads
    vision_projector=("multi_modal_projector",),
    text_config="text_config",
    image_token_attr=("image_token_id",),
    video_token_attr=("video_token_id",),
    positions="mask_cumsum",
    vision_dims=("vision_batch", "d_vision", "vision_height", "vision_width"),  # a CNN's NCHW grid
    projector_dims=("vision_batch", "vision_pos", "d_model"),
)

#: Specs consulted before inference: only where inference cannot decide (the tiny VLM's vision hook is the CNN's
#: output grid, not its last block).
BUILTIN = (TINY_VLM,)

#: Hand-written specs of families that inference now serves; kept as the reference the inferred paths are tested
#: against (tests/test_families.py).
REFERENCE = (DECODER_LM, LLAVA_ONEVISION, QWEN2_VL, QWEN2_5_VL)


#: What inference cannot read off a model, by ``config.model_type``: applied to the inferred spec.
#: PaliGemma counts positions from 1, and its processor corrupts a text-only row in a batch with images (it
#: splices ``<bos>`` into the row's text), so savlens refuses such batches.
#: Mllama's image processor gives a text-only row no ``aspect_ratio_ids`` row, so it cannot sit beside image rows.
#: GLM-4V's forward counts its video frames as image tokens too (both are ``<|image|>``), Molmo 2 refuses
#: ``pixel_values`` with ``pixel_values_videos``, and SmolVLM's processor drops the images of a batch with videos:
#: none of them takes images and videos in one batch.
FAMILY_FACTS: dict[str, dict[str, object]] = {
    "paligemma": {"position_offset": 1, "text_rows_with_images": False},
    "mllama": {"text_rows_with_images": False},
    "glm4v": {"videos_with_images": False},
    "molmo2": {"videos_with_images": False},
    "smolvlm": {"videos_with_images": False},
}
