"""Heads vs layers under equal conditions, cross-task transfer, head overlap and score correlation."""

import dataclasses
import json

import pytest
import torch
from _reference.synthetic import planted

from savlens.cache import HeadFeatures
from savlens.compare import compare_heads_layers, jaccard, layer_budget, spearman
from savlens.errors import FeatureError, SavlensError
from savlens.heads import HeadScores, HeadSet
from savlens.scoring import stratified_folds
from savlens.transfer import TaskSplit, task_overlap, transfer_matrix


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
