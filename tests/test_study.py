"""The study runner: splits, known answers against SAV and transfer_matrix, determinism, metrics, bad configs."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import savlens.study.runner as runner
from savlens import SAV, HeadFeatures
from savlens.datasets import few_shot_split
from savlens.errors import LoadError, StudyConfigError
from savlens.example import Example
from savlens.study import (
    StudyTable,
    check_disjoint,
    class_metrics,
    draw_nested_split,
    draw_split,
    resolve_groups,
    run_study,
    t_quantile_975,
    write_figures,
)
from savlens.transfer import TaskSplit, transfer_matrix


def task(n_per_class: int, classes: int, seed: int, informative: tuple[int, int] = (1, 2)) -> HeadFeatures:
    """Synthetic features (3 layers x 4 heads x 8 dims); head ``informative`` carries the class, with noise.

    Example ids are ``img{i // 2}/q{i % 2}``: two questions per image (the group key of the tests).
    """
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * classes
    labels = [f"c{i % classes}" for i in range(n)]
    z = torch.randn(n, 3, 4, 8, generator=g)
    layer, head = informative
    for i in range(n):
        z[i, layer, head, i % classes] += 2.5
        z[i, 0, 0, i % classes] += 0.8  # a weaker second head
    return HeadFeatures(z, labels=labels, example_ids=[f"img{i // 2}/q{i % 2}" for i in range(n)], model_id="toy")


TASKS = {"a": task(20, 2, 0), "b": task(16, 3, 1, informative=(2, 1))}


# splits ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(3, 12), min_size=2, max_size=4),
    group_size=st.integers(1, 3),
    shots=st.integers(1, 2),
    seed=st.integers(0, 2**31),
)
def test_splits_are_stratified_and_respect_the_group_key(
    sizes: list[int], group_size: int, shots: int, seed: int
) -> None:
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    order = np.random.default_rng(seed).permutation(len(labels))
    labels = [labels[i] for i in order]
    groups = [i // group_size for i in range(len(labels))]
    try:
        train, test = draw_split(labels, shots, seed=seed, groups=groups)
    except StudyConfigError as e:  # a class whose every other example shares a group with a shot
        assert "keeps no test example" in str(e)
        return
    assert sorted(np.bincount([labels[i] for i in train]).tolist()) == [shots] * len(sizes)  # stratified
    assert check_disjoint(train, test, groups)  # no group on both sides
    assert {labels[i] for i in test} == set(range(len(sizes)))
    # everything not drawn and not sharing a group with a shot is in test
    taken = {groups[i] for i in train}
    assert test == [i for i in range(len(labels)) if i not in train and groups[i] not in taken]


def test_without_groups_the_split_is_few_shot_split() -> None:
    labels = [f"c{(i * 7) % 3}" for i in range(30)]
    examples = [Example(str(i), label=lab, id=str(i)) for i, lab in enumerate(labels)]
    for seed in range(4):
        train, test = few_shot_split(examples, 4, 3, seed=seed)
        assert draw_split(labels, 4, 3, seed=seed) == ([int(e.id) for e in train], [int(e.id) for e in test])  # type: ignore[arg-type]


def seed_split(labels: list[str], n_test: int, seed: int) -> tuple[list[int], dict[str, list[int]]]:
    """The split of experiments/text_analysis.py: a test set first, then ordered training candidates per class."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    test, candidates = [], {}
    for y, idx in by_class.items():
        perm = [idx[j] for j in rng.permutation(len(idx))]
        test += perm[:n_test]
        candidates[y] = perm[n_test:]
    return sorted(test), candidates


def test_nested_splits_share_the_test_set_and_grow_the_shots() -> None:
    labels = [f"c{(i * 5) % 3}" for i in range(36)]
    for seed in range(3):
        trains, test = draw_nested_split(labels, [1, 3, 6], 4, seed=seed)
        want_test, candidates = seed_split(labels, 4, seed)
        assert test == want_test
        for s in (1, 3, 6):
            assert trains[s] == sorted(i for idx in candidates.values() for i in idx[:s])
        assert set(trains[1]) <= set(trains[3]) <= set(trains[6]) and not set(trains[6]) & set(test)
    groups = [i // 3 for i in range(36)]
    trains, test = draw_nested_split(labels, [1, 2], 2, seed=0, groups=groups)
    assert check_disjoint(trains[2], test, groups)
    with pytest.raises(StudyConfigError, match=r"shots=9 \+ n_test=4 needs 13 examples per class"):
        draw_nested_split(labels, [1, 9], 4)
    table = run_study(TASKS, shots=[2, 5], k=[2], n_test=3, nested=True, seeds=[0, 1])
    assert {(r.shots, r.n_test) for r in table.rows} == {(2, 6), (5, 6), (2, 9), (5, 9)}
    with pytest.raises(StudyConfigError, match="nested = true draws one test set per seed: give n_test"):
        run_study(TASKS, shots=[2], k=[2], nested=True)


def test_group_keys_from_a_pattern_a_mapping_and_a_function() -> None:
    ids = ["img1/q0", "img1/q1", "img2/q0"]
    assert resolve_groups(r"^(img\d+)/", ids, "t") == ["img1", "img1", "img2"]
    assert resolve_groups(lambda i: i[:4], ids, "t") == ["img1", "img1", "img2"]
    assert resolve_groups({"img1/q0": 1, "img1/q1": 1, "img2/q0": 2}, ids, "t") == [1, 1, 2]
    with pytest.raises(StudyConfigError, match=r"finds nothing in example id 'img2/q0'"):
        resolve_groups(r"^img1", ids, "t")


# known answers -----------------------------------------------------------------------------------------


def test_a_task_on_itself_is_sav_fit_and_transfer_cells_are_transfer_matrix() -> None:
    table = run_study(TASKS, shots=[6], k=[3], seeds=[0, 1], transfer="all", baselines=["random", "all"], n_random=3)
    for seed in (0, 1):
        splits = {}
        for name, feats in TASKS.items():
            train, test = draw_split(feats.labels, 6, seed=seed)  # type: ignore[arg-type]
            splits[name] = TaskSplit(feats.subset(train), feats.subset(test))
        matrix = transfer_matrix(splits, k=3, seed=seed, baselines=("random", "all"), n_random=3)
        rows = table.select(seed=seed)
        for r in rows.rows:
            if r.kind in ("sav", "transfer"):
                assert r.accuracy == matrix[r.source, r.target], r
            else:
                assert r.accuracy == pytest.approx(float(matrix.baselines[r.kind][list(TASKS).index(r.target)]))
        sav = SAV(k=3, seed=seed).fit(splits["b"].train)
        (row,) = rows.select(kind="sav", target="b").rows
        assert row.heads == sav.heads_.to_list() and row.accuracy == sav.score(splits["b"].test)
        assert row.n_train == 18 and row.n_test == 48 - 18
    assert len(table) == 2 * (2 + 2 + 2 + 2)  # seeds x (diagonal + pairs + random + all)
    mean = table.transfer_matrix()
    assert mean.n_matrices == 2 and set(mean.baselines) == {"random", "all"}


def test_weighted_voting_is_never_worse_than_majority_on_a_planted_case() -> None:
    # one informative head (L1H2) among k = 5 voting heads; the other four are pure noise that outvotes it
    feats = task(40, 2, 3)
    feats.z[:, 0, 0] = torch.randn(80, 8, generator=torch.Generator().manual_seed(9))  # no weaker second head
    rules = ["majority", "score", "reliability"]
    table = run_study({"p": feats}, shots=[15], k=[1, 5], seeds=[0, 1, 2], voting=rules)
    acc = {v: [r.accuracy for r in table.select(k=5, voting=v).rows] for v in rules}
    alone = [r.accuracy for r in table.select(k=1, voting="majority").rows]  # the planted head voting alone
    assert all(r.heads[0] == "L1H2" for r in table.rows)
    for seed in range(3):
        assert acc["reliability"][seed] >= acc["majority"][seed]
        assert acc["score"][seed] >= acc["majority"][seed]
        assert acc["reliability"][seed] >= alone[seed] - 0.1  # near the planted head voting alone
    assert np.mean(acc["majority"]) < 0.75 and np.mean(acc["reliability"]) > 0.9


def test_n_test_per_task() -> None:
    table = run_study(TASKS, shots=[3], k=[2], n_test={"a": 4})
    assert {r.target: r.n_test for r in table.rows} == {"a": 8, "b": 48 - 9}


def test_the_same_config_twice_gives_the_same_table() -> None:
    grid = dict(
        shots=[4, 8], k=[2, 5], seeds=[0, 3], criteria=["centroid", "fisher"], voting=["majority", "reliability"]
    )
    a = run_study(TASKS, groups=r"^(img\d+)/", transfer=[("a", "b")], **grid)  # type: ignore[arg-type]
    b = run_study(TASKS, groups=r"^(img\d+)/", transfer=[("a", "b")], **grid)  # type: ignore[arg-type]
    assert a.records(timing=False) == b.records(timing=False)
    assert len(a) == 2 * 2 * 2 * 2 * 2 * 3  # seeds x shots x criteria x k x voting x (a, b, a->b)
    assert a.summary() == b.summary()


def test_macro_f1_and_recall_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 5):
        truth = rng.integers(0, n_classes, 50)
        pred = np.where(rng.random(50) < 0.6, truth, rng.integers(0, n_classes, 50))
        pred[pred == n_classes - 1] = 0  # a class never predicted
        acc, f1, recall = class_metrics(truth.tolist(), pred.tolist(), n_classes)
        labels = list(range(n_classes))
        assert acc == accuracy_score(truth, pred)
        assert f1 == pytest.approx(f1_score(truth, pred, labels=labels, average="macro", zero_division=0), abs=1e-12)
        assert recall == pytest.approx(recall_score(truth, pred, labels=labels, average=None, zero_division=0).tolist())
    # and a study row's numbers from its own predictions
    table = run_study(TASKS, shots=[5], k=[2], seeds=[0])
    row = table.select(target="b").rows[0]
    train, test = draw_split(TASKS["b"].labels, 5, seed=0)  # type: ignore[arg-type]
    sav = SAV(k=2).fit(TASKS["b"].subset(train))
    truth_b, pred_b = TASKS["b"].subset(test).labels, sav.predict(TASKS["b"].subset(test))
    assert row.macro_f1 == pytest.approx(f1_score(truth_b, pred_b, average="macro"), abs=1e-12)
    assert row.recall == pytest.approx(dict(zip(["c0", "c1", "c2"], recall_score(truth_b, pred_b, average=None))))


# bad configs: a named error before any work --------------------------------------------------------------


BAD = [
    (dict(criteria=["centroid", "fishr"]), "no criterion is registered as 'fishr'"),
    (dict(voting=["plurality"]), "no voting rule is registered as 'plurality'"),
    (dict(k=[5, 49]), r"k=49 is larger than the 3 x 4 = 12 heads of task 'a'"),
    (dict(shots=[16]), r"task 'b': shots=16 \+ at least 1 test example needs 17 examples per class; too few"),
    (dict(shots=[10], n_test=11), r"shots=10 \+ n_test=11 needs 21"),
    (dict(transfer=[("a", "mhalu")]), r"transfer pair \['a', 'mhalu'\]: no task 'mhalu'"),
    (dict(transfer=[("a", "a")]), "a task is always run on itself"),
    (dict(modes=["kfold"], criteria=["fisher"]), "criterion 'fisher' takes no mode"),
    (dict(modes=["holdout"]), "'holdout' is not a mode"),
    (dict(shots=[]), "shots is empty"),
    (dict(k=[0]), "k must hold ints >= 1"),
    (dict(seeds=[1, 1]), "seeds holds a value twice"),
    (dict(baselines=["zero-shot"]), "baselines: unknown"),
    (dict(repeats=3), r"unknown study settings \['repeats'\]"),
    (dict(n_test={"a": 5, "c": 2}), r"n_test names tasks \['c'\]"),
    (dict(shots=[10], n_test={"b": 7}), r"task 'b': shots=10 \+ n_test=7 needs 17"),
]


@pytest.mark.parametrize(("grid", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_configs_get_a_named_error_before_any_work(
    grid: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[type-arg]
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a head was scored before the config was checked")

    monkeypatch.setattr(runner, "run_criterion", no_work)
    with pytest.raises(StudyConfigError, match=message) as info:
        run_study(TASKS, **{"k": [2], **grid})
    assert "/errors/study-config-error/" in str(info.value)


def test_bad_tasks_and_groups_are_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "run_criterion", lambda *a, **k: pytest.fail("scored"))
    other = HeadFeatures(torch.zeros(8, 3, 4, 8), labels=["x", "y"] * 4, model_id="another")
    with pytest.raises(
        StudyConfigError, match=r"transfer pair \['a', 'o'\]: cannot mix .*model_id: 'toy' vs 'another'"
    ):
        run_study({"a": TASKS["a"], "o": other}, shots=[2], k=[2], transfer="all")
    with pytest.raises(StudyConfigError, match="without labels"):
        run_study({"u": HeadFeatures(torch.zeros(4, 1, 2, 2))}, shots=[1], k=[1])
    with pytest.raises(StudyConfigError, match="finds nothing in example id"):
        run_study(TASKS, shots=[2], k=[2], groups=r"^q")
    with pytest.raises(StudyConfigError, match=r"groups name tasks \['c'\]"):
        run_study(TASKS, shots=[2], k=[2], groups={"c": r"^(img\d+)/"})
    with pytest.raises(StudyConfigError, match="no tasks"):
        run_study({}, shots=[2], k=[2])


# the table -----------------------------------------------------------------------------------------------


def test_summary_export_and_figures(tmp_path: Path) -> None:
    table = run_study(TASKS, shots=[4, 8], k=[2, 4], seeds=[0, 1, 2], transfer="all", baselines=["all"])
    s = [x for x in table.summary() if x["kind"] == "sav" and x["target"] == "a" and x["shots"] == 4 and x["k"] == 2]
    values = [r.accuracy for r in table.select(kind="sav", target="a", shots=4, k=2).rows]
    assert len(s) == 1 and s[0]["n"] == 3
    assert s[0]["mean"] == pytest.approx(np.mean(values)) and s[0]["sd"] == pytest.approx(np.std(values, ddof=1))
    half = 4.302652729911275 * np.std(values, ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert (s[0]["ci_low"], s[0]["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))

    table.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(table) and rows[0]["heads"] == " ".join(table.rows[0].heads)
    assert float(rows[0]["recall[c0]"]) == table.rows[0].recall["c0"] and rows[0]["recall[c2]"] == ""
    table.to_json(tmp_path / "t.json")
    again = StudyTable.from_dict(json.loads((tmp_path / "t.json").read_text()))
    assert again.records() == table.records() and again.tasks["b"]["classes"] == ["c0", "c1", "c2"]
    assert "accuracy" in str(table) and "95% interval" in str(table)

    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(LoadError, match="pip install pandas"):
            table.to_pandas()
    else:
        df = table.to_pandas()
        assert len(df) == len(table) and "recall[c1]" in df.columns

    written = write_figures(table, tmp_path / "fig")
    assert set(written) == {
        "accuracy-vs-shots-a.png",
        "accuracy-vs-shots-b.png",
        "accuracy-vs-k-a.png",
        "accuracy-vs-k-b.png",
        "transfer.png",
    }
    assert all(Path(p).stat().st_size > 5000 for p in written.values())
    curves = table.curves("shots", "a", k=2)
    assert curves["x"] == [4, 8] and list(curves["curves"]) == ["centroid/majority"]
    assert curves["curves"]["centroid/majority"][0] == values


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 50, 200):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
