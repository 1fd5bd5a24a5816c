"""Draw a seeded, stratified few-shot train split and a disjoint test split from labelled examples."""

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from savlens.errors import InputError, LabelError
from savlens.example import Example

__all__ = ["Split", "few_shot_split", "image_disjoint_split", "image_keys"]


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


def image_keys(example: Example) -> set[Hashable]:
    """Return what identifies each image of ``example``: the resolved path of a file, the object id of an
    in-memory PIL image (two different objects with the same pixels count as different images)."""
    return {
        str(Path(im).resolve()) if isinstance(im, (str, os.PathLike)) else ("object", id(im)) for im in example.images
    }


def image_disjoint_split(
    shots_pool: Sequence[Example],
    test_pool: Sequence[Example],
    n_per_class: int,
    n_test_per_class: int,
    seed: int = 0,
    *,
    one_per_image: bool = True,
) -> Split:
    """Draw ``n_per_class`` shots per class from ``shots_pool`` and ``n_test_per_class`` test examples per
    class from ``test_pool``, so that no image is in both (e.g. shots from easy-VQA train, test from its test
    split: several questions share an image, and a test question whose image is also a shot's is half
    answered by the shot).

    Per class (in order of first appearance in ``shots_pool``), a seeded permutation (numpy
    ``default_rng(seed)``) of its pool examples is walked in order and an example is kept unless one of its
    images is already taken: by a shot (always), or, with ``one_per_image``, by any example kept before (so
    no two shots and no two test examples share an image either, and test examples are independent draws of
    images). Both lists keep their pool's order.

    Raises:
        LabelError: an unlabelled example; a class with too few usable examples (named with its count); a
            test class the shots do not have is simply never drawn.
        InputError: ``n_per_class < 1`` or ``n_test_per_class < 1``.

    Example:
        >>> shots = [Example(str(i), images=[f"/im/{i % 6}.png"], label=i % 2) for i in range(12)]
        >>> test = [Example(str(i), images=[f"/im/{i}.png"], label=i % 2) for i in range(12)]
        >>> train, held = image_disjoint_split(shots, test, 2, 2, seed=0)
        >>> len(train), len(held), set.intersection(set().union(*map(image_keys, train)), *map(image_keys, held))
        (4, 4, set())
    """
    if n_per_class < 1 or n_test_per_class < 1:
        raise InputError(
            f"image_disjoint_split(n_per_class={n_per_class}, n_test_per_class={n_test_per_class}): "
            "need at least 1 of each."
        )
    for name, pool in (("shots_pool", shots_pool), ("test_pool", test_pool)):
        for i, ex in enumerate(pool):
            if ex.label is None:
                raise LabelError(f"image_disjoint_split(): {name} example {i} (id {ex.id!r}) has no label.")
    rng = np.random.default_rng(seed)
    taken: set[Hashable] = set()

    def draw(pool: Sequence[Example], n: int, which: str) -> list[int]:
        by_class: dict[Hashable, list[int]] = {}
        for i, ex in enumerate(pool):
            by_class.setdefault(ex.label, []).append(i)
        keep: list[int] = []
        short: dict[Hashable, int] = {}
        for label in classes:
            idx = by_class.get(label, [])
            got: list[int] = []
            for j in rng.permutation(len(idx)):
                keys = image_keys(pool[idx[j]])
                if keys & taken:
                    continue
                got.append(idx[j])
                if one_per_image:
                    taken.update(keys)
                if len(got) == n:
                    break
            if len(got) < n:
                short[label] = len(got)
            keep += got
        if short:
            counts = ", ".join(f"{label!r}: {k}" for label, k in short.items())
            raise LabelError(
                f"image_disjoint_split() needs {n} {which} per class with images of their own; only {counts}."
            )
        return sorted(keep)

    classes: list[Hashable] = list(dict.fromkeys(ex.label for ex in shots_pool))
    if not classes:
        raise LabelError("image_disjoint_split(): no shots.")
    shot_idx = draw(shots_pool, n_per_class, "shots")
    for i in shot_idx:  # without one_per_image the shots' images still never reach the test
        taken.update(image_keys(shots_pool[i]))
    test_idx = draw(test_pool, n_test_per_class, "test examples")
    return Split(train=[shots_pool[i] for i in shot_idx], test=[test_pool[i] for i in test_idx])
