"""Extraction: one pass per example, batched, equal to a trace; the feature store writes, resumes, reopens."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny

import savlens
import savlens.extraction as extract_mod
from savlens.errors import HookNameError, InputError, StoreError
from savlens.extraction import extract
from savlens.store import open_store, read_index
from savlens.testing.tiny import sample_images


def _examples(n: int = 14, images: bool = True) -> list[savlens.Example]:
    imgs = sample_images(n, seed=3)
    words = ["what color is the circle ?", "is there a red shape ?", "how many shapes are in the picture ?"]
    return [
        savlens.Example(
            words[i % 3] + " hello" * (i % 4),
            images=[imgs[i]] if images and i % 3 else [],
            label=["yes", "no"][i % 2],
            id=f"e{i}",
        )
        for i in range(n)
    ]


def test_extract_equals_trace_rows_and_keeps_order() -> None:
    model = tiny("qwen2_vl")
    exs = _examples()
    feats = extract(model, exs, batch_size=4, progress=False)
    assert feats.z.shape == (len(exs), 3, 4, 16)
    assert feats.example_ids == [e.id for e in exs] and feats.labels == [e.label for e in exs]
    assert (feats.model_id, feats.hook, feats.positions) == ("tiny-qwen2_vl", "blocks.*.attn.hook_z", "last")
    for i in (0, 5, 13):
        with savlens.trace(model, savlens.Batch.from_examples(model, [exs[i]])) as t:
            z = t.save("blocks.*.attn.hook_z")
        assert (feats.z[i] - z.value[0, 0]).abs().max() < 2e-5


def test_batch_size_does_not_change_features(family: str) -> None:
    model = tiny(family)
    exs = _examples(9, images=model.multimodal)
    a = extract(model, exs, batch_size=1, progress=False)
    b = extract(model, exs, batch_size=5, progress=False)
    assert (a.z - b.z).abs().max() < 2e-5


def test_layer_subset_and_layer_width_hooks() -> None:
    model = tiny("llava_onevision")
    exs = _examples(5)
    full = extract(model, exs, progress=False)
    sub = extract(model, exs, "blocks.{0,2}.attn.hook_z", progress=False)
    assert sub.layers == (0, 2) and sub.hook == "blocks.*.attn.hook_z"
    assert torch.equal(sub.z, full.z[:, [0, 2]])
    resid = extract(model, exs, "blocks.*.hook_resid_post", progress=False)
    assert resid.z.shape == (5, 3, 1, 64)
    second_last = extract(model, exs, positions=-2, progress=False)
    assert not torch.allclose(second_last.z, full.z)


def test_store_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    model = tiny("qwen2_5_vl")
    exs = _examples(10)
    mem = extract(model, exs, batch_size=4, progress=False)
    stored = extract(model, exs, batch_size=4, store=tmp_path / "s", progress=False)
    assert torch.equal(stored.z, mem.z) and stored.example_ids == mem.example_ids and stored.labels == mem.labels
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["hook"] == "blocks.*.attn.hook_z" and manifest["version"] == 2 and "shards" not in manifest
    assert [r["n"] for r in read_index(tmp_path / "s" / "index.jsonl")] == [4, 4, 2]
    assert not (tmp_path / "s" / "write.lock").exists()  # released when the extraction returned
    reopened = open_store(tmp_path / "s")
    assert torch.equal(reopened.z, mem.z) and reopened.example_ids == mem.example_ids


def test_interrupted_extraction_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("llava_onevision")
    exs = _examples(13)
    clean = extract(model, exs, batch_size=3, store=tmp_path / "clean", progress=False)
    real = extract_mod._run_batch
    calls = {"n": 0}

    def flaky(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user (or the cluster) stops the run mid-way
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(extract_mod, "_run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract(model, exs, batch_size=3, store=tmp_path / "r", progress=False)
    assert sum(len(s["ids"]) for s in read_index(tmp_path / "r" / "index.jsonl")) == 6
    assert not (tmp_path / "r" / "write.lock").exists()  # released when the run failed
    monkeypatch.setattr(extract_mod, "_run_batch", real)
    seen: list[int] = []
    monkeypatch.setattr(extract_mod, "_run_batch", lambda m, chunk, *a: seen.append(len(chunk)) or real(m, chunk, *a))
    resumed = extract(model, exs, batch_size=3, store=tmp_path / "r", progress=False)
    assert sum(seen) == 13 - 6  # only the missing examples ran
    assert resumed.example_ids == clean.example_ids
    assert len(set(resumed.example_ids)) == 13
    assert torch.equal(resumed.z, clean.z)  # same batches as an uninterrupted run: bit-identical


def test_store_of_another_extraction_is_refused(tmp_path: Path) -> None:
    exs = _examples(4)
    extract(tiny("qwen2_vl"), exs, store=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="holds features of another extraction.*model_id"):
        extract(tiny("qwen2_5_vl"), exs, store=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="hook"):
        extract(tiny("qwen2_vl"), exs, "blocks.*.hook_resid_post", store=tmp_path / "s", progress=False)


def test_corrupt_store_is_refused(tmp_path: Path) -> None:
    extract(tiny("llama"), _examples(6, images=False), batch_size=3, store=tmp_path / "s", progress=False)
    shard = tmp_path / "s" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not match the sha256"):
        open_store(tmp_path / "s")
    shard.unlink()
    with pytest.raises(StoreError, match="which is missing"):
        open_store(tmp_path / "s")
    with pytest.raises(StoreError, match="no manifest.json"):
        open_store(tmp_path)


def test_bad_extract_arguments() -> None:
    model = tiny("llama")
    exs = _examples(3, images=False)
    with pytest.raises(InputError, match="no examples"):
        extract(model, [])
    with pytest.raises(InputError, match="batch_size"):
        extract(model, exs, batch_size=0)
    with pytest.raises(InputError, match="one per-layer hook kind"):
        extract(model, exs, ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"])
    with pytest.raises(HookNameError, match="Closest valid names"):
        extract(model, exs, "blocks.*.attn.hook_zz")
    with pytest.raises(InputError, match="duplicate example ids"):
        extract(model, [savlens.Example("a", id="x"), savlens.Example("b", id="x")])
