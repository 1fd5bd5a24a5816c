"""Paired comparisons of two classifiers on the same test examples: exact McNemar test, paired bootstrap
interval of the accuracy difference, and macro-F1.

scipy and scikit-learn do the statistics (``pip install savlens[sklearn]``, which brings both); they are
imported when a function is called.

Example:
    >>> a = [True] * 10 + [False] * 2   # classifier A right on 10 of 12
    >>> b = [True] * 6 + [False] * 6    # B right on 6; B is never right where A is wrong
    >>> r = mcnemar_exact(a, b)
    >>> r.a_only, r.b_only, round(r.p_value, 4)
    (4, 0, 0.125)
"""

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np

from savlens.errors import InputError, SavlensError

__all__ = ["McNemar", "PairedDifference", "macro_f1", "mcnemar_exact", "paired_bootstrap"]


class McNemar(NamedTuple):
    """The exact McNemar test of two classifiers on the same examples.

    Attributes:
        a_only: examples only classifier A gets right (discordant pairs one way).
        b_only: examples only classifier B gets right (the other way).
        p_value: the two-sided exact p of ``a_only`` successes in ``a_only + b_only`` fair coin flips
            (``scipy.stats.binomtest``); 1.0 when there is no discordant pair.
    """

    a_only: int
    b_only: int
    p_value: float


class PairedDifference(NamedTuple):
    """Accuracy of A minus accuracy of B on the same examples, with a paired bootstrap interval.

    Attributes:
        difference: the observed difference.
        low, high: the percentile interval of the difference over bootstrap resamples of the examples.
        level: the interval's coverage (0.95 by default).
        n_resamples: how many resamples.
    """

    difference: float
    low: float
    high: float
    level: float
    n_resamples: int


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - both come with scikit-learn
        raise SavlensError(f"savlens.stats needs {module}; install it with: pip install 'savlens[sklearn]'") from e


def _paired(a: Sequence[bool], b: Sequence[bool], what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.ndim != 1 or x.shape != y.shape:
        raise InputError(f"{what}(): expected two 1-D sequences of the same length, got {x.shape} and {y.shape}.")
    if x.size == 0:
        raise InputError(f"{what}(): no examples.")
    return x, y


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """Return the exact McNemar test of two classifiers' per-example correctness (paired by position).

    Only the discordant pairs count: under the null hypothesis that both classifiers are equally accurate,
    each discordant example is A's with probability 1/2, so the p-value is the two-sided exact binomial test
    of ``a_only`` in ``a_only + b_only`` (``scipy.stats.binomtest``).

    Raises:
        InputError: sequences of different lengths, or empty.
    """
    x, y = _paired(a_correct, b_correct, "mcnemar_exact")
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    if a_only + b_only == 0:
        return McNemar(0, 0, 1.0)
    stats = _require("scipy.stats")
    p = float(stats.binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)
    return McNemar(a_only, b_only, min(1.0, p))


def paired_bootstrap(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    *,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Return accuracy(A) - accuracy(B) and its paired bootstrap percentile interval.

    Each resample draws the test examples with replacement (the same draw for A and B, so the pairing is
    kept) and recomputes the difference; the interval holds the central ``level`` of those differences.
    Seeded (numpy ``default_rng(seed)``).

    Raises:
        InputError: sequences of different lengths, or empty; ``level`` not in (0, 1); ``n_resamples < 1``.
    """
    x, y = _paired(a_correct, b_correct, "paired_bootstrap")
    if not 0 < level < 1:
        raise InputError(f"paired_bootstrap(level={level}): expected a number between 0 and 1.")
    if n_resamples < 1:
        raise InputError(f"paired_bootstrap(n_resamples={n_resamples}): expected at least 1.")
    d = x.astype(np.float64) - y.astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    diffs = d[idx].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return PairedDifference(float(d.mean()), float(lo), float(hi), level, n_resamples)


def macro_f1(truth: Sequence[Hashable], predicted: Sequence[Hashable | None], classes: Sequence[Hashable]) -> float:
    """Return the macro-averaged F1 over ``classes`` (``sklearn.metrics.f1_score(average="macro")``).

    A prediction outside ``classes`` (e.g. None: the model answered something else) is a miss for the true
    class and a false positive for no class. A class never predicted and never true would count as 0.

    Raises:
        InputError: sequences of different lengths, or empty.
    """
    if len(truth) != len(predicted) or not truth:
        raise InputError(
            f"macro_f1(): expected two non-empty sequences of the same length, got {len(truth)} and {len(predicted)}."
        )
    metrics = _require("sklearn.metrics")
    index = {c: i for i, c in enumerate(classes)}
    t = [index.get(c, -1) for c in truth]
    p = [index.get(c, -1) if c is not None else -1 for c in predicted]
    labels = list(range(len(classes)))
    return float(metrics.f1_score(t, p, labels=labels, average="macro", zero_division=0))
