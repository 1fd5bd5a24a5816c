"""Spec inference and inputs on every family with a tiny recipe: what was inferred, that it equals the
hand-written specs where they exist, named errors where inference cannot decide, and inputs as users have them
(`Batch.from_inputs`, numpy / tensor images, raw text with the tokenizer's special tokens).

The activation contract itself (logit parity, hook_z = o_proj input, hook dims, positions, batch invariance)
runs on every family in tests/test_trace.py."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import core_fast, mixed_examples, recipe_of, tiny
from torch import nn

import savlens
from savlens.errors import HookNotAvailableError, InputError, ModelSpecError
from savlens.models import REFERENCE, infer_spec, resolve_spec
from savlens.testing.tiny import ALL_FAMILIES, build_tiny, sample_images

REFERENCE_FAMILY = {"decoder_lm": "llama", "llava_onevision": "llava_onevision", "qwen2_vl": "qwen2_vl"}
REFERENCE_FAMILY["qwen2_5_vl"] = "qwen2_5_vl"


def test_recipes_cover_the_families_savlens_promises() -> None:
    promised = {"llama", "qwen2", "mistral", "llava_onevision", "qwen2_vl", "qwen2_5_vl"}
    assert promised <= set(ALL_FAMILIES)
    assert len(ALL_FAMILIES) == len(set(ALL_FAMILIES))


def test_every_family_is_wrapped_with_no_spec(any_family: str) -> None:
    model = tiny(any_family)
    rs = model.resolved
    assert rs.source == "inferred", f"{any_family} should need no hand-written spec"
    s = model.sizes
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model) == (3, 4, 2, 16, 64)
    layers = model.module(rs.blocks)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 3
    assert not any(v in rs.blocks for v in ("vision", "visual"))
    o_proj = model.module(rs.block_path(0, "o_proj"))
    assert (o_proj.in_features, o_proj.out_features) == (64, 64)  # type: ignore[union-attr]
    assert model.module(rs.unembed) is model.hf.get_output_embeddings()
    assert model.multimodal == recipe_of(model).vlm
    if model.multimodal:
        assert rs.image_token_id is not None
        assert rs.vision_encoder is not None and rs.vision_projector is not None
        assert not rs.vision_projector.startswith(rs.blocks)
    report = model.spec_report()
    assert report["spec source"] == "inferred" and report["decoder layers"] == f"{rs.blocks} (3)"
    assert rs.final_norm in str(report)


def test_final_norm_is_the_module_applied_after_the_last_layer(any_family: str) -> None:
    """The inferred final norm is the module whose input is the last layer's output (resid_post of the last
    layer), found by running the model."""
    model = tiny(any_family)
    batch = savlens.Batch.from_examples(model, mixed_examples(model))
    seen: dict[str, torch.Tensor] = {}
    last = model.module(model.resolved.block_path(model.n_layers - 1))
    norm = model.module(model.resolved.final_norm)
    h1 = last.register_forward_hook(lambda m, a, o: seen.__setitem__("last", o[0] if isinstance(o, tuple) else o))
    h2 = norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm", a[0]))
    try:
        with torch.no_grad():
            model.hf(**batch.inputs, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    assert torch.equal(seen["last"], seen["norm"])


@pytest.mark.parametrize("reference", REFERENCE, ids=lambda s: s.family)
def test_inferred_paths_equal_the_hand_written_spec(reference: savlens.models.ModelSpec) -> None:
    hf = build_tiny(REFERENCE_FAMILY[reference.family]).model
    want, got = resolve_spec(reference, hf), resolve_spec(infer_spec(hf), hf)
    for field in ("blocks", "final_norm", "unembed", "vision_encoder", "vision_projector", "image_token_id"):
        assert getattr(got, field) == getattr(want, field), field
    for field in ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "mlp", "positions", "text_config"):
        assert getattr(got.spec, field) == getattr(want.spec, field), field
    for field in ("vision_dims", "projector_dims", "nested_images"):
        assert getattr(got.spec, field) == getattr(want.spec, field), field


def test_a_user_spec_still_overrides_inference() -> None:
    tm = build_tiny("llama")
    spec = dataclasses.replace(infer_spec(tm.model), family="mine", mlp="mlp.down_proj")
    model = savlens.wrap(tm.model, tm.processor, spec=spec)
    assert model.resolved.source == "user" and model.family == "mine"
    with savlens.trace(model, savlens.Batch.from_examples(model, ["hello there"])) as t:
        out = t.save("blocks.0.hook_mlp_out")
    assert out.value.shape[-1] == 64


# 7. what inference cannot handle: a named error, never a raw AttributeError or an nnsight error ------------
def test_a_vlm_without_a_projector_names_what_is_missing() -> None:
    tm = build_tiny("llava_onevision")
    del tm.model.model.multi_modal_projector
    with pytest.raises(ModelSpecError, match=r"found no projector \(multi_modal_projector/.*register\(spec\)"):
        savlens.wrap(tm.model, tm.processor)


def test_a_layer_without_an_output_projection_names_the_layers() -> None:
    tm = build_tiny("llama")
    for layer in tm.model.model.layers:
        layer.self_attn.proj_out = layer.self_attn.o_proj
        del layer.self_attn.o_proj
    with pytest.raises(ModelSpecError, match=r"decoder layers of LlamaForCausalLM.*lists seen: model\.layers \(3\)"):
        savlens.wrap(tm.model, tm.tokenizer)


def test_fused_qkv_is_split_by_the_config_sizes() -> None:
    """Phi-3's fused qkv_proj: hook_q / hook_k / hook_v equal a reference split of its output."""
    model = tiny("phi3")
    assert model.resolved.spec.fused_qkv
    batch = savlens.Batch.from_examples(model, mixed_examples(model))
    seen: list[torch.Tensor] = []
    qkv = model.module(model.resolved.block_path(1, "q_proj"))
    h = qkv.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    try:
        with savlens.trace(model, batch) as t:
            q = t.save("blocks.1.attn.hook_q", positions="all")
            k = t.save("blocks.1.attn.hook_k", positions="all")
            v = t.save("blocks.1.attn.hook_v", positions="all")
    finally:
        h.remove()
    ref_q, ref_k, ref_v = seen[0].split([64, 32, 32], dim=-1)
    assert torch.equal(q.value, ref_q.unflatten(-1, (4, 16)))
    assert torch.equal(k.value, ref_k.unflatten(-1, (2, 16)))
    assert torch.equal(v.value, ref_v.unflatten(-1, (2, 16)))


