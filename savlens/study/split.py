"""Few-shot splits of a study: stratified by class, seeded, and disjoint by a group key (such as the image)."""

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from savlens.errors import StudyConfigError

#: How examples are grouped: one group per example id (a sequence aligned with the features, or a mapping from
#: id), a function of the id, or a regular expression whose first group (else whole match) in the id is the group.
Groups = Sequence[Hashable] | Mapping[str, Hashable] | Callable[[str], Hashable] | str


def resolve_groups(groups: Groups | None, example_ids: Sequence[str], what: str) -> list[Hashable] | None:
    """Return one group per example (None: every example is its own group).

    Raises:
        StudyConfigError: a sequence of another length, a mapping or function that misses an id, a regular
            expression that does not compile or finds nothing in an id.

    Example:
        >>> resolve_groups(r"^(img\\d+)/", ["img1/q0", "img1/q1", "img2/q0"], "task")
        ['img1', 'img1', 'img2']
    """
    if groups is None:
        return None
    ids = list(example_ids)
    if isinstance(groups, str):
        try:
            pattern = re.compile(groups)
        except re.error as e:
            raise StudyConfigError(f"{what}: group pattern {groups!r} is not a regular expression ({e}).") from None
        out: list[Hashable] = []
        for i in ids:
            m = pattern.search(i)
            if m is None:
                raise StudyConfigError(
                    f"{what}: group pattern {groups!r} finds nothing in example id {i!r}; every id needs a group."
                )
            out.append(m.group(1) if pattern.groups else m.group(0))
        return out
    if callable(groups):
        return [groups(i) for i in ids]
    if isinstance(groups, Mapping):
        missing = [i for i in ids if i not in groups]
        if missing:
            raise StudyConfigError(
                f"{what}: the groups give no group for {len(missing)} example ids (first: {missing[0]!r})."
            )
        return [groups[i] for i in ids]
    values = list(groups)
    if len(values) != len(ids):
        raise StudyConfigError(f"{what}: {len(values)} groups for {len(ids)} examples; give one group per example.")
    return values


def draw_split(
    labels: Sequence[Hashable],
    shots: int,
    n_test: int | None = None,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    what: str = "draw_split",
) -> tuple[list[int], list[int]]:
    """Draw ``shots`` training examples per class and a disjoint, stratified test set; return both index lists.

    For each class, in order of first appearance, a permutation of its examples from
    ``numpy.random.default_rng(seed)`` gives the first ``shots`` to train. The test set is, per class and in the
    same permuted order, the examples not drawn to train whose group holds no training example, ``n_test`` of
    them (None: all). Without groups this is exactly :func:`savlens.datasets.few_shot_split`'s draw (same seed,
    same examples). Both lists are sorted.

    Raises:
        StudyConfigError: a class with fewer than ``shots`` + max(1, ``n_test``) examples, or a class left
            without any test example once the shots' groups are left out of the test set.

    Example:
        >>> labels, groups = ["a", "a", "a", "b", "b", "b"], ["x", "x", "y", "z", "z", "w"]
        >>> train, test = draw_split(labels, 1, seed=0, groups=groups)
        >>> [labels[i] for i in train], check_disjoint(train, test, groups)
        (['a', 'b'], True)
    """
    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    need = shots + max(1, n_test or 0)
    short = {c: len(idx) for c, idx in by_class.items() if len(idx) < need}
    if short:
        counts = ", ".join(f"{c!r}: {n}" for c, n in short.items())
        raise StudyConfigError(
            f"{what}: shots={shots}"
            + (f" + n_test={n_test}" if n_test else " + at least 1 test example")
            + f" needs {need} examples per class; too few in {counts}."
        )
    rng = np.random.default_rng(seed)
    orders = {c: [idx[j] for j in rng.permutation(len(idx))] for c, idx in by_class.items()}
    train = [i for order in orders.values() for i in order[:shots]]
    taken = set() if groups is None else {groups[i] for i in train}
    test: list[int] = []
    for c, order in orders.items():
        rest = [i for i in order[shots:] if groups is None or groups[i] not in taken]
        if not rest:
            raise StudyConfigError(
                f"{what}: class {c!r} keeps no test example: its other examples share a group with the "
                f"{shots} shots drawn (seed {seed}). Lower shots or check the group key."
            )
        test += rest if n_test is None else rest[:n_test]
    return sorted(train), sorted(test)


def draw_nested_split(
    labels: Sequence[Hashable],
    shots: Sequence[int],
    n_test: int,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    what: str = "draw_nested_split",
) -> tuple[dict[int, list[int]], list[int]]:
    """Draw one test set and nested training sets: ``({shots: train indices}, test indices)``.

    For each class, in order of first appearance, a permutation from ``numpy.random.default_rng(seed)``: its first
    ``n_test`` examples are the class's test examples; the others, in permuted order and without those sharing a
    group with a test example, are the training candidates, and the ``s``-shot training set is the first ``s`` of
    them. So every shots setting of a seed is tested on the same examples, and a smaller training set is a subset
    of a larger one (a shots curve then measures the shots, not a new test draw). All lists are sorted.

    Raises:
        StudyConfigError: a class with fewer than ``max(shots) + n_test`` examples, or fewer than ``max(shots)``
            training candidates once the test examples' groups are left out.

    Example:
        >>> train, test = draw_nested_split(["a"] * 4 + ["b"] * 4, [1, 2], 2, seed=0)
        >>> set(train[1]) <= set(train[2]), len(test), set(test) & set(train[2])
        (True, 4, set())
    """
    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    most = max(shots)
    short = {c: len(idx) for c, idx in by_class.items() if len(idx) < most + n_test}
    if short:
        counts = ", ".join(f"{c!r}: {n}" for c, n in short.items())
        raise StudyConfigError(
            f"{what}: shots={most} + n_test={n_test} needs {most + n_test} examples per class; too few in {counts}."
        )
    rng = np.random.default_rng(seed)
    orders = {c: [idx[j] for j in rng.permutation(len(idx))] for c, idx in by_class.items()}
    test = [i for order in orders.values() for i in order[:n_test]]
    held = set() if groups is None else {groups[i] for i in test}
    train: dict[int, list[int]] = {s: [] for s in shots}
    for c, order in orders.items():
        candidates = [i for i in order[n_test:] if groups is None or groups[i] not in held]
        if len(candidates) < most:
            raise StudyConfigError(
                f"{what}: class {c!r} keeps {len(candidates)} training candidates once the groups of its test "
                f"examples are left out (seed {seed}); shots={most} needs {most}. Lower shots or n_test."
            )
        for s in shots:
            train[s] += candidates[:s]
    return {s: sorted(v) for s, v in train.items()}, sorted(test)


def check_disjoint(train: Sequence[int], test: Sequence[int], groups: Sequence[Any] | None) -> bool:
    """Return True when no test example shares an index (or, with groups, a group) with a training example."""
    if set(train) & set(test):
        return False
    return groups is None or not ({groups[i] for i in train} & {groups[i] for i in test})
