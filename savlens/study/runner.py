"""Run a study: a grid of shots, k, seeds, criteria, modes and voting rules over tasks and transfer pairs."""

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from savlens.cache import HeadFeatures
from savlens.errors import FeatureError, SavlensError, StudyConfigError
from savlens.heads import HeadScores, HeadSet
from savlens.labels import encode_labels
from savlens.sav import SAV
from savlens.scoring import MODES, Criterion, criterion_name, get_criterion, run_criterion
from savlens.stats import class_metrics
from savlens.study.split import Groups, draw_nested_split, draw_split, resolve_groups
from savlens.study.table import StudyRow, StudyTable
from savlens.transfer import BASELINES
from savlens.voting import get_voting, voting_name


@dataclass(frozen=True)
class StudyConfig:
    """The grid of a study (every combination is run, for every seed).

    Attributes:
        shots: training examples per class.
        k: heads kept.
        seeds: seeds of the split (and of the criterion's folds, the top-k tie-breaks and the random heads).
        criteria: head-selection criteria (registered names, or functions in Python).
        modes: criterion modes (``"loo"``, ``"kfold"``, ``"in_sample"``; None: each criterion's default).
        voting: voting rules (registered names, or functions in Python).
        transfer: ``(source, target)`` pairs: heads chosen on ``source``'s shots, used with ``target``'s shots
            and test examples; ``"all"`` for every ordered pair of different tasks. Every task is always run
            on itself (``kind="sav"``).
        n_test: test examples per class (None: all those not drawn as shots and not sharing a group with one), or
            task name -> that (tasks left out: None).
        baselines: any of ``"random"`` (``k`` random heads, mean of ``n_random`` draws) and ``"all"`` (every
            head votes), per target task, under majority voting.
        n_random: draws of random heads per baseline row.
        nested: draw one test set per task and seed (``n_test`` per class, required) and nested training sets
            (the ``s``-shot set is a prefix of the larger ones): :func:`~savlens.study.draw_nested_split`. The
            default draws each shots setting's split afresh (:func:`~savlens.study.draw_split`).
    """

    shots: tuple[int, ...] = (20,)
    k: tuple[int, ...] = (20,)
    seeds: tuple[int, ...] = (0,)
    criteria: tuple[str | Criterion, ...] = ("centroid",)
    modes: tuple[str | None, ...] = (None,)
    voting: tuple[str | Callable[..., Any], ...] = ("majority",)
    transfer: tuple[tuple[str, str], ...] | str = ()
    n_test: int | Mapping[str, int | None] | None = None
    baselines: tuple[str, ...] = ()
    n_random: int = 10
    nested: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the grid as JSON-serialisable data (functions by their registered names)."""
        out = asdict(self)
        out["criteria"] = [criterion_name(c) for c in self.criteria]
        out["voting"] = [voting_name(v) for v in self.voting]
        out["transfer"] = self.transfer if isinstance(self.transfer, str) else [list(p) for p in self.transfer]
        return out


def _positive_ints(name: str, values: Any, *, allow_zero: bool = False) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise StudyConfigError(f"{name} must be a list of ints; got {values!r}.") from None
    if not values:
        raise StudyConfigError(f"{name} is empty; give at least one value.")
    low = 0 if allow_zero else 1
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
            raise StudyConfigError(f"{name} must hold ints >= {low}; got {v!r}.")
    if len(set(values)) != len(values):
        raise StudyConfigError(f"{name} holds a value twice: {list(values)}.")
    return tuple(int(v) for v in values)


def _as_tuple(name: str, values: Any) -> tuple[Any, ...]:
    out = (values,) if isinstance(values, str) or callable(values) or values is None else tuple(values)
    if not out:
        raise StudyConfigError(f"{name} is empty; give at least one value.")
    names = [criterion_name(v) if callable(v) else v for v in out]
    if len(set(map(str, names))) != len(names):
        raise StudyConfigError(f"{name} holds a value twice: {names}.")
    return out


def _takes_mode(fn: Criterion) -> bool:
    params = inspect.signature(fn).parameters
    return "mode" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def make_config(config: StudyConfig | Mapping[str, Any] | None = None, **grid: Any) -> StudyConfig:
    """Return a checked :class:`StudyConfig` from a config, a dict of its fields, and/or keyword overrides.

    Raises:
        StudyConfigError: an unknown field, an empty grid, a value that is not a positive int or appears twice,
            an unknown criterion, mode or voting rule, a mode a criterion does not take, an unknown baseline.
    """
    fields = StudyConfig.__dataclass_fields__
    base = asdict(config) if isinstance(config, StudyConfig) else dict(config or {})
    base.update(grid)
    unknown = sorted(set(base) - set(fields))
    if unknown:
        raise StudyConfigError(f"unknown study settings {unknown}; the settings are {list(fields)}.")
    d = {**{n: f.default for n, f in fields.items()}, **base}
    shots, ks, seeds = (
        _positive_ints("shots", d["shots"]),
        _positive_ints("k", d["k"]),
        _positive_ints("seeds", d["seeds"], allow_zero=True),
    )
    criteria, modes, votings = (
        _as_tuple("criteria", d["criteria"]),
        _as_tuple("modes", d["modes"]),
        _as_tuple("voting", d["voting"]),
    )
    for c in criteria:
        try:
            fn = get_criterion(c)
        except SavlensError as e:
            raise StudyConfigError(f"criteria: {e.detail}") from None
        for m in modes:
            if m is not None and m not in MODES:
                raise StudyConfigError(f"modes: {m!r} is not a mode; use {list(MODES)} or none for the default.")
            if m is not None and not _takes_mode(fn):
                raise StudyConfigError(f"modes: criterion {criterion_name(c)!r} takes no mode; got mode {m!r}.")
    for v in votings:
        try:
            get_voting(v)
        except SavlensError as e:
            raise StudyConfigError(f"voting: {e.detail}") from None
    transfer = d["transfer"]
    if transfer not in ("all", None, ()) and not isinstance(transfer, str):
        pairs = []
        for p in transfer:
            if isinstance(p, str) or len(p) != 2:
                raise StudyConfigError(f"transfer: each pair is [source, target]; got {p!r}.")
            pairs.append((str(p[0]), str(p[1])))
        transfer = tuple(pairs)
    elif isinstance(transfer, str) and transfer != "all":
        raise StudyConfigError(f"transfer must be 'all' or a list of [source, target] pairs; got {transfer!r}.")
    n_test = d["n_test"]
    if isinstance(n_test, Mapping):
        n_test = {str(t): None if v is None else _positive_ints(f"n_test[{t!r}]", v)[0] for t, v in n_test.items()}
    elif n_test is not None:
        n_test = _positive_ints("n_test", n_test)[0]
    baselines = _as_tuple("baselines", d["baselines"]) if d["baselines"] else ()
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise StudyConfigError(f"baselines: unknown {bad}; choose from {list(BASELINES)}.")
    n_random = _positive_ints("n_random", d["n_random"])[0]
    nested = d["nested"]
    if not isinstance(nested, bool):
        raise StudyConfigError(f"nested must be true or false; got {nested!r}.")
    if nested and (n_test is None or (isinstance(n_test, Mapping) and None in n_test.values())):
        raise StudyConfigError("nested = true draws one test set per seed: give n_test (test examples per class).")
    return StudyConfig(shots, ks, seeds, criteria, modes, votings, transfer or (), n_test, baselines, n_random, nested)


def _features(name: str, value: Any) -> HeadFeatures:
    if isinstance(value, HeadFeatures):
        feats = value
    elif isinstance(value, str | os.PathLike):
        from savlens.store import open_store

        feats = open_store(Path(value))
    else:
        raise StudyConfigError(f"task {name!r}: give HeadFeatures or a feature store path; got {type(value).__name__}.")
    if feats.labels is None or any(v is None for v in feats.labels):
        raise StudyConfigError(f"task {name!r}: its features have examples without labels; a study needs every label.")
    return feats


def _pairs(config: StudyConfig, names: Sequence[str]) -> list[tuple[str, str]]:
    if config.transfer == "all":
        return [(a, b) for a in names for b in names if a != b]
    pairs: list[tuple[str, str]] = [(str(p[0]), str(p[1])) for p in config.transfer]
    for a, b in pairs:
        for t in (a, b):
            if t not in names:
                raise StudyConfigError(f"transfer pair [{a!r}, {b!r}]: no task {t!r}; the tasks are {list(names)}.")
        if a == b:
            raise StudyConfigError(
                f"transfer pair [{a!r}, {b!r}]: a task is always run on itself; list pairs of two tasks."
            )
    if len(set(pairs)) != len(pairs):
        raise StudyConfigError(f"transfer lists a pair twice: {pairs}.")
    return pairs


def run_study(
    tasks: Mapping[str, HeadFeatures | str | os.PathLike[str]],
    config: StudyConfig | Mapping[str, Any] | None = None,
    *,
    groups: Mapping[str, Groups] | str | None = None,
    progress: bool = False,
    **grid: Any,
) -> StudyTable:
    """Run a generalisation study on feature stores: every setting of the grid, for every seed.

    For each seed and shots, each task's examples are split once (:func:`savlens.study.draw_split`:
    stratified, seeded, disjoint by group); for each criterion and mode, heads are scored once per task on its
    shots; for each ``k`` the top ``k`` heads are kept (:meth:`HeadScores.top_k` with the seed); for each voting
    rule and each (source, target) pair, an SAV with the source's heads is fitted on the target's shots
    (:meth:`SAV.fit_heads`: centroids, and vote weights learned on the shots only) and tested on the target's
    test examples. A task on itself is exactly ``SAV(k, criterion, mode, seed, voting=...).fit(shots)``.

    Everything is checked first (:func:`make_config`, the tasks, the pairs, ``k`` against every task's heads,
    shots against every class, the groups, every split drawn): a bad config raises
    :class:`~savlens.errors.StudyConfigError` before any head is scored. Features are never extracted here: give
    :class:`HeadFeatures` or feature store folders. The same tasks, config and seeds give the same table (up to
    its times).

    Args:
        tasks: task name -> labelled :class:`HeadFeatures` or a feature store folder.
        config: a :class:`StudyConfig` or a dict of its fields.
        groups: task name -> group key of its examples (see :func:`savlens.study.resolve_groups`), or one
            regular expression on example ids for every task: shots and test examples never share a group.
        progress: print one line per (seed, shots) to stderr.
        **grid: :class:`StudyConfig` fields, overriding ``config``.

    Returns:
        A :class:`StudyTable`.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(60, 2, 4, 8, generator=g)
        >>> z[0::2, 1, 2, 0] += 8; z[1::2, 1, 2, 1] += 8  # one informative head: L1H2
        >>> feats = HeadFeatures(z, labels=["yes", "no"] * 30)
        >>> table = run_study({"a": feats.subset(range(30)), "b": feats.subset(range(30, 60))},
        ...                   shots=[5], k=[1, 2], seeds=[0, 1], transfer="all")
        >>> len(table), table.rows[0].heads, table.rows[0].accuracy
        (16, ['L1H2'], 1.0)
    """
    cfg = make_config(config, **grid)
    if not tasks:
        raise StudyConfigError("run_study: no tasks given.")
    names = [str(n) for n in tasks]
    feats = {str(n): _features(str(n), v) for n, v in tasks.items()}
    pairs = _pairs(cfg, names)
    if isinstance(cfg.n_test, Mapping):
        extra = sorted(set(cfg.n_test) - set(names))
        if extra:
            raise StudyConfigError(f"n_test names tasks {extra} that are not in tasks {names}.")
    for a, b in pairs:
        try:
            feats[a].check_compatible(feats[b], f"the features of tasks {a!r} and {b!r}")
        except FeatureError as e:
            raise StudyConfigError(f"transfer pair [{a!r}, {b!r}]: {e.detail}") from None
    for n, f in feats.items():
        total = f.n_layers * f.n_heads
        too_big = [k for k in cfg.k if k > total]
        if too_big:
            raise StudyConfigError(
                f"k={too_big[0]} is larger than the {f.n_layers} x {f.n_heads} = {total} heads of task {n!r}."
            )
    group_of = {
        n: resolve_groups(
            groups if isinstance(groups, str) else (groups or {}).get(n), f.example_ids or [], f"task {n!r}"
        )
        for n, f in feats.items()
    }
    if isinstance(groups, Mapping):
        extra = sorted(set(map(str, groups)) - set(names))
        if extra:
            raise StudyConfigError(f"groups name tasks {extra} that are not in tasks {names}.")
    labels = {n: [str(v) if not isinstance(v, int | str) else v for v in f.labels or []] for n, f in feats.items()}
    splits: dict[tuple[str, int, int], tuple[list[int], list[int]]] = {}
    for seed in cfg.seeds:
        for n in names:
            if cfg.nested:
                n_test = _n_test(cfg, n)
                if n_test is None:
                    raise StudyConfigError(f"nested = true needs n_test for task {n!r}.")
                trains, test = draw_nested_split(labels[n], cfg.shots, n_test, seed, group_of[n], f"task {n!r}")
                splits |= {(n, shots, seed): (trains[shots], test) for shots in cfg.shots}
            else:
                for shots in cfg.shots:
                    splits[n, shots, seed] = draw_split(
                        labels[n], shots, _n_test(cfg, n), seed, group_of[n], f"task {n!r}"
                    )
    classes = {n: encode_labels(labels[n], what=f"task {n!r}").classes for n in names}
    info = {
        n: {"n_examples": f.n_examples, "classes": [str(c) for c in classes[n]], **f.describe()}
        for n, f in feats.items()
    }
    rows: list[StudyRow] = []
    for seed in cfg.seeds:
        for shots in cfg.shots:
            t0 = time.perf_counter()
            parts = {
                n: (feats[n].subset(splits[n, shots, seed][0]), feats[n].subset(splits[n, shots, seed][1]))
                for n in names
            }
            rows += _run_setting(cfg, names, pairs, parts, shots, seed)
            if progress:
                import sys

                print(f"study: seed {seed}, shots {shots}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return StudyTable(rows, {**cfg.to_dict(), "groups": _describe_groups(groups)}, info)


def _n_test(cfg: StudyConfig, task: str) -> int | None:
    return cfg.n_test.get(task) if isinstance(cfg.n_test, Mapping) else cfg.n_test


def _describe_groups(groups: Any) -> Any:
    if groups is None or isinstance(groups, str):
        return groups
    return {str(n): (g if isinstance(g, str) else type(g).__name__) for n, g in groups.items()}


def _evaluate(sav: SAV, test: HeadFeatures) -> tuple[float, float, dict[str, float]]:
    index = {c: i for i, c in enumerate(sav.classes_)}
    truth = [index[v] for v in test.labels or []]
    predicted = [index[v] for v in sav.predict(test)]
    acc, f1, recall = class_metrics(truth, predicted, len(sav.classes_))
    return acc, f1, {str(c): r for c, r in zip(sav.classes_, recall)}


def _run_setting(
    cfg: StudyConfig,
    names: list[str],
    pairs: list[tuple[str, str]],
    parts: dict[str, tuple[HeadFeatures, HeadFeatures]],
    shots: int,
    seed: int,
) -> list[StudyRow]:
    """All rows of one (seed, shots): criteria x modes x k x voting x (diagonal + pairs), then the baselines."""
    rows = []
    all_pairs = [(n, n) for n in names] + pairs
    for criterion in cfg.criteria:
        cname = criterion_name(criterion)
        for mode in cfg.modes:
            scores: dict[str, HeadScores] = {}
            score_s: dict[str, float] = {}
            for n in {a for a, _ in all_pairs}:
                t0 = time.perf_counter()
                scores[n] = run_criterion(criterion, parts[n][0], mode=mode, seed=seed, n_folds=5)
                score_s[n] = time.perf_counter() - t0
            for k in cfg.k:
                heads = {n: s.top_k(k, seed=seed) for n, s in scores.items()}
                for voting in cfg.voting:
                    for source, target in all_pairs:
                        t0 = time.perf_counter()
                        train, test = parts[target]
                        sav = SAV(k, criterion, mode, seed, voting=voting).fit_heads(
                            train, heads=heads[source], scores=scores[source]
                        )
                        acc, f1, recall = _evaluate(sav, test)
                        rows.append(
                            StudyRow(
                                "sav" if source == target else "transfer",
                                source,
                                target,
                                shots,
                                k,
                                seed,
                                cname,
                                mode,
                                voting_name(voting),
                                acc,
                                f1,
                                recall,
                                heads[source].to_list(),
                                train.n_examples,
                                test.n_examples,
                                time.perf_counter() - t0,
                                score_s[source],
                            )
                        )
    rows += _baselines(cfg, names, parts, shots, seed)
    return rows


def _baselines(
    cfg: StudyConfig, names: list[str], parts: dict[str, tuple[HeadFeatures, HeadFeatures]], shots: int, seed: int
) -> list[StudyRow]:
    """The baseline rows, drawn as :func:`savlens.transfer.transfer_matrix` draws them (same seed, same heads)."""
    rows = []
    first = parts[names[0]][0]
    layers, n_heads = first.layers or tuple(range(first.n_layers)), first.n_heads
    n_all = len(layers) * n_heads
    if "random" in cfg.baselines:
        for k in cfg.k:
            rng = np.random.default_rng(seed)
            for target in names:
                train, test = parts[target]
                t0 = time.perf_counter()
                results = []
                for _ in range(cfg.n_random):
                    flat = rng.choice(n_all, size=k, replace=False).tolist()
                    heads = HeadSet([(layers[f // n_heads], f % n_heads) for f in flat])
                    results.append(_evaluate(SAV(k, seed=seed).fit_heads(train, heads=heads), test))
                recall = {c: float(np.mean([r[2][c] for r in results])) for c in results[0][2]}
                rows.append(
                    StudyRow(
                        "random",
                        None,
                        target,
                        shots,
                        k,
                        seed,
                        None,
                        None,
                        "majority",
                        float(np.mean([r[0] for r in results])),
                        float(np.mean([r[1] for r in results])),
                        recall,
                        [],
                        train.n_examples,
                        test.n_examples,
                        time.perf_counter() - t0,
                    )
                )
    if "all" in cfg.baselines:
        every = HeadSet([(layer, h) for layer in layers for h in range(n_heads)])
        for target in names:
            train, test = parts[target]
            t0 = time.perf_counter()
            acc, f1, recall = _evaluate(SAV(n_all, seed=seed).fit_heads(train, heads=every), test)
            rows.append(
                StudyRow(
                    "all",
                    None,
                    target,
                    shots,
                    n_all,
                    seed,
                    None,
                    None,
                    "majority",
                    acc,
                    f1,
                    recall,
                    [],
                    train.n_examples,
                    test.n_examples,
                    time.perf_counter() - t0,
                )
            )
    return rows
