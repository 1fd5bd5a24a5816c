"""Attention patterns without eager attention (savlens.attention): on every family, the patterns captured inside
the SDPA forward equal the eager model's own attention weights, and capturing them changes no logit."""

from typing import Any

import pytest
import torch
from conftest import core_fast, mixed_examples, tiny

import savlens
import savlens.testing.tiny
from savlens.engine import model_inputs as _model_inputs
from savlens.errors import HookNotAvailableError
from savlens.testing.coverage import SDPA_NOT_INVARIANT
from savlens.tracing import attention_patterns

#: the worst |sdpa capture - eager weights| measured over every family, fp32, positions "last" and "all":
#: 6.7e-6 (Gemma 4, scaling 1 after q/k norms), 2.7e-6 (Gemma 4 text), at most 2.1e-6 in the others
ATOL = 1e-5


@pytest.fixture(params=core_fast(savlens.testing.tiny.ALL_FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def _batch(model: savlens.Model) -> savlens.Batch:
    return savlens.Batch.from_examples(model, mixed_examples(model))


def _eager_weights(model: savlens.Model, batch: savlens.Batch) -> dict[int, torch.Tensor]:
    """Every self-attention layer's ``batch head query key`` weights from a plain HF forward of the eager model
    (the attention modules' own second output; no savlens capture involved)."""
    assert model.attn_implementation == "eager"
    out: dict[int, torch.Tensor] = {}
    hooks = [
        model.module(model.resolved.block_path(layer, "attn")).register_forward_hook(
            lambda m, a, o, layer=layer: out.__setitem__(layer, o[1])
        )
        for layer, kind in enumerate(model.resolved.kinds)
        if kind == "attention"
    ]
    try:
        with torch.no_grad():
            model.hf(**_model_inputs(model, batch, "last"))
    finally:
        for h in hooks:
            h.remove()
    return out


def _heads(model: savlens.Model) -> list[tuple[int, int]]:
    """The first and last query head of every self-attention layer: two different KV heads under GQA."""
    return [
        (layer, h)
        for layer, info in enumerate(model.resolved.layers)
        if info.kind == "attention"
        for h in (0, info.n_heads - 1)
    ]


def test_patterns_under_sdpa_equal_the_eager_weights(family: str) -> None:
    sdpa, eager = tiny(family, "sdpa"), tiny(family, "eager")
    if family != "gemma2":  # Gemma 2 has no SDPA path (soft-capping): it runs eager; flex is tested below
        assert sdpa.attn_implementation == "sdpa"
    batch, ref_batch = _batch(sdpa), _batch(eager)
    assert not batch.attention_mask.bool().all() and batch.padding_side == "left"  # a left-padded batch
    ref = _eager_weights(eager, ref_batch)
    heads = _heads(sdpa)
    rows = torch.arange(batch.size)
    last = attention_patterns(sdpa, batch, heads)  # the last token of each row
    full = attention_patterns(sdpa, batch, heads, "all")
    real = batch.attention_mask.bool()
    for i, (layer, h) in enumerate(heads):
        want = ref[layer][:, h]  # batch query key
        torch.testing.assert_close(last.value[:, i, 0], want[rows, batch.last_index], atol=ATOL, rtol=0)
        torch.testing.assert_close(full.value[:, i][real], want[real], atol=ATOL, rtol=0)
        assert torch.equal(last[f"L{layer}H{h}"], last.value[:, i])
    # one row, no padding: SDPA gets no mask at all (is_causal), unless a sliding window needs one. (Phi-4's
    # vision tower encodes such a row's image causally under SDPA only: its single row is text.)
    row = [savlens.Example("what is it ?")] if family in SDPA_NOT_INVARIANT else mixed_examples(sdpa)[:1]
    one, ref_one = (savlens.Batch.from_examples(m, row) for m in (sdpa, eager))
    ref = _eager_weights(eager, ref_one)
    single = attention_patterns(sdpa, one, heads)
    for i, (layer, h) in enumerate(heads):
        torch.testing.assert_close(single.value[0, i, 0], ref[layer][0, h, -1], atol=ATOL, rtol=0)
    ref = _eager_weights(eager, ref_batch)
    # the trace hook: every head of the layer, at the saved positions, in the model's dtype
    layer = heads[-1][0]
    with savlens.trace(sdpa, batch) as t:
        p = t.save(f"blocks.{layer}.attn.hook_pattern", "last")
    assert p.dims == ("batch", "head_index", "query_pos", "key_pos")
    torch.testing.assert_close(p.value[:, :, 0], ref[layer][rows, :, batch.last_index], atol=ATOL, rtol=0)


def test_capturing_patterns_changes_no_logit(family: str) -> None:
    model = tiny(family)
    batch = _batch(model)
    with savlens.trace(model, batch, logits="all") as plain:
        pass
    with savlens.trace(model, batch, logits="all") as t:
        t.save("blocks.*.attn.hook_pattern", "all")
    assert torch.equal(plain.logits, t.logits)


def test_sliding_window_and_mrope_are_the_models_own() -> None:
    """Gemma 3 (window 4 on layer 0): the last token sees exactly its 4 nearest keys; Qwen2-VL's patterns follow
    its mRoPE positions (a capture that re-applied 1-D RoPE or dropped the window would fail the parity test)."""
    model = tiny("gemma3_text")
    batch = _batch(model)
    p = attention_patterns(model, batch, ["L0H0", "L1H0"])
    for r in range(batch.size):
        last = int(batch.last_index[r])
        local, full = p.value[r, 0, 0], p.value[r, 1, 0]
        assert torch.all(local[: last - 3] == 0) and torch.all(local[last - 3 : last + 1] > 0)
        first = int(batch.attention_mask[r].nonzero()[0])
        assert torch.all(full[first : last + 1] > 0)  # the global layer sees every real token
        torch.testing.assert_close(local.sum(), torch.tensor(1.0))


@pytest.mark.slow
def test_softcapping_under_flex_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 2 soft-caps its attention logits (SDPA cannot): under flex attention (run uncompiled here, as CPU
    compilation takes minutes) the capture reads the BlockMask and the softcap and matches eager."""
    import transformers.integrations.flex_attention as fa
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(fa.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    models = {}
    for attn in ("flex_attention", "eager"):
        tm = savlens.testing.tiny.build_tiny("gemma2", attn_implementation=attn)
        for layer in tm.model.model.layers:  # Gemma 2's cap of 50 barely bends these tiny logits; 2 does
            layer.self_attn.attn_logit_softcapping = 2.0
        models[attn] = savlens.wrap(tm.model, tm.processor, model_id="tiny-gemma2")
    flex, eager = models["flex_attention"], models["eager"]
    assert flex.attn_implementation == "flex_attention"
    batch, ref_batch = _batch(flex), _batch(eager)
    ref = _eager_weights(eager, ref_batch)
    heads = _heads(flex)
    p = attention_patterns(flex, batch, heads)
    rows = torch.arange(batch.size)
    for i, (layer, h) in enumerate(heads):
        torch.testing.assert_close(p.value[:, i, 0], ref[layer][rows, h, batch.last_index], atol=ATOL, rtol=0)


def test_patterns_follow_interventions() -> None:
    """A trace's hook_pattern sees the edited forward pass: ablating layer 0 changes layer 1's pattern, as in eager."""
    sdpa, eager = tiny("qwen2_vl", "sdpa"), tiny("qwen2_vl", "eager")
    got: dict[str, Any] = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        batch = _batch(model)
        with savlens.trace(model, batch) as t:
            t.ablate(["L0H0", "L0H1", "L0H2", "L0H3"], "zero")
            edited = t.save("blocks.1.attn.hook_pattern", "last")
        with savlens.trace(model, batch) as t:
            clean = t.save("blocks.1.attn.hook_pattern", "last")
        got[name], got[name + "-clean"] = edited.value, clean.value
    torch.testing.assert_close(got["sdpa"], got["eager"], atol=ATOL, rtol=0)
    assert (got["sdpa"] - got["sdpa-clean"]).abs().max() > 1e-3


def test_ragged_query_positions_pad_with_zero_rows() -> None:
    model = tiny("llava_onevision")
    batch = savlens.Batch.from_examples(model, mixed_examples(model))
    p = attention_patterns(model, batch, ["L2H1"], "image")
    sums = p.value[:, 0].sum(-1)  # batch query_pos
    torch.testing.assert_close(sums[p.mask], torch.ones(int(p.mask.sum())))
    assert torch.all(sums[~p.mask] == 0) and (~p.mask).any()
    assert torch.equal(p.index[p.mask], batch.image_mask.nonzero()[:, 1])


def test_layers_without_self_attention_heads_are_refused() -> None:
    mllama, qwen35 = tiny("mllama"), tiny("qwen3_5_text")
    batch = savlens.Batch.from_examples(mllama, ["what is it ?"])
    with pytest.raises(HookNotAvailableError, match=r"layer 1 is a cross attention layer.*Layers by kind"):
        attention_patterns(mllama, batch, ["L1H0"])
    batch = savlens.Batch.from_examples(qwen35, ["what is it ?"])
    with pytest.raises(HookNotAvailableError, match=r"layer 0 is a linear attention layer"):
        attention_patterns(qwen35, batch, ["L0H0"])
    with pytest.raises(HookNotAvailableError, match=r"linear attention"), savlens.trace(qwen35, batch) as t:
        t.save("blocks.0.attn.hook_pattern")


def test_attention_outside_the_interface_or_with_a_sink_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing silently missing: a layer whose attention bypasses ALL_ATTENTION_FUNCTIONS (a model with its own
    attention code) or adds an attention sink raises after the pass, naming the layer."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    model = tiny("qwen2")
    batch = _batch(model)
    real_get = AttentionInterface.get_interface
    monkeypatch.setattr(AttentionInterface, "get_interface", lambda self, impl, default: sdpa_attention_forward)
    with pytest.raises(HookNotAvailableError, match=r"layer\(s\) \[1\] never reached .*attention function 'sdpa'"):
        attention_patterns(model, batch, ["L1H0"])

    def with_sink(self: Any, impl: str, default: Any) -> Any:
        fn = real_get(self, impl, default)
        return lambda *a, **k: fn(*a, s_aux=torch.zeros(4), **k)

    monkeypatch.setattr(AttentionInterface, "get_interface", with_sink)
    with pytest.raises(HookNotAvailableError, match=r"layer 1 \(Qwen2Attention, 'sdpa'\) adds \['s_aux'\]"):
        attention_patterns(model, batch, ["L1H0"])
    monkeypatch.undo()
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward  # the wrapper is gone after each call
