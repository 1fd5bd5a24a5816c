"""Heads vs layers under equal conditions, cross-task transfer, head overlap and score correlation."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from _reference.synthetic import planted

from savlens.cache import HeadFeatures
from savlens.classifiers import SparseLayers
from savlens.compare import compare_heads_layers, jaccard, layer_budget, spearman
from savlens.errors import ArgumentError, FeatureError, SavlensError
from savlens.heads import HeadScores, HeadSet
from savlens.sav import SAV
from savlens.scoring import stratified_folds
from savlens.transfer import TaskSplit, TransferMatrix, task_overlap, transfer_matrix


def task(informative, seed, n_train=15, n_test=25, signal=20.0, **kw):
    z, labels = planted(n_per_class=n_train + n_test, informative=informative, signal=signal, seed=seed, **kw)
    per = n_train + n_test
    names = ["yes", "no"]
    f = HeadFeatures(z, labels=[names[v] for v in labels], model_id="m", prompt_template=f"task {seed}: {{q}}")
    train = [c * per + i for c in range(2) for i in range(n_train)]
    test = [c * per + i for c in range(2) for i in range(n_train, per)]
    return TaskSplit(f.subset(train), f.subset(test))


def test_heads_beat_diluted_layers_and_shuffled_labels_fall_to_chance() -> None:
    z, labels = planted(n_per_class=40, informative=((1, 0), (3, 2)), signal=3.0, seed=1, n_heads=32)
    f = HeadFeatures(z, labels=labels)
    result = compare_heads_layers(f, k=2, n_folds=4, seed=1)
    assert torch.equal(result.folds, stratified_folds(labels, 4, 1))
    assert result.k_layers == layer_budget(2, 4, 32) == 1
    assert result.n_features_heads == 16 and result.n_features_layers == 256
    means = result.mean()
    assert means["heads"] > 0.95
    assert means["heads"] > means["layers"] + 0.05
    assert abs(means["heads_shuffled"] - 0.5) < 0.2 and abs(means["layers_shuffled"] - 0.5) < 0.2
    assert result.chance == 0.5
    assert result.heads.shape == (4,) and "sparse heads  (k=2, 16 dims)" in str(result)
    units = compare_heads_layers(f, k=2, budget="units", n_folds=2)
    assert units.k_layers == 2
    with pytest.raises(SavlensError, match="budget must be 'features' or 'units'"):
        compare_heads_layers(f, budget="dims")


def test_jaccard_and_spearman_values() -> None:
    assert jaccard(HeadSet("L1H0, L2H3"), HeadSet("L2H3, L1H0")) == 1.0
    assert jaccard(["L1H0"], ["L2H0"]) == 0.0
    assert jaccard([], []) == 1.0
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6), generator=g).double()  # many ties
    b = a + torch.randint(0, 3, (4, 6), generator=g).double()
    want = stats.spearmanr(a.reshape(-1).numpy(), b.reshape(-1).numpy()).statistic
    assert spearman(HeadScores(a, "x"), HeadScores(b, "y")) == pytest.approx(want)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(torch.ones(2, 2), a[:2, :2]) != spearman(torch.ones(2, 2), a[:2, :2])  # NaN
    with pytest.raises(FeatureError, match="shapes"):
        spearman(a, a[:2])


def test_transfer_matrix_between_tasks_sharing_heads_or_not() -> None:
    shared, other = ((0, 1), (2, 3)), ((1, 2), (3, 0))
    tasks = {"A": task(shared, seed=1), "B": task(shared, seed=2), "C": task(other, seed=3)}
    result = transfer_matrix(tasks, k=2)
    assert result.tasks == ("A", "B", "C")
    assert result.heads["A"].same_heads(HeadSet(shared)) and result.heads["C"].same_heads(HeadSet(other))
    for t in "ABC":
        assert result[t, t] == 1.0
    assert result["A", "B"] == 1.0 and result["B", "A"] == 1.0
    assert result["A", "C"] < 0.8 and result["C", "A"] < 0.8
    overlap = result.overlap()
    assert overlap.jaccard[0, 1].item() == 1.0 and overlap.jaccard[0, 2].item() == 0.0
    assert overlap.spearman[0, 1].item() > overlap.spearman[0, 2].item()
    assert json.loads(json.dumps(result.to_dict()))["heads"]["A"] == result.heads["A"].to_list()
    assert "A" in str(result) and "Jaccard" in str(overlap)
    direct = task_overlap(result.scores, k=2)
    assert torch.equal(direct.jaccard, overlap.jaccard)


def test_transfer_refuses_mixed_models_and_unknown_pairs() -> None:
    a = task(((0, 1),), seed=1)
    b = task(((0, 1),), seed=2)
    b = TaskSplit(b.train, dataclasses.replace(b.test, model_id="other"))
    with pytest.raises(FeatureError, match="cannot mix the features of task 'A' and task 'B' \\(test\\)"):
        transfer_matrix({"A": a, "B": b}, k=1)
    result = transfer_matrix({"A": (a.train, a.test)}, k=1)
    with pytest.raises(SavlensError, match="tasks are \\('A',\\)"):
        result["A", "Z"]
    with pytest.raises(SavlensError, match="no tasks"):
        transfer_matrix({})


# ---- fixed train / test split in compare_heads_layers -------------------------------------------------


@pytest.mark.parametrize("mode", [None, "kfold"])
def test_fixed_split_equals_fitting_heads_and_layers_by_hand(mode) -> None:
    s = task(((1, 0), (3, 2)), seed=4, n_train=20, n_test=30, signal=2.5, n_heads=8)
    result = compare_heads_layers(s.train, test=s.test, k=3, seed=7, mode=mode, n_folds=4)
    assert result.fixed_split and result.folds is None
    assert (result.n_train, result.n_test, result.k_layers) == (40, 60, layer_budget(3, 4, 8))
    tr_labels, te_labels = list(s.train.labels or []), list(s.test.labels or [])
    shuffled = [tr_labels[i] for i in np.random.default_rng(7).permutation(len(tr_labels))]
    assert shuffled != tr_labels
    for suffix, fit_labels in (("", tr_labels), ("_shuffled", shuffled)):
        sav = SAV(3, mode=mode, seed=7, n_folds=4).fit(s.train, fit_labels)
        layers = SparseLayers(result.k_layers, mode=mode, seed=7, n_folds=4).fit(s.train, fit_labels)
        assert getattr(result, "heads" + suffix).tolist() == [sav.score(s.test, te_labels)]
        assert getattr(result, "layers" + suffix).tolist() == [layers.score(s.test, te_labels)]
        if suffix == "":
            assert result.heads_chosen == sav.heads_ and result.layers_chosen == layers.layers_
    m = result.mean()
    assert 0.6 < m["layers"] <= m["heads"] < 1.0  # a value test, not a trivially perfect split
    assert result.chance == 0.5 and "fixed split: 40 train, 60 test examples" in str(result)
    # the heads arm is the diagonal of a transfer matrix with the same k and seed
    assert transfer_matrix({"t": s}, k=3, seed=7, mode=mode)["t", "t"] == m["heads"]


def test_fixed_split_control_sits_at_chance_and_takes_test_labels() -> None:
    real, shuffled = [], []
    for seed in range(10):
        s = task(((0, 1), (2, 3)), seed=seed, n_train=20, n_test=40, signal=2.0)
        r = compare_heads_layers(s.train, test=s.test, k=2, seed=seed).mean()
        real.append(r["heads"])
        shuffled += [r["heads_shuffled"], r["layers_shuffled"]]
    assert min(real) > 0.9
    assert abs(float(np.mean(shuffled)) - 0.5) < 0.06 and max(abs(v - 0.5) for v in shuffled) < 0.2
    # explicit test labels win over the ones attached; chance is the largest test class's share
    flipped = ["no" if lab == "yes" else "yes" for lab in s.test.labels or []]
    r_flipped = compare_heads_layers(s.train, test=s.test, test_labels=flipped, k=2, seed=seed).mean()
    assert r_flipped["heads"] == pytest.approx(1.0 - r["heads"]) and r["heads"] < 1.0
    one_class = s.test.subset(list(range(30)))  # 30 of the 40 "yes" test examples, no "no"
    assert compare_heads_layers(s.train, test=one_class, k=2).chance == 1.0
    other = dataclasses.replace(s.test, model_id="other")
    with pytest.raises(FeatureError, match="the training features and the test features \\(compare_heads_layers\\)"):
        compare_heads_layers(s.train, test=other, k=2)


# ---- baselines of the transfer matrix -----------------------------------------------------------------


def test_transfer_baselines_equal_hand_fitted_random_and_all_head_savs() -> None:
    tasks = {
        "A": task(((0, 1), (2, 3)), seed=1, signal=3.0),
        "B": task(((0, 1), (2, 3)), seed=2, signal=3.0),
        "C": task(((1, 2), (3, 0)), seed=3, signal=3.0),
    }
    plain = transfer_matrix(tasks, k=3, seed=5)
    m = transfer_matrix(tasks, k=3, seed=5, baselines=("all", "random"), n_random=4)
    # the task rows are those of the plain matrix; the baselines sit apart, in the order random, all
    assert torch.equal(m.accuracy, plain.accuracy) and m.heads == plain.heads and plain.baselines == {}
    assert list(m.baselines) == ["random", "all"] and m.n_random == 4
    rng = np.random.default_rng(5)
    for j, t in enumerate("ABC"):
        s = tasks[t]
        accs = []
        for d in range(4):
            flat = rng.choice(16, size=3, replace=False).tolist()
            heads = HeadSet([(f // 4, f % 4) for f in flat])
            assert m.random_heads[t][d] == heads
            accs.append(SAV().fit_heads(s.train, heads=heads).score(s.test))
        assert m.random_accuracy[t] == accs
        assert m.baselines["random"][j].item() == float(np.mean(accs))
        assert m.baselines["all"][j].item() == SAV(k=16, seed=5).fit(s.train).score(s.test)
    assert len({tuple(m.random_heads[t][0]) for t in "ABC"}) == 3  # each column has its own draws
    assert (m.baselines["random"] < m.accuracy.diagonal()).all()  # own heads beat random heads
    assert "3 random heads" in str(m) and "all heads" in str(m)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["baselines"]["all"] == m.baselines["all"].tolist()
    assert d["random_accuracy"]["A"] == m.random_accuracy["A"] and d["n_random"] == 4 and "random_heads" not in d
    only = transfer_matrix(tasks, k=3, seed=5, baselines="all")
    assert list(only.baselines) == ["all"] and only.n_random == 0
    assert torch.equal(only.baselines["all"], m.baselines["all"])
    with pytest.raises(ArgumentError, match="unknown baselines \\['rand'\\]; choose from \\('random', 'all'\\)"):
        transfer_matrix(tasks, k=3, baselines=("rand",))
    with pytest.raises(ArgumentError, match="n_random must be a positive int"):
        transfer_matrix(tasks, k=3, baselines=("random",), n_random=0)


# ---- mean and sd over matrices ------------------------------------------------------------------------


def _matrix(seed: int, tasks=("a", "b", "c"), k=2, baselines=("random", "all")) -> TransferMatrix:
    g = torch.Generator().manual_seed(seed)
    rows = {name: torch.rand(len(tasks), generator=g, dtype=torch.float64) for name in baselines}
    acc = torch.rand(len(tasks), len(tasks), generator=g, dtype=torch.float64)
    return TransferMatrix(tuple(tasks), acc, {}, {}, k, baselines=rows, n_random=10 if rows else 0)


def test_mean_of_matrices_is_torch_mean_and_sample_sd() -> None:
    ms = [_matrix(s) for s in range(4)]
    mean = TransferMatrix.mean(ms)
    stack = torch.stack([m.accuracy for m in ms])
    torch.testing.assert_close(mean.accuracy, stack.mean(0), rtol=0, atol=1e-15)
    assert mean.sd is not None
    torch.testing.assert_close(mean.sd, stack.std(0, correction=1), rtol=0, atol=1e-15)  # sample sd, n - 1
    assert not torch.allclose(mean.sd, stack.std(0, correction=0))  # ... not the population sd
    np.testing.assert_array_equal(mean.sd.numpy(), stack.numpy().std(0, ddof=1))  # numpy's bits exactly
    for name in ("random", "all"):
        b = torch.stack([m.baselines[name] for m in ms])
        torch.testing.assert_close(mean.baselines[name], b.mean(0), rtol=0, atol=1e-15)
        torch.testing.assert_close(mean.baselines_sd[name], b.std(0), rtol=0, atol=1e-15)
    assert (mean.n_matrices, mean.k, mean.tasks, mean.n_random, mean.heads) == (4, 2, ("a", "b", "c"), 10, {})
    assert mean["b", "c"] == float(stack[:, 1, 2].mean()) and "mean of 4 matrices" in str(mean)
    assert json.loads(json.dumps(mean.to_dict()))["sd"] == mean.sd.tolist()
    one = TransferMatrix.mean(ms[:1])
    assert torch.equal(one.accuracy, ms[0].accuracy) and one.sd is not None and not one.sd.any()
    with pytest.raises(ArgumentError, match="mean of 4 matrices, which has no single head selection"):
        mean.overlap()


def test_mean_refuses_matrices_that_do_not_line_up() -> None:
    a = _matrix(0)
    with pytest.raises(
        ArgumentError, match="matrix 1 has tasks \\('a', 'c', 'b'\\) but matrix 0 has \\('a', 'b', 'c'\\)"
    ):
        TransferMatrix.mean([a, _matrix(1, tasks=("a", "c", "b"))])
    with pytest.raises(ArgumentError, match="matrix 2 has tasks \\('a', 'b', 'd'\\)"):
        TransferMatrix.mean([a, a, _matrix(1, tasks=("a", "b", "d"))])
    with pytest.raises(ArgumentError, match="matrix 1 has k=3 but matrix 0 has k=2"):
        TransferMatrix.mean([a, _matrix(1, k=3)])
    with pytest.raises(ArgumentError, match="matrix 1 has baselines \\(\\)"):
        TransferMatrix.mean([a, _matrix(1, baselines=())])
    with pytest.raises(ArgumentError, match="already a mean of 2 matrices"):
        TransferMatrix.mean([TransferMatrix.mean([a, a]), a])
    with pytest.raises(ArgumentError, match="no matrices given"):
        TransferMatrix.mean([])
