"""Data-parallel extraction: 2 gloo processes write one store, equal to a single-process extraction."""

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import savlens
from savlens.extraction import extract
from savlens.store import open_store
from savlens.testing.tiny import build_tiny, sample_images


def _examples() -> list[savlens.Example]:
    imgs = sample_images(11, seed=5)
    return [
        savlens.Example(
            "what color is it ?" + " please" * (i % 3), images=[imgs[i]] if i % 2 else [], label=i % 3, id=f"x{i}"
        )
        for i in range(11)
    ]


def _model() -> savlens.Model:
    tm = build_tiny("qwen2_vl")
    return savlens.wrap(tm.model, tm.processor, model_id="tiny-qwen2_vl")


def _worker(rank: int, world: int, init: str, store: str) -> None:
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        feats = extract(_model(), _examples(), batch_size=2, store=store, progress=False)
        assert feats.n_examples == 11
        (Path(store).parent / f"rank{rank}.json").write_text(json.dumps(feats.example_ids))
    finally:
        dist.destroy_process_group()


def test_two_process_extraction_equals_single_process(tmp_path: Path) -> None:
    store = tmp_path / "dp"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", str(store)), nprocs=2, join=True)
    merged = open_store(store)
    single = extract(_model(), _examples(), batch_size=2, store=tmp_path / "sp", progress=False)
    assert merged.example_ids == single.example_ids == [f"x{i}" for i in range(11)]
    assert merged.labels == single.labels
    assert torch.equal(merged.z, single.z)  # same batches, so bit-identical
    names = sorted(p.name for p in store.iterdir())
    assert "manifest.json" in names and not any(n.startswith("manifest.rank") for n in names)
    assert any(n.startswith("shard-r0-") for n in names) and any(n.startswith("shard-r1-") for n in names)
    for r in range(2):  # every rank returned the full features
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == single.example_ids
