"""Interventions inside a trace, each checked against a plain HF forward pass with a hand-made hook.

The reference (:func:`_hf_with`) runs ``model.hf`` directly (no nnsight) with a ``forward_pre_hook`` on the
output projection of each edited layer that rewrites its input the way the intervention is documented to:
``hook_z`` of that head at those positions. The edited ``hook_z`` and the logits of the trace must equal it.
"""

from collections.abc import Callable

import pytest
import torch
from conftest import mixed_examples, tiny
from torch import Tensor

import savlens
from savlens.errors import ArgumentError, FeatureError, HookNotAvailableError
from savlens.extraction import extract
from savlens.heads import HeadSet

#: three prompts unlike the rows of ``mixed_examples`` (the source of patches: a *different* input)
OTHER = ["hello there", "what is red ?", "no"]

ZEdit = Callable[[Tensor], Tensor]  # batch pos head_index d_head -> the same, edited


def _batch(model: savlens.Model) -> savlens.Batch:
    return savlens.Batch.from_examples(model, mixed_examples(model))


def _hf_with(model: savlens.Model, batch: savlens.Batch, edits: dict[int, ZEdit]) -> tuple[Tensor, dict[int, Tensor]]:
    """A plain HF forward on ``batch`` whose o_proj input of each layer in ``edits`` is replaced by
    ``edits[layer](z)``; return the full logits and every layer's (edited) o_proj input as ``z``."""
    seen: dict[int, Tensor] = {}

    def pre(layer: int) -> Callable[..., tuple[Tensor, ...]]:
        info = model.resolved.layers[layer]

        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x = args[0]
            z = x.reshape(*x.shape[:2], info.n_heads, info.d_head).clone()
            if layer in edits:
                z = edits[layer](z)
            seen[layer] = z.clone()
            return (z.reshape(x.shape), *args[1:])

        return hook

    handles = [
        model.module(model.resolved.block_path(layer, "o_proj")).register_forward_pre_hook(pre(layer))
        for layer in range(model.n_layers)
    ]
    try:
        with torch.no_grad():
            logits = model.hf(**batch.inputs, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def _z_names(model: savlens.Model) -> list[str]:
    return [f"blocks.{i}.attn.hook_z" for i in range(model.n_layers)]


def _assert_trace_matches(t: savlens.Trace, z: savlens.Handle, model: savlens.Model, ref: Tensor, seen: dict) -> None:
    for layer in range(model.n_layers):
        assert torch.equal(z[f"blocks.{layer}.attn.hook_z"], seen[layer]), f"hook_z of layer {layer}"
    torch.testing.assert_close(t.logits, ref, atol=1e-6, rtol=1e-6)


def _unchanged_except(a: Tensor, b: Tensor, rows: Tensor, pos: Tensor, head: int) -> None:
    """``a`` and ``b`` (batch pos head_index d_head) are bit-identical except at ``[rows, pos, head]``."""
    mask = torch.ones(a.shape[:3], dtype=torch.bool)
    mask[rows, pos, head] = False
    assert torch.equal(a[mask], b[mask])


# ---- patch ----------------------------------------------------------------------------------------
def test_patch_from_a_different_input_matches_a_hand_made_hook(family: str) -> None:
    model = tiny(family)
    batch = _batch(model)
    rows = torch.arange(batch.size)
    src = extract(model, OTHER, progress=False)  # z at each source row's last token
    heads = {0: [1], 2: [3, 0]}
    with savlens.trace(model, batch, logits="all") as clean:
        zc = clean.save(_z_names(model), positions="all")
    with savlens.trace(model, batch, logits="all") as t:
        t.patch(HeadSet([(layer, h) for layer, hs in heads.items() for h in hs]), src)  # at the last token
        z = t.save(_z_names(model), positions="all")

    def put(layer: int) -> ZEdit:
        def edit(zz: Tensor) -> Tensor:
            for h in heads[layer]:
                zz[rows, batch.last_index, h] = src.z[:, layer, h]
            return zz

        return edit

    ref, seen = _hf_with(model, batch, {layer: put(layer) for layer in heads})
    _assert_trace_matches(t, z, model, ref, seen)
    # the source really differs from the clean values, and the patch moves the output
    clean0 = zc["blocks.0.attn.hook_z"][rows, batch.last_index, 1]
    assert (clean0 - src.z[:, 0, 1]).abs().amin(-1).min() > 1e-3
    assert torch.equal(z["blocks.0.attn.hook_z"][rows, batch.last_index, 1], src.z[:, 0, 1])
    _unchanged_except(z["blocks.0.attn.hook_z"], zc["blocks.0.attn.hook_z"], rows, batch.last_index, 1)
    assert (t.logits - clean.logits).abs().max() > 1e-4


def test_patching_own_values_is_the_identity_and_a_tensor_source_equals_features() -> None:
    model = tiny("qwen2_vl")
    batch = _batch(model)
    own = extract(model, mixed_examples(model), batch_size=3, progress=False)
    other = extract(model, OTHER, progress=False)
    with savlens.trace(model, batch, logits="all") as clean:
        pass
    with savlens.trace(model, batch, logits="all") as t:
        t.patch(HeadSet(["L0H1", "L2H3"]), own)
    torch.testing.assert_close(t.logits, clean.logits, atol=1e-6, rtol=1e-6)
    with savlens.trace(model, batch, logits="all") as by_feats:
        by_feats.patch("L1H2", other)
    with savlens.trace(model, batch, logits="all") as by_tensor:
        by_tensor.patch("L1H2", other.z)  # batch layer head_index d_head over all layers
    assert torch.equal(by_feats.logits, by_tensor.logits)
    assert (by_feats.logits - clean.logits).abs().max() > 1e-4


# ---- add ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["last", [1]])
def test_add_changes_exactly_that_head_at_that_position_by_the_vector(family: str, positions: object) -> None:
    model = tiny(family)
    batch = _batch(model)
    rows = torch.arange(batch.size)
    pos = batch.last_index if positions == "last" else batch.last_index - batch.lengths + 2  # own token 1
    vec = torch.randn(model.sizes.d_head, generator=torch.Generator().manual_seed(0))
    with savlens.trace(model, batch, logits="all") as clean:
        zc = clean.save(_z_names(model), positions="all")
    with savlens.trace(model, batch, logits="all") as t:
        t.add("L1H2", vec, positions=positions)  # type: ignore[arg-type]
        z = t.save(_z_names(model), positions="all")
    got, before = z["blocks.1.attn.hook_z"], zc["blocks.1.attn.hook_z"]
    assert torch.equal(got[rows, pos, 2], before[rows, pos, 2] + vec)  # exactly that vector added
    _unchanged_except(got, before, rows, pos, 2)  # every other head and position bit-identical
    assert torch.equal(z["blocks.0.attn.hook_z"], zc["blocks.0.attn.hook_z"])  # upstream untouched

    def add(zz: Tensor) -> Tensor:
        zz[rows, pos, 2] += vec
        return zz

    ref, seen = _hf_with(model, batch, {1: add})
    _assert_trace_matches(t, z, model, ref, seen)
    assert (t.logits - clean.logits).abs().max() > 1e-4


def test_add_takes_one_vector_per_head() -> None:
    model = tiny("llama")
    batch = _batch(model)
    rows = torch.arange(batch.size)
    vecs = torch.randn(2, model.sizes.d_head, generator=torch.Generator().manual_seed(1))
    with savlens.trace(model, batch, logits="all") as clean:
        zc = clean.save("blocks.2.attn.hook_z", positions="all")
    with savlens.trace(model, batch, logits="all") as t:
        t.add(["L2H3", "L2H0"], vecs)  # one row per head, in the order given
        z = t.save("blocks.2.attn.hook_z", positions="all")
    last = batch.last_index
    assert torch.equal(z.value[rows, last, 3], zc.value[rows, last, 3] + vecs[0])
    assert torch.equal(z.value[rows, last, 0], zc.value[rows, last, 0] + vecs[1])
    assert torch.equal(z.value[rows, last, 1:3], zc.value[rows, last, 1:3])


# ---- ablations ------------------------------------------------------------------------------------
def test_zero_ablation_matches_a_hand_made_hook(family: str) -> None:
    model = tiny(family)
    batch = _batch(model)
    rows = torch.arange(batch.size)
    with savlens.trace(model, batch, logits="all") as clean:
        res = clean.save("blocks.1.attn.hook_result", positions="all")
        out = clean.save("blocks.1.hook_attn_out", positions="all")
    with savlens.trace(model, batch, logits="all") as t:
        t.ablate(["L1H2"])  # every position
        t.ablate(["L2H0", "L2H3"], positions="last")
        out_ab = t.save("blocks.1.hook_attn_out", positions="all")
        z = t.save(_z_names(model), positions="all")

    def zero_all(zz: Tensor) -> Tensor:
        zz[:, :, 2] = 0
        return zz

    def zero_last(zz: Tensor) -> Tensor:
        zz[rows, batch.last_index, 0] = 0
        zz[rows, batch.last_index, 3] = 0
        return zz

    ref, seen = _hf_with(model, batch, {1: zero_all, 2: zero_last})
    _assert_trace_matches(t, z, model, ref, seen)
    # removing a head removes exactly its result from the attention output
    assert res.value[:, :, 2].abs().max() > 0.05
    torch.testing.assert_close(out.value - out_ab.value, res.value[:, :, 2], atol=2e-5, rtol=1e-5)


def test_mean_ablation_matches_a_hand_made_hook() -> None:
    model = tiny("qwen2_vl")
    batch = _batch(model)
    rows = torch.arange(batch.size)
    feats = extract(model, OTHER + ["a longer prompt with more words"], progress=False)
    mean = feats.z[:, 2, 1].mean(0)
    with savlens.trace(model, batch, logits="all") as t:
        t.ablate("L2H1", "mean", means=feats, positions="last")
        z = t.save(_z_names(model), positions="all")

    def put_mean(zz: Tensor) -> Tensor:
        zz[rows, batch.last_index, 1] = mean
        return zz

    ref, seen = _hf_with(model, batch, {2: put_mean})
    _assert_trace_matches(t, z, model, ref, seen)
    with savlens.trace(model, batch, logits="all") as by_tensor:  # a layer head_index d_head tensor of means
        by_tensor.ablate("L2H1", "mean", means=feats.z.float().mean(0), positions="last")
    assert torch.equal(by_tensor.logits, t.logits)


def test_resample_patches_the_drawn_source_rows() -> None:
    model = tiny("llava_onevision")
    batch = _batch(model)
    other = extract(model, OTHER, progress=False)
    drawn = torch.randint(0, 3, (batch.size,), generator=torch.Generator().manual_seed(5))
    with savlens.trace(model, batch, logits="all") as t:
        t.resample("L2H0", other, seed=5)
    with savlens.trace(model, batch, logits="all") as want:
        want.patch("L2H0", other.z[drawn])
    assert torch.equal(t.logits, want.logits)
    with savlens.trace(model, batch, logits="all") as one:  # one source example: drawn for every row
        one.resample("L2H0", other.subset([1]), seed=1)
    with savlens.trace(model, batch, logits="all") as want1:
        want1.patch("L2H0", other.z[[1, 1, 1]])
    assert torch.equal(one.logits, want1.logits)
    with savlens.trace(model, batch, logits="all") as clean:
        pass
    assert (t.logits - clean.logits).abs().max() > 1e-4


def test_bad_interventions() -> None:
    model = tiny("llama")
    batch = _batch(model)
    with (
        pytest.raises(ArgumentError, match="does not exist: 'tiny-llama' has 3 layers x 4 heads"),
        savlens.trace(model, batch) as t,
    ):
        t.ablate("L5H0")
    with (
        pytest.raises(HookNotAvailableError, match="past stop_at_layer=0"),
        savlens.trace(model, batch, logits=None, stop_at_layer=0) as t,
    ):
        t.ablate("L1H0")
    with pytest.raises(ArgumentError, match="needs means="), savlens.trace(model, batch) as t:
        t.ablate("L1H0", "mean")
    with pytest.raises(FeatureError, match="does not broadcast"), savlens.trace(model, batch) as t:
        t.add("L1H0", torch.ones(7))
    with (
        pytest.raises(FeatureError, match="patch source has 2 examples but the batch has 3 rows"),
        savlens.trace(model, batch) as t,
    ):
        t.patch("L1H0", extract(model, ["a", "b"], progress=False))  # type: ignore[list-item]
