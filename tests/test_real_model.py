"""The activation API on real weights: SmolLM2-135M-Instruct (GQA 9 query / 3 KV heads) via savlens.load."""

import functools

import torch

import savlens


@functools.cache
def smol() -> savlens.Model:
    return savlens.load("smollm2-135m")


def _batch() -> savlens.Batch:
    qs = ["What is the capital of France?", "Name a primary colour.", "Is water wet? Answer yes or no, and say why."]
    return savlens.Batch.from_examples(smol(), [savlens.Example(q, id=str(i)) for i, q in enumerate(qs)])


def test_load_by_name_gives_the_real_grid() -> None:
    model = smol()
    s = model.sizes
    assert (model.family, model.model_id) == ("llama", "smollm2-135m")
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model) == (30, 9, 3, 64, 576)
    assert [s.kv_head_of(h) for h in (0, 2, 3, 8)] == [0, 0, 1, 2]


def test_trace_parity_and_hook_z_invariants_on_real_weights() -> None:
    model = smol()
    batch = _batch()
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
        res = t.save("blocks.{0,15,29}.attn.hook_result")
        out = t.save("blocks.{0,15,29}.hook_attn_out")
    with torch.no_grad():
        ref = model.hf(**batch.inputs, use_cache=False, logits_to_keep=1).logits
    assert torch.equal(t.logits, ref)
    assert z.value.shape == (3, 1, 30, 9, 64)
    for layer in (0, 15, 29):
        torch.testing.assert_close(
            res[f"blocks.{layer}.attn.hook_result"].sum(2), out[f"blocks.{layer}.hook_attn_out"], atol=1e-4, rtol=1e-4
        )
    # the greedy next token of the first prompt under the trace is the start of the known answer
    assert model.tokenizer.decode(int(t.logits[0, 0].argmax())).strip() == "The"


def test_batch_invariance_on_real_weights() -> None:
    model = smol()
    batch = _batch()
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    for i in range(3):
        one = savlens.Batch.from_examples(model, [savlens.Example(batch.prompts[i], id="x")], chat=False)
        with savlens.trace(model, one) as t1:
            z1 = t1.save("blocks.*.attn.hook_z")
        assert (z.value[i] - z1.value[0]).abs().max() < 1e-4
