"""The statistics savlens reports: paired comparisons of two classifiers on the same test examples (exact
McNemar test, paired bootstrap interval of the accuracy difference), Wilson and Student t intervals,
macro-F1, per-class metrics and the classification report.

scipy and scikit-learn do the statistics (both are dependencies of savlens); they are imported when a
function is called, so ``import savlens`` and ``savlens --help`` stay quick.

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

from savlens.errors import ArgumentError, InputError

__all__ = [
    "McNemar",
    "PairedDifference",
    "class_metrics",
    "classification_report",
    "macro_f1",
    "mcnemar_exact",
    "paired_bootstrap",
    "t_quantile_975",
    "wilson_interval",
]


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
    from scipy.stats import binomtest

    p = float(binomtest(a_only, a_only + b_only, 0.5, alternative="two-sided").pvalue)
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
    from sklearn.metrics import f1_score

    index = {c: i for i, c in enumerate(classes)}
    t = [index.get(c, -1) for c in truth]
    p = [index.get(c, -1) if c is not None else -1 for c in predicted]
    labels = list(range(len(classes)))
    return float(f1_score(t, p, labels=labels, average="macro", zero_division=0))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion, ``successes`` of ``n`` (``scipy.stats.binomtest``).

    ``(0.0, 1.0)`` when ``n`` is 0 (nothing measured).

    Example:
        >>> [round(v, 3) for v in wilson_interval(50, 100)]
        [0.404, 0.596]
    """
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ArgumentError(f"wilson_interval: successes must be between 0 and n={n}; got {successes}.")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def t_quantile_975(df: int) -> float:
    """Return the 0.975 quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``): the
    half-width factor of a two-sided 95% interval of a mean.

    Example:
        >>> round(t_quantile_975(2), 4), round(t_quantile_975(100), 3)
        (4.3027, 1.984)
    """
    if df < 1:
        raise ArgumentError(f"t_quantile_975: df must be >= 1; got {df}.")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def class_metrics(truth: Sequence[int], predicted: Sequence[int], n_classes: int) -> tuple[float, float, list[float]]:
    """Return accuracy, macro-F1 and per-class recall of class-index predictions (``sklearn.metrics``).

    Macro-F1 averages over all ``n_classes`` classes (0 for a class with no true and no predicted example);
    a class's recall is 0 when it has no test example.

    Example:
        >>> acc, f1, recall = class_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2)
        >>> acc, round(f1, 4), recall
        (0.75, 0.7333, [0.5, 1.0])
    """
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    if len(truth) == 0:
        return 0.0, 0.0, [0.0] * n_classes
    labels = list(range(n_classes))
    acc = float(accuracy_score(truth, predicted))
    f1 = float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))
    recall = recall_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return acc, f1, [float(r) for r in recall]


def classification_report(
    truth: Sequence[Hashable], predicted: Sequence[Hashable], classes: Sequence[Hashable]
) -> dict[str, Any]:
    """Return accuracy, per-class precision / recall / F1 / support and the confusion matrix (rows: true),
    from ``sklearn.metrics``.

    Labels outside ``classes`` (a class the classifier never saw) get their own rows; they are always wrong.

    Example:
        >>> r = classification_report(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
        >>> r["accuracy"], r["per_class"]["b"]["precision"], r["confusion"]
        (0.6666666666666666, 0.5, [[1, 1], [0, 1]])
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(truth) != len(predicted) or not truth:
        raise InputError(
            f"classification_report(): expected as many predictions as true labels, at least one; got "
            f"{len(predicted)} and {len(truth)}."
        )
    labels = list(classes) + sorted({t for t in truth if t not in classes}, key=str)
    index = {c: i for i, c in enumerate(labels)}
    t = [index[c] for c in truth]
    p = [index.get(c, -1) for c in predicted]
    ids = list(range(len(labels)))
    conf = confusion_matrix(t, p, labels=ids)
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=ids, zero_division=0)
    per_class = {
        str(c): {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
        for c, i in index.items()
    }
    return {
        "accuracy": int(np.trace(conf)) / len(truth),
        "n_examples": len(truth),
        "classes": [str(c) for c in labels],
        "per_class": per_class,
        "confusion": conf.tolist(),
    }
