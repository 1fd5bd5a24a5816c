"""Interventions inside a trace: invariants that pin down what each edit does."""

import pytest
import torch
from conftest import mixed_examples, tiny

import savlens
from savlens.errors import ArgumentError, FeatureError, HookNotAvailableError
from savlens.extraction import extract
from savlens.heads import HeadSet


def _batch(model: savlens.Model) -> savlens.Batch:
    return savlens.Batch.from_examples(model, mixed_examples(model))


def test_zero_ablating_a_head_removes_exactly_its_result(family: str) -> None:
    model = tiny(family)
    batch = _batch(model)
    with savlens.trace(model, batch) as clean:
        res = clean.save("blocks.1.attn.hook_result", positions="all")
        out = clean.save("blocks.1.hook_attn_out", positions="all")
    with savlens.trace(model, batch) as t:
        t.ablate(["L1H2"])
        out_ab = t.save("blocks.1.hook_attn_out", positions="all")
        z_ab = t.save("blocks.1.attn.hook_z", positions="all")
    diff = out.value - out_ab.value
    torch.testing.assert_close(diff, res.value[:, :, 2], atol=2e-5, rtol=1e-5)
    assert res.value[:, :, 2].abs().max() > 0.05
    assert torch.count_nonzero(z_ab.value[:, :, 2]) == 0  # saves see the edited value
    assert not torch.equal(clean.logits, t.logits)


def test_patching_a_head_with_its_own_value_changes_nothing(family: str) -> None:
    model = tiny(family)
    batch = _batch(model)
    with savlens.trace(model, batch) as clean:
        pass
    own = extract(model, mixed_examples(model), batch_size=3, progress=False)
    with savlens.trace(model, batch) as t:
        t.patch(HeadSet(["L0H1", "L2H3"]), own)
        t.add(["L1H0"], torch.zeros(model.sizes.d_head))
    assert torch.equal(t.logits, clean.logits)


def test_mean_ablation_writes_the_mean_at_the_chosen_positions() -> None:
    model = tiny("qwen2_vl")
    batch = _batch(model)
    feats = extract(model, mixed_examples(model), progress=False)
    with savlens.trace(model, batch) as t:
        t.ablate("L2H1", "mean", means=feats, positions="last")
        z = t.save("blocks.2.attn.hook_z", positions="all")
    mean = feats.z[:, 2, 1].mean(0)
    rows = torch.arange(batch.size)
    got = z.value[rows, batch.last_index, 1]
    torch.testing.assert_close(got, mean.expand_as(got), atol=1e-6, rtol=1e-6)
    with savlens.trace(model, batch) as clean:
        zc = clean.save("blocks.2.attn.hook_z", positions="all")
    # everything but the last token of head 1 is untouched
    mask = torch.ones_like(zc.value, dtype=torch.bool)
    mask[rows, batch.last_index, 1] = False
    assert torch.equal(z.value[mask], zc.value[mask])


def test_resample_and_add_move_the_output() -> None:
    model = tiny("llava_onevision")
    batch = _batch(model)
    other = extract(
        model, [savlens.Example(t, id=str(i)) for i, t in enumerate(["hello", "what is red ?", "no"])], progress=False
    )
    with savlens.trace(model, batch) as clean:
        pass
    with savlens.trace(model, batch) as t:
        t.resample("L2H0", other.subset([0]), seed=1)  # one source example: drawn for every row (with replacement)
    with savlens.trace(model, batch) as t2:
        t2.add("L2H0", torch.ones(model.sizes.d_head) * 3.0)
    assert not torch.equal(t.logits, clean.logits) and not torch.equal(t2.logits, clean.logits)


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
