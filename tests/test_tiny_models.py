"""Tests of savlens.testing.tiny: tiny offline HF models, their tokenizers, processors and sample images."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jinja2
import numpy as np
import pytest
import torch
from transformers import (
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)

from savlens.testing.tiny import (
    FAMILIES,
    LLAVA_PINPOINTS,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    build_tiny,
    build_tokenizer,
    sample_images,
)

torch.set_num_threads(1)

IMAGE_TOKEN = {"llava_onevision": "<image>", "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>"}
PROCESSOR_CLASS = {
    "llava_onevision": LlavaOnevisionProcessor,
    "qwen2_vl": Qwen2VLProcessor,
    "qwen2_5_vl": Qwen2_5_VLProcessor,
}
# image tokens per single image, by PIL size (width, height); measured on these tiny processors
IMAGE_TOKENS = {
    "llava_onevision": {(64, 64): 88, (48, 100): 56, (32, 32): 36},
    "qwen2_vl": {(64, 64): 4, (48, 100): 8, (32, 32): 4},
    "qwen2_5_vl": {(64, 64): 4, (48, 100): 8, (32, 32): 4},
}


def user_turn(text, n_images=0):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return request.param, build_tiny(request.param)


def _text_cfg(model):
    return model.config.get_text_config()


# ---------------------------------------------------------------- build


def test_build_config_and_types(tiny):
    family, tm = tiny
    cfg = _text_cfg(tm.model)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 4, 2)
    assert (cfg.head_dim, cfg.intermediate_size, cfg.num_hidden_layers) == (16, 128, 3)
    assert cfg.max_position_embeddings == 512
    assert len(tm.tokenizer) <= cfg.vocab_size < len(tm.tokenizer) + 16
    assert cfg.eos_token_id == tm.tokenizer.eos_token_id == tm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert cfg.pad_token_id == tm.tokenizer.pad_token_id == pad
    assert tm.model.generation_config.eos_token_id == tm.tokenizer.eos_token_id
    assert not tm.model.training
    assert tm.model.dtype == torch.float32
    assert tm.model.config._attn_implementation == "sdpa"
    assert isinstance(tm.tokenizer, PreTrainedTokenizerFast)
    assert tm.tokenizer.padding_side == "left"
    if family in TEXT_FAMILIES:
        assert tm.processor is tm.tokenizer
    else:
        assert isinstance(tm.processor, PROCESSOR_CLASS[family])
        assert tm.processor.tokenizer is tm.tokenizer
        assert tm.processor.image_token_id == tm.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[family])
    if family == "mistral":
        assert cfg.sliding_window is None


def test_vlm_config_matches_processor():
    tm = build_tiny("llava_onevision")
    assert tm.model.config.image_grid_pinpoints == LLAVA_PINPOINTS
    assert tm.processor.image_processor.image_grid_pinpoints == LLAVA_PINPOINTS
    assert tm.model.config.vision_feature_select_strategy == "full"
    assert tm.processor.vision_feature_select_strategy == "full"
    assert tm.processor.num_image_tokens == 16
    assert tm.model.config.image_token_index == tm.tokenizer.convert_tokens_to_ids("<image>")
    for family in ("qwen2_vl", "qwen2_5_vl"):
        tm = build_tiny(family)
        ids = tm.tokenizer.convert_tokens_to_ids
        assert tm.model.config.image_token_id == ids("<|image_pad|>")
        assert tm.model.config.video_token_id == ids("<|video_pad|>")
        assert tm.model.config.vision_start_token_id == ids("<|vision_start|>")
        assert tm.model.config.vision_end_token_id == ids("<|vision_end|>")
        assert tm.model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
        size = tm.processor.image_processor.size
        assert (size["shortest_edge"], size["longest_edge"]) == (56 * 56, 112 * 112)
        assert tm.processor.image_processor.merge_size == 2
        assert tm.model.config.vision_config.spatial_merge_size == 2


def test_build_options():
    tm = build_tiny("qwen2_vl", attn_implementation="eager", dtype=torch.bfloat16, n_layers=2)
    assert tm.model.dtype == torch.bfloat16
    assert len(tm.model.model.language_model.layers) == 2
    assert tm.model.config._attn_implementation == "eager"
    # peaked weights are drawn in fp32 and cast: the bf16 model holds the rounded fp32 weights
    w32 = build_tiny("qwen2_vl", n_layers=2).model.model.language_model.layers[1].mlp.up_proj.weight
    w16 = tm.model.model.language_model.layers[1].mlp.up_proj.weight
    assert torch.equal(w16, w32.to(torch.bfloat16))
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny("gpt2")


# ---------------------------------------------------------------- determinism and weights


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_weights(family):
    rng_before = torch.get_rng_state()
    sd0 = build_tiny(family, seed=0).model.state_dict()
    assert torch.equal(rng_before, torch.get_rng_state()), "build_tiny must not consume the global RNG"
    sd0b = build_tiny(family, seed=0).model.state_dict()
    sd1 = build_tiny(family, seed=1).model.state_dict()
    assert sd0.keys() == sd0b.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd0b[k]) for k in sd0)
    differing = [k for k in sd0 if not torch.equal(sd0[k], sd1[k])]
    two_d = [k for k in sd0 if sd0[k].dim() >= 2]
    assert set(two_d) <= set(differing)


def test_peaked_init_and_families_differ():
    peaked = build_tiny("llama").model.model.layers[0].self_attn.q_proj.weight
    plain = build_tiny("llama", peaked=False).model.model.layers[0].self_attn.q_proj.weight
    assert abs(peaked.std().item() - 0.15) < 0.01
    assert abs(plain.std().item() - 0.02) < 0.005
    # same names and shapes, same seed: the family still changes the weights
    mistral = build_tiny("mistral").model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(peaked, mistral)


# ---------------------------------------------------------------- tokenizer and chat template


@pytest.mark.parametrize("kind", ["plain", "qwen", "llava"])
def test_tokenizer_words_and_specials(kind):
    tok = build_tokenizer(kind)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    toks = tok.tokenize("What color is the big circle? Answer in 12 words, please!")
    expected = "what color is the big circle ? answer in 1 2 words , please !"
    assert toks == expected.split(" ")
    assert tok.tokenize("xylophone") == ["[UNK]"]
    assert tok.decode(tok("is the sky blue ?")["input_ids"]) == "is the sky blue?"
    enc = tok(["yes", "is the sky blue"], padding=True)
    assert enc["input_ids"][0] == [tok.pad_token_id] * 3 + [tok.convert_tokens_to_ids("yes")]
    assert enc["attention_mask"][0] == [0, 0, 0, 1]


def test_tokenizer_kind_from_family():
    assert build_tokenizer("qwen2_5_vl").get_vocab() == build_tokenizer("qwen").get_vocab()
    assert "<image>" in build_tokenizer("llava_onevision").get_vocab()
    assert "<image>" not in build_tokenizer("llama").get_vocab()
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("bert")


def test_chat_template_text():
    tok = build_tokenizer("plain")
    msgs = [{"role": "system", "content": "you are helpful ."}, {"role": "user", "content": "hi"}]
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert out == (
        "<|im_start|>system\nyou are helpful .<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    as_items = [msgs[0], {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert tok.apply_chat_template(as_items, add_generation_prompt=True, tokenize=False) == out
    assert tok.apply_chat_template(msgs, tokenize=False).endswith("hi<|im_end|>\n")
    with pytest.raises(jinja2.TemplateError, match="no image token"):
        tok.apply_chat_template(user_turn("what", 1), tokenize=False)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_chat_template_images(family):
    proc = build_tiny(family).processor
    content = [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]
    msgs = [{"role": "user", "content": content}]
    out = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if family == "llava_onevision":
        assert out == "<|im_start|>user\n<image>\nand<image>\n<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert out.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
        assert out.count("<|image_pad|>") == 2
        assert out.startswith("<|im_start|>user\n<|vision_start|>")
        assert out.endswith("<|im_end|>\n<|im_start|>assistant\n")
    no_img = proc.apply_chat_template(user_turn("hi"), add_generation_prompt=True, tokenize=False)
    assert IMAGE_TOKEN[family] not in no_img


# ---------------------------------------------------------------- forward on processor-built batches

ROWS = [
    (1, "what color is it ?"),
    (1, "describe the picture in one short word please ."),
    (0, "how many dogs are there ?"),
]


def _batch(family, tm, rows=ROWS):
    """Texts and images of a left-padded batch; a VLM gets images of different sizes and one text-only row."""
    vlm = family in VLM_FAMILIES
    texts = [
        tm.processor.apply_chat_template(
            user_turn(t, k) if vlm else [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for k, t in rows
    ]
    images, pool = [], iter(sample_images(sum(k for k, _ in rows)))
    for k, _ in rows:
        images.append([next(pool) for _ in range(k if vlm else 0)])
    return texts, images


def _encode(proc, texts, images):
    flat = [im for row in images for im in row]
    kw = {"images": flat} if flat else {}
    return dict(proc(text=texts, padding=True, return_tensors="pt", **kw))


def test_forward_padded_batch(tiny):
    family, tm = tiny
    texts, images = _batch(family, tm)
    enc = _encode(tm.processor, texts, images)
    mask = enc["attention_mask"]
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3, "rows must differ in length"
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all()), "padding must be on the left"
    assert int((enc["input_ids"] == tm.tokenizer.unk_token_id).sum()) == 0
    with torch.no_grad():
        logits = tm.model(**enc).logits
    assert logits.shape == (3, mask.shape[1], _text_cfg(tm.model).vocab_size)
    assert bool(torch.isfinite(logits).all())
    assert logits[:, -1].std().item() > 0.5  # peaked weights: far from a flat distribution
    # each row alone gives the same last-token logits (fp32, max |logit| ~ 4)
    for i, (text, imgs) in enumerate(zip(texts, images)):
        with torch.no_grad():
            alone = tm.model(**_encode(tm.processor, [text], [imgs])).logits[0, -1]
        torch.testing.assert_close(alone, logits[i, -1], atol=5e-5, rtol=0)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_token_counts(family):
    tm = build_tiny(family)
    texts, images = _batch(family, tm)
    enc = _encode(tm.processor, texts, images)
    per_row = (enc["input_ids"] == tm.processor.image_token_id).sum(1).tolist()
    expected = [sum(IMAGE_TOKENS[family][im.size] for im in row) for row in images]
    assert [im.size for row in images for im in row] == [(64, 64), (48, 100)]
    assert per_row == expected
    if family == "llava_onevision":
        assert enc["image_sizes"].tolist() == [[64, 64], [100, 48]]  # (height, width)
        assert enc["pixel_values"].shape[2:] == (3, 32, 32)
    else:
        grid = enc["image_grid_thw"]
        assert grid.tolist() == [[1, 4, 4], [1, 8, 4]]
        assert per_row[:2] == (grid.prod(1) // 4).tolist()
        assert enc["pixel_values"].shape == (int(grid.prod(1).sum()), 3 * 2 * 14 * 14)
        assert enc["mm_token_type_ids"].sum(1).tolist() == per_row
    # the model accepts the count (a mismatch raises "Image features and image tokens do not match")
    with torch.no_grad():
        assert torch.isfinite(tm.model(**enc).logits).all()


def test_llava_multi_image_row():
    tm = build_tiny("llava_onevision")
    proc = tm.processor
    texts = [
        proc.apply_chat_template(user_turn("same ?", k), add_generation_prompt=True, tokenize=False) for k in (1, 2)
    ]
    imgs = sample_images(3)
    enc = tm.processor(text=texts, images=[[imgs[0]], [imgs[1], imgs[2]]], padding=True, return_tensors="pt")
    # a multi-image row uses the base tile only: 16 tokens + 1 newline per image
    assert (enc["input_ids"] == tm.processor.image_token_id).sum(1).tolist() == [88, 34]
    with torch.no_grad():
        assert torch.isfinite(tm.model(**enc).logits).all()


# ---------------------------------------------------------------- sample images


def test_sample_images():
    a, b, c = sample_images(4), sample_images(4), sample_images(4, seed=1)
    assert [im.size for im in a] == [(64, 64), (48, 100), (32, 32), (64, 64)]
    assert all(im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not any(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[3]))
    assert np.asarray(a[0]).std() > 20  # not a flat colour
    assert [im.size for im in sample_images(2, sizes=((10, 20),))] == [(10, 20), (10, 20)]
