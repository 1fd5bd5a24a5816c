"""Voting rules: the registry, known answers on planted heads, leave-one-out weights, SAV integration."""

import dataclasses
from pathlib import Path

import pytest
import torch

from savlens import SAV, HeadFeatures, HeadSet
from savlens.errors import ArgumentError
from savlens.heads import HeadScores
from savlens.voting import (
    VoteContext,
    available_votings,
    get_voting,
    loo_similarity,
    register_voting,
    reliability_weighted,
    run_voting,
)

PLANTED = HeadSet(["L0H0", "L0H1"])
NOISE = HeadSet(["L1H0", "L1H1", "L1H2"])


def planted(n_per_class: int, seed: int) -> HeadFeatures:
    """Two classes; heads L0H0, L0H1 separate them; L1H0-L1H2 vote at random (same direction, tiny noise)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_per_class
    codes = torch.arange(n) % 2
    z = torch.zeros(n, 2, 3, 4)
    z[:, 0, :2, 0] = (codes == 0).float()[:, None] + 0.05 * torch.randn(n, 2, generator=g)
    z[:, 0, :2, 1] = (codes == 1).float()[:, None] + 0.05 * torch.randn(n, 2, generator=g)
    z[:, 1, :, 2] = 1.0
    z[:, 1, :, 3] = torch.randn(n, 3, generator=g)  # votes carry no class information
    return HeadFeatures(z, labels=["a" if c == 0 else "b" for c in codes.tolist()])


def test_shipped_rules_are_registered() -> None:
    assert {"majority", "score", "reliability"} <= set(available_votings())
    with pytest.raises(ArgumentError, match="no voting rule is registered as 'plurality'"):
        get_voting("plurality")


def test_loo_similarity_matches_a_brute_force_loop() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    codes = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    sim = loo_similarity(x, codes, 3)
    for i in range(7):
        for c in range(3):
            members = [j for j in range(7) if codes[j] == c and j != i]
            centroid = x[members].mean(0)
            want = torch.nn.functional.cosine_similarity(x[i], centroid, dim=-1)
            torch.testing.assert_close(sim[i, :, c], want)


def test_weighted_rules_recover_the_planted_heads_votes_where_majority_fails() -> None:
    train, test = planted(20, seed=0), planted(100, seed=1)
    heads = PLANTED | NOISE
    truth = test.labels
    acc = {}
    for rule in ("majority", "score", "reliability"):
        scores = HeadScores(torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64), "planted")
        sav = SAV(voting=rule).fit_heads(train, heads=heads, scores=scores)
        predicted = sav.predict(test)
        acc[rule] = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
        if rule != "majority":
            planted_votes = sav.votes(test).votes[:, 0]  # L0H0's vote (L0H1 agrees with it)
            assert sav.votes(test).winners.tolist() == planted_votes.tolist()
    assert acc["score"] == acc["reliability"] == 1.0
    assert 0.7 < acc["majority"] < 0.95  # three random heads outvote the two planted ones on ~1/8 of the examples


def test_reliability_weights_are_learned_with_leave_one_out() -> None:
    train = planted(20, seed=0)
    sav = SAV(voting="reliability").fit_heads(train, heads=PLANTED | NOISE)
    w = sav.vote_weights_
    # the planted heads are right on every shot: p = (20 + 2/2) / (20 + 2) per class
    expected = torch.log(torch.tensor(21 / 22) / torch.tensor(1 / 22)).double()
    torch.testing.assert_close(w[:2], expected.expand(2, 2))
    assert (w[2:] < 0.35 * expected).all()
    # in sample, a head whose own vector sits in its centroid looks better than it is: leave-one-out does not
    one_shot = HeadFeatures(torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]], [[[0.9, 0.1]]]]), labels=["a", "b", "b"])
    sav = SAV(voting="reliability").fit_heads(one_shot, heads=["L0H0"])
    # leave-one-out: "a" has a single shot, so it has no centroid without itself (wrong); shot (0, 1) of "b" is
    # nearer b's other shot (0.9, 0.1) than a's centroid (1, 0) (right); shot (0.9, 0.1) is nearer a (wrong)
    ctx_votes = loo_similarity(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.9, 0.1]]]), torch.tensor([0, 1, 1]), 2)
    assert ctx_votes.argmax(-1)[:, 0].tolist() == [1, 1, 0]  # 1 right of 3, where in sample all 3 are right
    assert sav.vote_weights_.tolist() == [[0.0, 0.0]]


def test_reliability_per_class_weights_follow_each_class_precision() -> None:
    # head 0 always votes its shot's class for class 0, and 1 / 2 at random between classes 1 and 2
    codes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    votes = torch.tensor([[0], [0], [0], [0], [1], [2], [1], [2], [2], [1], [2], [1]])
    ctx = VoteContext(HeadSet(["L0H0"]), ("x", "y", "z"), codes, torch.zeros(12, 1, 3), votes)
    w = reliability_weighted(ctx)[0]
    # class 0: 4 of 4 right: p = (4 + 2/3) / 6; classes 1, 2: 2 of 4: p = (2 + 2/3) / 6
    p0, p1 = (4 + 2 / 3) / 6, (2 + 2 / 3) / 6
    p = torch.tensor([p0, p1, p1], dtype=torch.float64)
    torch.testing.assert_close(w, torch.log(2 * p / (1 - p)))
    assert w[0] > w[1] == w[2]
    flat = reliability_weighted(ctx, per_class=False)[0]
    assert torch.allclose(flat, flat[0].expand(3)) and w[1] < flat[0] < w[0]


def test_majority_is_the_default_and_unchanged() -> None:
    feats = planted(10, seed=3)
    a, b = SAV(k=4).fit(feats), SAV(k=4, voting="majority").fit(feats)
    assert a.predict(feats) == b.predict(feats) and "voting" not in repr(a)
    torch.testing.assert_close(a.predict_proba(feats), a.votes(feats).counts.double() / 4)
    assert a.votes(feats).tally is None and bool((a.vote_weights_ == 1).all())


def test_a_custom_rule_registers_saves_and_loads(tmp_path: Path) -> None:
    @register_voting("first_head_only", replace=True)
    def first_head_only(context: VoteContext, *, weight: float = 1.0) -> torch.Tensor:
        w = torch.zeros(len(context.heads), dtype=torch.float64)
        w[0] = weight
        return w

    train, test = planted(10, seed=0), planted(30, seed=2)
    sav = SAV(voting="first_head_only", voting_params={"weight": 2.0}).fit_heads(train, heads=PLANTED | NOISE)
    assert sav.vote_weights_[:, 0].tolist() == [2.0, 0, 0, 0, 0]
    assert sav.predict(test) == test.labels
    shares = sav.predict_proba(test)
    assert bool(((shares == 1) | (shares == 0)).all())
    loaded = SAV.load(sav.save(tmp_path / "s"))
    assert loaded.voting == "first_head_only" and loaded.predict(test) == sav.predict(test)
    torch.testing.assert_close(loaded.vote_weights_, sav.vote_weights_)


def test_bad_rules_and_reference_mode_are_refused() -> None:
    feats = planted(5, seed=0)
    with pytest.raises(ArgumentError, match="reference=True votes as the reference code"):
        SAV(k=2, reference=True, voting="reliability").fit(feats)
    with pytest.raises(ArgumentError, match="no voting rule is registered as 'nope'"):
        SAV(k=2, voting="nope").fit(feats)
    with pytest.raises(ArgumentError, match="came without scores"):
        SAV(voting="score").fit_heads(feats, heads=["L0H0"])
    no_votes = torch.zeros(2, 1, dtype=torch.long)
    ctx = VoteContext(HeadSet(["L0H0"]), ("a", "b"), torch.tensor([0, 1]), torch.zeros(2, 1, 2), no_votes)
    with pytest.raises(ArgumentError, match="negative, NaN or infinite"):
        run_voting(lambda c: torch.tensor([-1.0]), ctx)
    with pytest.raises(ArgumentError, match=r"voting rule 'reliability' takes no parameters \['per_head'\]"):
        run_voting("reliability", ctx, {"per_head": True})
    with pytest.raises(ArgumentError, match=r"voting rule 'majority' takes no parameters \['weight'\]"):
        SAV(k=2, voting_params={"weight": 2}).fit(feats)
    with pytest.raises(ArgumentError, match=r"returned weights of shape \(3,\)"):
        run_voting(lambda c: torch.ones(3), ctx)

    def infinite(features: HeadFeatures, labels: object = None) -> HeadScores:  # as a Fisher ratio can be
        return HeadScores(torch.full((2, 3), torch.inf), "infinite", layers=features.layers)

    with pytest.raises(ArgumentError, match="finite scores >= 0"):
        SAV(k=2, criterion=infinite, voting="score").fit(feats)


def test_weighted_votes_on_stored_features_equal_those_in_memory(tmp_path: Path) -> None:
    """Votes streamed block by block from a store keep the weighted tally (the shares of a weighted rule)."""
    from savlens.outofcore import bounded_memory, open_shards
    from savlens.store import FeatureStore

    chat = {"chat": True, "system_prompt": None}  # what a store records
    train, test = (dataclasses.replace(planted(n, seed), meta=chat) for n, seed in ((10, 0), (6, 1)))
    sav = SAV(k=5, voting="reliability").fit(train)
    with FeatureStore(tmp_path / "s", {"model_id": "unknown", "hook": "blocks.*.attn.hook_z", "layers": [0, 1]}) as fs:
        fs.append(test.z, test.example_ids, test.labels)
    stored = open_shards(tmp_path / "s")
    want = sav.votes(test)
    assert want.tally is not None and not torch.equal(want.shares, want.counts.double() / 5)
    with bounded_memory(4 * 5 * 4 * 4):  # a few examples per block
        got = sav.votes(stored)
    assert got.tally is not None
    torch.testing.assert_close(got.tally, want.tally)
    torch.testing.assert_close(got.shares, want.shares)
    assert got.labels() == want.labels()
