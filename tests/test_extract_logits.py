"""extract(..., logits="last"): the next-token log-probs of the same forward pass, equal to a plain HF forward."""

import json
from pathlib import Path

import jaxtyping
import pytest
import torch
from conftest import tiny

import savlens
import savlens.extraction as extract_mod
from savlens import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, StoreError
from savlens.extraction import extract
from savlens.store import open_store
from savlens.testing.tiny import sample_images

TOKENS = [7, 3, 120, 41]  # out of id order on purpose: columns follow this order


def _examples(model: savlens.Model, n: int = 7) -> list[savlens.Example]:
    """Mixed lengths (and for VLMs, images of two sizes and text-only rows), given out of length order."""
    imgs = sample_images(n, seed=5, sizes=((64, 64), (48, 100)))
    words = ["is there a red shape in the picture and what else is there ?", "hello", "what color is the circle ?"]
    return [
        savlens.Example(
            words[i % 3] + " hello" * (i % 4),
            images=[imgs[i]] if model.multimodal and i % 3 != 1 else [],
            label=["yes", "no"][i % 2],
            id=f"e{i}",
        )
        for i in range(n)
    ]


def _hf_log_probs(model: savlens.Model, exs: list[savlens.Example], padding_side: str) -> torch.Tensor:
    """Plain HF forward (no nnsight) of one padded batch: log_softmax of the logits at each row's last real token."""
    batch = savlens.Batch.from_examples(model, exs, padding_side=padding_side)  # type: ignore[arg-type]
    with torch.no_grad():
        logits = model.hf(**batch.inputs, use_cache=False).logits
    return logits[torch.arange(batch.size), batch.last_index].float().log_softmax(-1)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl", "llava_onevision"])
