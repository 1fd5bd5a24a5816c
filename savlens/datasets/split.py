"""Draw a seeded, stratified few-shot train split and a disjoint test split from labelled examples."""

from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

from savlens.errors import InputError, LabelError
from savlens.example import Example

__all__ = ["Split", "few_shot_split"]


class Split(NamedTuple):
    """A few-shot train split and a disjoint test split; unpacks as ``train, test = split``.

    Attributes:
        train: ``n_per_class`` examples of each class, in their original order.
        test: the held-out examples (``n_test_per_class`` per class, or all the rest), in original order.
    """

    train: list[Example]
    test: list[Example]


def few_shot_split(
    examples: Sequence[Example],
    n_per_class: int,
    n_test_per_class: int | None = None,
    seed: int = 0,
) -> Split:
    """Split examples into ``n_per_class`` training examples per class and a disjoint, stratified test set.

    For each class (in order of first appearance) a seeded permutation of its examples gives the first
    ``n_per_class`` to train and the next ``n_test_per_class`` (or all the remaining ones) to test. Both
    splits keep the examples' original order, so classes are numbered by first appearance in the data.
    The same examples and seed always give the same split (numpy ``default_rng(seed)``).

    Args:
        examples: labelled examples (every ``label`` set).
        n_per_class: training examples per class (the paper uses about 20).
        n_test_per_class: test examples per class; None puts all the others in test.
        seed: the seed of the draw.

    Returns:
        A :class:`Split` ``(train, test)``.

    Raises:
        LabelError: an unlabelled example, or a class with fewer than ``n_per_class + n_test_per_class``
            examples (all such classes are named with their counts).
        InputError: ``n_per_class < 1`` or ``n_test_per_class < 0``.

    Example:
        >>> exs = [Example(str(i), label=i % 2, id=str(i)) for i in range(10)]
        >>> train, test = few_shot_split(exs, n_per_class=2, n_test_per_class=1, seed=0)
        >>> len(train), len(test), sorted(e.label for e in train)
        (4, 2, [0, 0, 1, 1])
    """
    if n_per_class < 1:
        raise InputError(f"few_shot_split(n_per_class={n_per_class}): need at least 1 example per class.")
    if n_test_per_class is not None and n_test_per_class < 0:
        raise InputError(f"few_shot_split(n_test_per_class={n_test_per_class}): must be >= 0 or None.")
    by_class: dict[Hashable, list[int]] = {}
    for i, ex in enumerate(examples):
        if ex.label is None:
            raise LabelError(f"few_shot_split(): example {i} (id {ex.id!r}) has no label.")
        by_class.setdefault(ex.label, []).append(i)
    if not by_class:
        raise LabelError("few_shot_split(): no examples.")
    need = n_per_class + (n_test_per_class or 0)
    short = {label: len(idx) for label, idx in by_class.items() if len(idx) < need}
    if short:
        counts = ", ".join(f"{label!r}: {n}" for label, n in short.items())
        ask = f"n_per_class={n_per_class}" + (f" + n_test_per_class={n_test_per_class}" if n_test_per_class else "")
        raise LabelError(
            f"few_shot_split({ask}) needs {need} examples per class; too few in {counts}. "
            f"Lower the numbers or add examples."
        )
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for idx in by_class.values():
        order = [idx[j] for j in rng.permutation(len(idx))]
        train_idx += order[:n_per_class]
        rest = order[n_per_class:]
        test_idx += rest if n_test_per_class is None else rest[:n_test_per_class]
    return Split(
        train=[examples[i] for i in sorted(train_idx)],
        test=[examples[i] for i in sorted(test_idx)],
    )
