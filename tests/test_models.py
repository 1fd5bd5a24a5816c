"""Family specs: sizes from the config, load-time validation, user-registered specs."""

import dataclasses

import pytest
import torch
from conftest import tiny
from torch import nn

import savlens
from savlens.errors import ModelSpecError, UnsupportedModelError
from savlens.models import DECODER_LM, ModelSpec, register, registered, spec_for, unregister


def test_sizes_come_from_the_config(family: str) -> None:
    model = tiny(family)
    s = model.sizes
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model) == (3, 4, 2, 16, 64)
    assert [s.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]
    assert model.family == spec_for(model.hf).family
    assert "layers=3" in repr(model) and "kv_heads=2" in repr(model)


def test_every_family_resolves_each_role(family: str) -> None:
    model = tiny(family)
    rs = model.resolved
    for layer in range(model.n_layers):
        for role in ("attn", "q_proj", "k_proj", "v_proj", "o_proj", "mlp"):
            assert isinstance(model.module(rs.block_path(layer, role)), nn.Module)
    assert isinstance(model.module(rs.final_norm), nn.Module)
    assert isinstance(model.module(rs.unembed), nn.Linear)
    if model.multimodal:
        assert rs.vision_encoder is not None and "-" not in rs.vision_encoder  # canonical path
        assert isinstance(model.module(rs.vision_projector), nn.Module)  # type: ignore[arg-type]
        assert rs.image_token_id == model.tokenizer.convert_tokens_to_ids(model.processor.image_token)


def test_spec_with_wrong_path_is_refused() -> None:
    hf = tiny("llama").hf
    bad = dataclasses.replace(DECODER_LM, family="broken", o_proj="self_attn.out_proj")
    with pytest.raises(ModelSpecError, match=r"layer 0 has no module 'self_attn.out_proj' \(role 'o_proj'\)"):
        savlens.wrap(hf, tiny("llama").processor, spec=bad)


def test_spec_whose_sizes_disagree_is_refused() -> None:
    hf = tiny("llama").hf
    wrong = dataclasses.replace(DECODER_LM, family="wrong-sizes", text_config=None)
    cfg = hf.config
    old = cfg.num_key_value_heads
    cfg.num_key_value_heads = 4  # the weights still have 2 KV heads
    try:
        with pytest.raises(ModelSpecError, match=r"k_proj: expected in/out features 64/64 .* got 64/32"):
            savlens.wrap(hf, tiny("llama").processor, spec=wrong)
    finally:
        cfg.num_key_value_heads = old


def test_unsupported_model_names_the_way_out() -> None:
    with pytest.raises(UnsupportedModelError, match=r"no savlens spec for Linear.*savlens.models.register"):
        savlens.wrap(nn.Linear(2, 2), tiny("llama").processor)


class ToyAttn(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, d = x.shape
        q, k, v = (t.view(b, p, self.h, -1).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        z = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(z.transpose(1, 2).reshape(b, p, d))


class ToyBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.attn, self.ff = ToyAttn(d, h), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class ToyLM(nn.Module):
    """A custom decoder-only LM with its own module names, and an HF-like config."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.config = type(
            "Cfg",
            (),
            dict(
                num_hidden_layers=2,
                num_attention_heads=4,
                hidden_size=32,
                vocab_size=vocab,
                max_position_embeddings=64,
            ),
        )()
        self.emb = nn.Embedding(vocab, 32)
        self.stack = nn.ModuleList(ToyBlock(32, 4) for _ in range(2))
        self.norm, self.head = nn.LayerNorm(32), nn.Linear(32, vocab)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> object:
        x = self.emb(input_ids)
        for blk in self.stack:
            x = blk(x)
        return type("Out", (), {"logits": self.head(self.norm(x))})()


def test_user_registered_spec_for_any_module() -> None:
    tok = tiny("llama").tokenizer
    toy = ToyLM(len(tok)).eval()
    spec = ModelSpec(
        family="toy",
        classes=("ToyLM",),
        blocks=("stack",),
        final_norm=("norm",),
        unembed=("head",),
        attn="attn",
        q_proj="attn.q",
        k_proj="attn.k",
        v_proj="attn.v",
        o_proj="attn.out",
        mlp="ff",
    )
    register(spec)
    try:
        assert spec_for(toy) is spec and registered()[0] is spec
        model = savlens.wrap(toy, tok)
        batch = savlens.Batch.from_examples(model, ["what color is it ?", "hello"], chat=False)
        with savlens.trace(model, batch, logits="all") as t:
            z = t.save("blocks.*.attn.hook_z")
            res = t.save("blocks.*.attn.hook_result")
            out = t.save("blocks.*.hook_attn_out")
        assert z.value.shape == (2, 1, 2, 4, 8)
        bias = toy.stack[1].attn.out.bias
        torch.testing.assert_close(
            res["blocks.1.attn.hook_result"].sum(2) + bias,
            out["blocks.1.hook_attn_out"],
            atol=1e-5,
            rtol=1e-5,
        )
        with pytest.raises(ValueError, match="already registered"):
            register(spec)
    finally:
        unregister("toy")
    # unregistered, the toy's names (attn.q/k/v/out in `stack`, `ff`) are not ones inference knows: a named error
    with pytest.raises(ModelSpecError, match=r"cannot infer the decoder layers of ToyLM.*lists seen: stack \(2\)"):
        spec_for(toy)