def test_a_config_without_layer_count_is_a_named_error() -> None:
    tm = build_tiny("llama")
    cfg = tm.model.config
    n = cfg.num_hidden_layers
    try:
        object.__setattr__(cfg, "num_hidden_layers", None)  # past the config's own type check
        with pytest.raises(ModelSpecError, match=r"no num_hidden_layers.*spec="):
            savlens.wrap(tm.model, tm.tokenizer)
    finally:
        object.__setattr__(cfg, "num_hidden_layers", n)


def test_a_model_without_a_final_norm_is_a_named_error() -> None:
    tm = build_tiny("qwen2")
    tm.model.model.norm = None  # type: ignore[assignment]
    del tm.model.model.norm
    with pytest.raises(ModelSpecError, match=r"cannot infer the final norm of Qwen2ForCausalLM"):
        savlens.wrap(tm.model, tm.tokenizer)


# inputs as users have them -------------------------------------------------------------------------------
def _z(model: savlens.Model, batch: savlens.Batch) -> torch.Tensor:
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    return z.value


@pytest.mark.parametrize("any_family", core_fast(ALL_FAMILIES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_from_inputs_equals_from_examples(any_family: str, side: str) -> None:
    model = tiny(any_family)
    exs = mixed_examples(model)
    ref = savlens.Batch.from_examples(model, exs, padding_side=side)  # type: ignore[arg-type]
    # the user's own pipeline: the same prompts through the processor, no savlens in between
    rows = [e.load_images() for e in exs]
    layout = getattr(model, "_image_layout", None)  # as the processor takes them (found by from_examples)
    images = {"flat": [im for r in rows for im in r], "nested": [r for r in rows if r], "per_row": rows}
    tok = model.tokenizer
    old = tok.padding_side
    tok.padding_side = side
    try:
        kw = {"images": images[layout]} if layout else {}
        enc = model.processor(text=ref.prompts, padding=True, return_tensors="pt", add_special_tokens=False, **kw)
    finally:
        tok.padding_side = old
    batch = savlens.Batch.from_inputs(model, enc, example_ids=["a", "b", "c"])
    assert batch.padding_side == side
    assert torch.equal(batch.last_index, ref.last_index) and torch.equal(batch.image_mask, ref.image_mask)
    assert set(batch.inputs) == set(ref.inputs)
    assert torch.equal(_z(model, batch), _z(model, ref))


def test_from_inputs_refuses_what_it_cannot_read() -> None:
    model = tiny("llama")
    with pytest.raises(InputError, match="needs input_ids as a batch x pos tensor"):
        savlens.Batch.from_inputs(model, {"input_ids": [[1, 2]]})
    ids = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(InputError, match="padded on both sides"):
        savlens.Batch.from_inputs(
            model, {"input_ids": ids.repeat(2, 1), "attention_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])}
        )
    with pytest.raises(InputError, match="one per row"):
        savlens.Batch.from_inputs(model, {"input_ids": ids}, example_ids=["a", "b"])


def test_images_as_numpy_arrays_and_tensors_give_the_same_features() -> None:
    model = tiny("qwen2_vl")
    img = sample_images(1, seed=3)[0]
    arr = np.asarray(img)
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    zs = [
        _z(model, savlens.Batch.from_examples(model, [savlens.Example("what is it ?", images=[im])]))
        for im in (img, arr, chw, chw.float() / 255)
    ]
    for z in zs[1:]:
        assert torch.equal(z, zs[0])


def test_raw_text_gets_the_tokenizers_special_tokens() -> None:
    """chat=False tokenises with the tokenizer's defaults: a BOS-adding tokenizer adds its BOS."""
    fam = next((f for f in ALL_FAMILIES if build_tiny(f).tokenizer.bos_token is not None), None)
    if fam is None:
        pytest.skip("no tiny recipe has a BOS token")
    model = tiny(fam)
    batch = savlens.Batch.from_examples(model, ["hello there"], chat=False)
    tok = model.tokenizer
    assert int(batch.input_ids[0, 0]) == tok.bos_token_id
    chat = savlens.Batch.from_examples(model, ["hello there"])
    assert int((chat.input_ids[0] == tok.bos_token_id).sum()) <= 1  # the template's BOS, never doubled


def test_hooks_on_a_missing_vision_tower_are_named() -> None:
    model = tiny("llama")
    batch = savlens.Batch.from_examples(model, ["hi"])
    with pytest.raises((HookNotAvailableError, savlens.errors.HookNameError)), savlens.trace(model, batch) as t:
        t.save("vision_projector.hook_out")