def test_log_probs_equal_a_plain_hf_forward_at_the_last_real_token(family: str) -> None:
    model = tiny(family)
    exs = _examples(model)
    by3 = extract(model, exs, batch_size=3, logits="last", logit_tokens="all", progress=False)
    by1 = extract(model, exs, batch_size=1, logits="last", logit_tokens="all", progress=False)
    assert by3.log_probs is not None and by1.log_probs is not None and by3.top_token is not None
    assert by3.log_probs.dtype == torch.float32 and by3.log_probs.shape == (len(exs), model.sizes.d_vocab)
    assert by3.logit_tokens is None and by3.example_ids == [e.id for e in exs]
    alone = torch.cat([_hf_log_probs(model, [e], "left") for e in exs])  # one by one, no padding
    for ref in (alone, _hf_log_probs(model, exs, "left"), _hf_log_probs(model, exs, "right")):
        torch.testing.assert_close(by3.log_probs, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(by1.log_probs, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(by3.top_token, alone.argmax(-1)) and torch.equal(by1.top_token, by3.top_token)
    assert torch.allclose(by3.log_probs.exp().sum(-1), torch.ones(len(exs)), atol=1e-5)  # normalised over the vocab
    assert len({tuple(r.tolist()) for r in by3.log_probs[:, :5]}) == len(exs)  # rows differ: not one row repeated


def test_logit_tokens_are_the_columns_of_the_full_vector() -> None:
    model = tiny("qwen2_5_vl")
    exs = _examples(model, 5)
    full = extract(model, exs, batch_size=2, logits="last", logit_tokens="all", progress=False)
    some = extract(model, exs, batch_size=2, logits="last", logit_tokens=TOKENS, progress=False)
    assert full.log_probs is not None and some.log_probs is not None
    assert some.logit_tokens == tuple(TOKENS) and some.log_probs.shape == (5, len(TOKENS))
    assert torch.equal(some.log_probs, full.log_probs[:, TOKENS])  # same pass, then a column gather
    assert torch.equal(some.top_token, full.top_token)  # type: ignore[arg-type]  # over the whole vocabulary
    one = extract(model, exs, batch_size=2, logits="last", logit_tokens=(120,), progress=False)
    assert one.logit_tokens == (120,) and torch.equal(one.log_probs, full.log_probs[:, [120]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "positions"),
    [("blocks.*.attn.hook_z", "last"), ("blocks.{0}.attn.hook_z", "last"), ("blocks.*.hook_resid_post", -2)],
)
def test_head_features_are_bit_identical_with_and_without_logits(names: str, positions: str | int) -> None:
    model = tiny("llava_onevision")
    exs = _examples(model, 5)
    plain = extract(model, exs, names, positions, batch_size=2, progress=False)  # stops after the deepest layer
    kept = extract(model, exs, names, positions, batch_size=2, logits="last", logit_tokens=TOKENS, progress=False)
    assert plain.log_probs is None and plain.top_token is None and plain.logit_tokens is None
    assert torch.equal(plain.z, kept.z) and plain.layers == kept.layers and plain.example_ids == kept.example_ids
    # the log-probs are at the last real token whatever position the features are read at
    last = extract(model, exs, batch_size=2, logits="last", logit_tokens=TOKENS, progress=False)
    assert torch.equal(kept.log_probs, last.log_probs)  # type: ignore[arg-type]


def test_store_round_trip_keeps_log_probs_in_example_order(tmp_path: Path) -> None:
    model = tiny("llama")
    exs = _examples(model)
    mem = extract(model, exs, batch_size=3, logits="last", logit_tokens=TOKENS, progress=False)
    stored = extract(model, exs, batch_size=3, store=tmp_path / "s", logits="last", logit_tokens=TOKENS, progress=False)
    reopened = open_store(tmp_path / "s")
    for f in (stored, reopened):
        assert f.example_ids == mem.example_ids and f.logit_tokens == tuple(TOKENS)
        assert torch.equal(f.z, mem.z) and torch.equal(f.log_probs, mem.log_probs)  # type: ignore[arg-type]
        assert torch.equal(f.top_token, mem.top_token)  # type: ignore[arg-type]
    ref = torch.cat([_hf_log_probs(model, [e], "left") for e in exs])
    torch.testing.assert_close(reopened.log_probs, ref[:, TOKENS], atol=1e-5, rtol=1e-5)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["logits"], manifest["logit_tokens"]) == ("last", TOKENS)
    sub = reopened.subset([4, 0])
    assert sub.example_ids == ["e4", "e0"] and torch.equal(sub.log_probs, mem.log_probs[[4, 0]])  # type: ignore[index]
    both = HeadFeatures.concat([reopened.subset([0, 1]), reopened.subset([2])])
    assert torch.equal(both.log_probs, mem.log_probs[:3]) and both.logit_tokens == tuple(TOKENS)  # type: ignore[index]
    full = extract(model, exs, batch_size=3, store=tmp_path / "f", logits="last", logit_tokens="all", progress=False)
    assert json.loads((tmp_path / "f" / "manifest.json").read_text())["logit_tokens"] == "all"
    assert open_store(tmp_path / "f").logit_tokens is None
    assert torch.equal(open_store(tmp_path / "f").log_probs, full.log_probs)  # type: ignore[arg-type]


def test_resume_with_the_same_setting_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("qwen2_vl")
    exs = _examples(model, 8)
    kw: dict = dict(batch_size=3, logits="last", logit_tokens=TOKENS, progress=False)
    clean = extract(model, exs, store=tmp_path / "clean", **kw)
    real = extract_mod._run_batch
    calls = {"n": 0}

    def flaky(*a: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stopped mid-way: one shard of three written
        return real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(extract_mod, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(model, exs, store=tmp_path / "r", **kw)
    seen: list[int] = []
    monkeypatch.setattr(extract_mod, "_run_batch", lambda m, chunk, *a: seen.append(len(chunk)) or real(m, chunk, *a))
    resumed = extract(model, exs, store=tmp_path / "r", **kw)
    assert sum(seen) == 8 - 3  # only the missing examples ran
    assert resumed.example_ids == clean.example_ids
    assert torch.equal(resumed.z, clean.z) and torch.equal(resumed.log_probs, clean.log_probs)  # type: ignore[arg-type]
    assert torch.equal(resumed.top_token, clean.top_token)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first", "then", "what"),
    [
        ({}, {"logits": "last", "logit_tokens": TOKENS}, r"logits: store has None, this run 'last'"),
        ({"logits": "last", "logit_tokens": TOKENS}, {}, r"logits: store has 'last', this run None"),
        ({"logits": "last", "logit_tokens": TOKENS}, {"logits": "last", "logit_tokens": TOKENS[:2]}, r"logit_tokens"),
        ({"logits": "last", "logit_tokens": TOKENS}, {"logits": "last", "logit_tokens": "all"}, r"this run 'all'"),
    ],
)
def test_resume_with_another_setting_is_refused(tmp_path: Path, first: dict, then: dict, what: str) -> None:
    model = tiny("llama")
    exs = _examples(model, 4)
    extract(model, exs[:2], store=tmp_path / "s", progress=False, **first)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    manifest = (tmp_path / "s" / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match=rf"holds features of another extraction \(.*{what}.*Use a new store path"):
        extract(model, exs, store=tmp_path / "s", progress=False, **then)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before  # left untouched
    assert (tmp_path / "s" / "manifest.json").read_bytes() == manifest


def test_a_store_written_before_logits_existed_still_resumes(tmp_path: Path) -> None:
    model = tiny("llama")
    exs = _examples(model, 4)
    first = extract(model, exs, store=tmp_path / "s", progress=False)
    mf = tmp_path / "s" / "manifest.json"
    old = {k: v for k, v in json.loads(mf.read_text()).items() if k not in ("logits", "logit_tokens")}
    mf.write_text(json.dumps(old))
    again = extract(model, exs, store=tmp_path / "s", progress=False)
    assert torch.equal(again.z, first.z) and again.log_probs is None
    with pytest.raises(StoreError, match="logits: store has None"):
        extract(model, exs, store=tmp_path / "s", logits="last", logit_tokens=[1], progress=False)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"logits": "all"}, r"logits='all'\): logits takes None \(default\) or 'last'.*savlens\.trace\(.*'all'\)"),
        ({"logits": "last"}, r"needs logit_tokens=: the token ids .* or logit_tokens='all' .* \(224 "),
        ({"logit_tokens": [1]}, r"logit_tokens=\[1\] but logits=None; pass logits='last'"),
        ({"logits": "last", "logit_tokens": []}, r"logit_tokens=\[\] keeps no column; pass at least one token id"),
        ({"logits": "last", "logit_tokens": [3, 224]}, r"logit_tokens \[224\] are outside .* \(token ids 0\.\.223\)"),
        ({"logits": "last", "logit_tokens": [-1]}, r"logit_tokens \[-1\] are outside the vocabulary"),
        ({"logits": "last", "logit_tokens": "yes"}, r"logit_tokens='yes' is not a list of token ids; pass ids such as"),
        ({"logits": "last", "logit_tokens": [1.0]}, r"logit_tokens=\[1\.0\] is not a list of int token ids"),
        ({"logits": "last", "logit_tokens": [True]}, r"logit_tokens=\[True\] is not a list of int token ids"),
        ({"logits": "last", "logit_tokens": [5, 9, 5]}, r"logit_tokens repeats \[5\]; give each id once"),
    ],
)  # fmt: skip
def test_bad_logits_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kw: dict, message: str) -> None:
    model = tiny("llama")
    # values of the wrong type on purpose: switch off the suite's runtime type checker so the call meets savlens'
    # own check, as it does for a user
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)
    with pytest.raises(ArgumentError, match=message) as info:
        extract(model, _examples(model, 2), store=tmp_path / "s", progress=False, **kw)
    assert "errors/argument-error/" in str(info.value)
    assert not (tmp_path / "s").exists()  # checked before anything is written


def test_head_features_check_their_next_token_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # savlens' own checks, as a user meets them
    z = torch.zeros(3, 1, 2, 4)
    with pytest.raises(FeatureError, match=r"log_probs has 2 columns but logit_tokens names 3"):
        HeadFeatures(z, log_probs=torch.zeros(3, 2), logit_tokens=(1, 2, 3))
    with pytest.raises(FeatureError, match=r"top_token must be a 1-d tensor \[example\] with example=3"):
        HeadFeatures(z, log_probs=torch.zeros(3, 2), top_token=torch.zeros(2, dtype=torch.long))
    with pytest.raises(FeatureError, match=r"logit_tokens names the columns of log_probs, but"):
        HeadFeatures(z, logit_tokens=(1,))
    f = HeadFeatures(z, log_probs=torch.zeros(3, 2), logit_tokens=(1, 2), top_token=torch.zeros(3, dtype=torch.long))
    assert "log_probs=2 columns" in repr(f)
    # the next-token output is kept only when every part has it
    mixed = HeadFeatures.concat([f, HeadFeatures(z, example_ids=["x", "y", "w"])])
    assert mixed.n_examples == 6 and mixed.log_probs is None and mixed.logit_tokens is None
