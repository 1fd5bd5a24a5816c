"""Out-of-core scoring and fitting: a store larger than a tiny memory bound, streamed, equals the in-memory path."""

import random
from pathlib import Path

import pytest
import torch

from savlens import SAV, outofcore
from savlens.errors import FeatureError
from savlens.outofcore import StoredFeatures, bounded_memory, memory_bound, open_shards, set_memory_bound
from savlens.scoring import centroid_accuracy, fisher_ratio, probe_accuracy
from savlens.store import FeatureStore, open_store

BOUND = 24_000  # bytes: the store below holds 300 x 3 x 4 x 16 fp16 values = 115 kB
HEADER = {"model_id": "m", "fingerprint": None, "hook": "blocks.*.attn.hook_z", "positions": "last",
          "prompt_template": None, "chat": True, "system_prompt": None, "layers": [0, 1, 2], "dtype": "float16",
          "logits": None, "logit_tokens": None}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ooc") / "store"
    g = torch.Generator().manual_seed(3)
    n, labels = 300, ["cat", "dog", "eel"]
    z = torch.randn(n, 3, 4, 16, generator=g)
    y = [labels[i % 3] for i in range(n)]
    for i in range(n):  # class signal on a few heads, of varying strength
        z[i, 1, 2, labels.index(y[i])] += 1.5
        z[i, 2, 0, labels.index(y[i])] += 0.4
    ids = [f"ex{i:04d}" for i in range(n)]
    with FeatureStore(root, {**HEADER, "order": None}) as fs:
        for s in range(0, n, 37):  # uneven shards
            fs.append(z[s : s + 37].half(), ids[s : s + 37], y[s : s + 37])
        order = ids[:]
        random.Random(0).shuffle(order)  # a store order other than the shard order
        fs.set_order(order)
    return root


def _record_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = StoredFeatures.rows

    def rows(self: StoredFeatures, start: int, stop: int, heads: slice | None = None) -> torch.Tensor:
        out = real(self, start, stop, heads)
        sizes.append(out.numel() * out.element_size())  # the block read, in the stored dtype
        return out

    monkeypatch.setattr(StoredFeatures, "rows", rows)
    return sizes


@pytest.mark.parametrize("mode", ["in_sample", "loo", "kfold"])
@pytest.mark.parametrize("blocks", ["examples", "head groups"])
def test_centroid_scores_streamed_equal_in_memory(
    store: Path, mode: str, blocks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = centroid_accuracy(open_store(store), mode=mode)
    stored = open_shards(store)
    assert stored.nbytes > 4 * BOUND and stored.dtype == torch.float16
    bound = BOUND
    if blocks == "head groups":  # every example of a few heads per block (each byte read once)
        monkeypatch.setattr(outofcore, "MIN_HEADS_PER_GROUP", 2)
        bound = 60_000
    sizes = _record_blocks(monkeypatch)
    with bounded_memory(bound):
        got = centroid_accuracy(stored, mode=mode)
    assert torch.equal(got.scores, mem.scores) and got.params == mem.params
    assert len(sizes) >= 4 and max(sizes) <= bound // 2  # many blocks, each within its half of the bound
    if blocks == "head groups":
        row = 300 * 16 * 2  # one head of all 300 examples
        assert all(s % row == 0 and s < 12 * row for s in sizes)  # groups of a few heads, every example
    assert got.scores.argmax() == 1 * 4 + 2  # the planted head


def test_fisher_streamed_equals_in_memory(store: Path) -> None:
    mem = fisher_ratio(open_store(store)).scores
    with bounded_memory(BOUND):
        got = fisher_ratio(open_shards(store)).scores
    torch.testing.assert_close(got, mem, rtol=1e-12, atol=0)


def test_sav_fit_and_predict_streamed_equal_in_memory(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem_feats = open_store(store)
    mem = SAV(k=4).fit(mem_feats)
    stored = open_shards(store)
    sizes = _record_blocks(monkeypatch)
    with bounded_memory(BOUND):
        sav = SAV(k=4).fit(stored)
        votes = sav.votes(stored)
        accuracy = sav.score(stored)
        predicted = sav.predict(stored)
    assert sav.heads_ == mem.heads_ and torch.equal(sav.centroids_, mem.centroids_)
    want = mem.votes(mem_feats)
    assert torch.equal(votes.similarity, want.similarity) and torch.equal(votes.winners, want.winners)
    assert accuracy == mem.score(mem_feats) and predicted == mem.predict(mem_feats)
    assert max(sizes) <= BOUND // 2


@pytest.mark.parametrize("voting", ["score", "reliability"])
def test_weighted_voting_on_stored_features_equals_in_memory(store: Path, voting: str) -> None:
    mem_feats = open_store(store)
    mem = SAV(k=4, voting=voting).fit(mem_feats)
    with bounded_memory(BOUND):
        sav = SAV(k=4, voting=voting).fit(open_shards(store))
    assert torch.equal(sav.vote_weights_, mem.vote_weights_)
    assert sav.predict(mem_feats) == mem.predict(mem_feats)


def test_loading_past_the_bound_is_refused_and_the_bound_is_restored(store: Path) -> None:
    before = memory_bound()
    with bounded_memory(BOUND), pytest.raises(FeatureError, match="more than the memory bound"):
        probe_accuracy(open_shards(store))  # the probe is not streamed
    assert memory_bound() == before
    assert torch.equal(open_shards(store).load().z, open_store(store).z)
    with pytest.raises(Exception, match="positive number of bytes"):
        set_memory_bound(0)


def test_rows_follow_the_store_order(store: Path) -> None:
    mem, stored = open_store(store), open_shards(store)
    assert stored.example_ids == mem.example_ids and stored.labels == mem.labels
    part = stored.chunk(17, 141)
    assert torch.equal(part.z, mem.z[17:141]) and part.example_ids == mem.example_ids[17:141]  # type: ignore[index]
    flat = mem.z.reshape(300, 12, 16)
    assert torch.equal(stored.rows(5, 290, slice(3, 7)), flat[5:290, 3:7])
