"""Out-of-core scoring and fitting: a store larger than a tiny memory bound, streamed, equals the in-memory path."""

import random
from pathlib import Path

import pytest
import torch

from savlens import SAV, outofcore
from savlens.classifiers import HeadKNN, HeadLinearProbe
from savlens.errors import FeatureError
from savlens.outofcore import StoredFeatures, bounded_memory, memory_bound, open_shards, set_memory_bound
from savlens.scoring import centroid_accuracy, fisher_ratio, probe_accuracy
from savlens.store import FeatureStore, open_store
from savlens.transfer import transfer_matrix

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


def _record_blocks(monkeypatch: pytest.MonkeyPatch, heads_read: list[int] | None = None) -> list[int]:
    """Record the bytes of every block read from the shards (and, in ``heads_read``, its number of heads)."""
    sizes: list[int] = []
    real = StoredFeatures.rows

    def rows(self: StoredFeatures, start: int, stop: int, heads: slice | torch.Tensor | None = None) -> torch.Tensor:
        out = real(self, start, stop, heads)
        sizes.append(out.numel() * out.element_size())  # the block read, in the stored dtype
        if heads_read is not None:
            heads_read.append(out.shape[1])
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
        open_shards(store).load()
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


@pytest.mark.parametrize("mode", ["in_sample", "loo", "kfold"])
@pytest.mark.parametrize("bound", [BOUND, 8_000])  # whole groups of heads; blocks of examples read twice
def test_probe_streamed_equals_in_memory(store: Path, mode: str, bound: int, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = probe_accuracy(open_store(store), mode=mode, n_folds=4, alpha=0.5)
    stored = open_shards(store)
    assert stored.nbytes > 4 * bound
    sizes = _record_blocks(monkeypatch)
    with bounded_memory(bound):
        got = probe_accuracy(stored, mode=mode, n_folds=4, alpha=0.5)
    assert torch.equal(got.scores, mem.scores) and got.params == mem.params and got.mode == mode
    assert len(sizes) >= 4 and max(sizes) <= bound // 2
    assert got.scores.argmax() == 1 * 4 + 2  # the planted head
    if bound == 8_000:
        assert max(sizes) < 300 * 16 * 2  # no block holds every example of a head


@pytest.mark.parametrize("n,d", [(24, 3), (8, 12)])  # more examples than p; fewer (dual in memory, primal streamed)
def test_probe_streamed_equals_brute_force_ridge(tmp_path: Path, n: int, d: int) -> None:
    """The probe in memory and streamed (blocks of 3 examples) against per-example refits (float64 solves)."""
    g = torch.Generator().manual_seed(1)
    y = [i % 2 for i in range(n)]
    z = torch.randn(n, 1, 2, d, generator=g)
    z[:, 0, 0, 0] += torch.tensor(y, dtype=torch.float32)
    with FeatureStore(tmp_path / "s", {**HEADER, "layers": [0], "dtype": "float32", "order": None}) as fs:
        fs.append(z, [f"e{i}" for i in range(n)], y)
    mem = probe_accuracy(open_store(tmp_path / "s"), mode="loo", alpha=0.5)
    sizes: list[int] = []
    with bounded_memory(3 * d * 4 * 2), pytest.MonkeyPatch.context() as mp:
        sizes = _record_blocks(mp)
        got = probe_accuracy(open_shards(tmp_path / "s"), mode="loo", alpha=0.5)
    assert max(sizes) <= 3 * d * 4 and len(sizes) >= 2 * n // 3
    a = torch.cat([torch.nn.functional.normalize(z[:, 0].double(), dim=-1), torch.ones(n, 2, 1).double()], dim=-1)
    target = torch.nn.functional.one_hot(torch.tensor(y), 2).double()
    for head in range(2):
        right = 0
        for i in range(n):
            keep = [j for j in range(n) if j != i]
            ah = a[keep, head]
            w = torch.linalg.solve(ah.T @ ah + 0.5 * torch.eye(d + 1, dtype=torch.float64), ah.T @ target[keep])
            right += int((a[i, head] @ w).argmax()) == y[i]
        assert got.scores[0, head].item() == right / n == mem.scores[0, head].item()


def test_sav_reads_only_the_selected_heads(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stored = open_shards(store)
    with bounded_memory(BOUND):
        sav = SAV(k=3).fit(stored)
    heads: list[int] = []
    sizes = _record_blocks(monkeypatch, heads)
    with bounded_memory(BOUND):
        sav.fit_heads(stored, heads=sav.heads_)  # centroids of given heads: no scoring
        votes = sav.votes(stored)
    assert set(heads) == {3} and len(sizes) >= 4  # blocks of the 3 heads, never whole rows of 12
    assert sum(sizes) == 2 * 300 * 3 * 16 * 2  # every example's 3 heads, once for the centroids, once to vote
    assert votes.labels() == SAV(k=3).fit(open_store(store)).predict(open_store(store))


def test_knn_and_linear_probe_on_stored_features_equal_in_memory(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem_feats, stored = open_store(store), open_shards(store)
    train, test = list(range(0, 300, 2)), list(range(1, 300, 2))
    mem = HeadKNN(k=3, n_neighbors=5).fit(mem_feats.subset(train))
    heads: list[int] = []
    sizes = _record_blocks(monkeypatch, heads)
    with bounded_memory(BOUND):
        knn = HeadKNN(k=3, n_neighbors=5).fit(stored.subset(train))
        proba, predicted = knn.predict_proba(stored.subset(test)), knn.predict(stored.subset(test))
    assert knn.heads_ == mem.heads_ and torch.equal(knn.train_, mem.train_)
    assert torch.equal(proba, mem.predict_proba(mem_feats.subset(test)))
    assert predicted == mem.predict(mem_feats.subset(test))
    assert max(sizes) <= BOUND // 2 and heads.count(3) >= 4  # queries in blocks of the 3 selected heads
    pytest.importorskip("sklearn")
    probe = HeadLinearProbe(k=3).fit(mem_feats.subset(train))
    with bounded_memory(BOUND):
        streamed = HeadLinearProbe(k=3).fit(stored.subset(train))
        assert streamed.predict(stored.subset(test)) == probe.predict(mem_feats.subset(test))


def test_transfer_matrix_on_stored_features_equals_in_memory(store: Path) -> None:
    mem_feats, stored = open_store(store), open_shards(store)
    parts = {"a": (range(0, 80), range(80, 150)), "b": (range(150, 230), range(230, 300))}
    mem = transfer_matrix(
        {t: (mem_feats.subset(tr), mem_feats.subset(te)) for t, (tr, te) in parts.items()},
        k=2,
        baselines=("random", "all"),
        n_random=3,
    )
    with bounded_memory(BOUND):
        got = transfer_matrix(
            {t: (stored.subset(tr), stored.subset(te)) for t, (tr, te) in parts.items()},
            k=2,
            baselines=("random", "all"),
            n_random=3,
        )
    assert torch.equal(got.accuracy, mem.accuracy) and got.heads == mem.heads
    assert all(torch.equal(got.baselines[b], mem.baselines[b]) for b in ("random", "all"))
    assert got.random_accuracy == mem.random_accuracy
    (tr, te), (tr2, te2) = parts["a"], parts["b"]
    mixed = {"a": (mem_feats.subset(tr), mem_feats.subset(te)), "b": (stored.subset(tr2), stored.subset(te2))}
    with bounded_memory(BOUND):
        assert torch.equal(transfer_matrix(mixed, k=2).accuracy, mem.accuracy)  # in memory and stored, mixed


def test_subset_reads_the_chosen_examples(store: Path) -> None:
    mem, stored = open_store(store), open_shards(store)
    pick = [298, 0, 17, 5, -1]
    part = stored.subset(pick)
    assert part.example_ids == [mem.example_ids[i] for i in pick] and part.labels == [mem.labels[i] for i in pick]
    assert torch.equal(part.chunk(0, 5).z, mem.z[torch.tensor(pick)])
    assert torch.equal(
        part.subset([4, 1]).rows(0, 2, torch.tensor([11, 0])), mem.z[[299, 0]].reshape(2, 12, 16)[:, [11, 0]]
    )
    with pytest.raises(Exception, match="indices must lie"):
        stored.subset([300])
    with pytest.raises(Exception, match="repeat an example"):
        stored.subset([3, 3])
