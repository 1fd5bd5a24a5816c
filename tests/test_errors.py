"""Bad input to the activation API: each a SavlensError subclass whose message names the problem."""

import pytest
import torch
from conftest import mixed_examples, tiny

import savlens
from savlens.classifiers import HeadKNN, SparseLayers
from savlens.errors import (
    ArgumentError,
    BatchMismatchError,
    HookNameError,
    HookNotAvailableError,
    InputError,
    NotFittedError,
    PositionError,
    SavlensError,
    TraceStateError,
)
from savlens.testing.tiny import build_tiny, sample_images


def _batch(model: savlens.Model) -> savlens.Batch:
    return savlens.Batch.from_examples(model, mixed_examples(model))


def test_unknown_hook_name_lists_closest() -> None:
    model = tiny("qwen2_vl")
    with (
        pytest.raises(HookNameError, match=r"no hook matches 'blocks.1.attn.hook_zed'.*blocks\.1\.attn\.hook_z"),
        savlens.trace(model, _batch(model)) as t,
    ):
        t.save("blocks.1.attn.hook_zed")


def test_layer_out_of_range() -> None:
    model = tiny("llama")
    with (
        pytest.raises(HookNameError, match="layer 3 .* this model has 3 layers"),
        savlens.trace(model, _batch(model)) as t,
    ):
        t.save("blocks.3.attn.hook_z")


def test_positions_that_do_not_exist() -> None:
    model = tiny("llama")
    batch = _batch(model)
    short = int(batch.lengths.min())
    with (
        pytest.raises(PositionError, match=rf"do not exist in row 2 \(example 'c'\), which has {short} real tokens"),
        savlens.trace(model, batch) as t,
    ):
        t.save("blocks.0.attn.hook_z", positions=[short])
    with (
        pytest.raises(PositionError, match="no row of this batch has image tokens"),
        savlens.trace(model, batch) as t,
    ):
        t.save("blocks.0.attn.hook_z", positions="image")
    with pytest.raises(PositionError, match="unknown positions 'first'"), savlens.trace(model, batch) as t:
        t.save("blocks.0.attn.hook_z", positions="first")  # type: ignore[arg-type]


def test_image_given_to_text_only_model() -> None:
    model = tiny("mistral")
    ex = savlens.Example("what is this ?", images=sample_images(1))
    with pytest.raises(InputError, match=r"has 1 image\(s\) but mistral model 'tiny-mistral' is a text-only"):
        savlens.Batch.from_examples(model, [ex])


def test_batch_built_for_another_model() -> None:
    a, b = tiny("llava_onevision"), tiny("qwen2_vl")
    with pytest.raises(BatchMismatchError, match="built for another model"):
        savlens.trace(a, _batch(b))


def test_pattern_on_a_cross_attention_layer() -> None:
    from savlens.tracing import attention_patterns

    model = tiny("mllama")
    with pytest.raises(HookNotAvailableError, match="layer 1 is a cross attention layer.*self-attention layers only"):
        attention_patterns(model, savlens.Batch.from_examples(model, ["what is it ?"]), ["L1H0"])


def test_processor_that_does_not_match_the_model() -> None:
    llava = build_tiny("llava_onevision")
    qwen = build_tiny("qwen2_vl")
    with pytest.raises(InputError, match="processor does not match"):
        savlens.wrap(llava.model, qwen.processor)
    with pytest.raises(InputError, match="pass its processor"):
        savlens.wrap(llava.model, llava.tokenizer)


def test_values_are_not_readable_inside_the_block() -> None:
    model = tiny("llama")
    with savlens.trace(model, _batch(model)) as t:
        z = t.save("blocks.0.attn.hook_z")
        with pytest.raises(TraceStateError, match="filled when the `with savlens.trace"):
            _ = z.value
    assert z.value.shape[0] == 3
    with pytest.raises(TraceStateError, match="this trace already ran; open a new `with savlens.trace"):
        t.save("blocks.0.attn.hook_z")
    with pytest.raises(TraceStateError, match="declare interventions inside the `with` block"):
        t.ablate("L0H0")


def test_bad_examples() -> None:
    model = tiny("llama")
    with pytest.raises(InputError, match="no examples"):
        savlens.Batch.from_examples(model, [])
    with pytest.raises(InputError, match="duplicate example ids"):
        savlens.Batch.from_examples(model, [savlens.Example("a", id="x"), savlens.Example("b", id="x")])
    with pytest.raises(InputError, match="is empty"):
        savlens.Batch.from_examples(model, [savlens.Example("  ")])
    with pytest.raises(InputError, match="prompt_template"):
        savlens.Batch.from_examples(model, ["hi"], prompt_template="{question}")
    with pytest.raises(InputError, match="no file at"):
        savlens.Batch.from_examples(tiny("qwen2_vl"), [savlens.Example("hi", images=["/nonexistent.png"])])


def test_text_longer_than_context() -> None:
    model = tiny("llama")
    with pytest.raises(InputError, match="more than the model's context of 512"):
        savlens.Batch.from_examples(model, ["hello " * 600])


def test_estimators_used_before_fit() -> None:
    feats = savlens.HeadFeatures(torch.randn(4, 2, 2, 3), labels=["a", "b", "a", "b"])
    with pytest.raises(NotFittedError, match=r"SAV\.\w+: this SAV is not fitted yet; call fit\(features\) first"):
        savlens.SAV(k=2).predict(feats)
    with pytest.raises(NotFittedError, match="HeadKNN.*not fitted yet"):
        HeadKNN(k=2).predict(feats)
    with pytest.raises(NotFittedError, match="SparseLayers.predict: this SparseLayers is not fitted yet"):
        SparseLayers(k_layers=1).predict(feats)


def test_subclasses_are_still_savlens_errors() -> None:
    model = tiny("llama")
    with pytest.raises(SavlensError, match="stop_at_layer=7 is out of range for 3 layers"):
        savlens.trace(model, _batch(model), logits=None, stop_at_layer=7)
    with pytest.raises(ArgumentError, match="pass logits=None with it"):
        savlens.trace(model, _batch(model), stop_at_layer=1)
    for cls in (TraceStateError, NotFittedError):
        assert issubclass(cls, SavlensError)
        assert f"/errors/{cls.page}/" in str(cls("x"))
