"""Accuracy curves: accuracy against a parameter (shots per class, heads kept), with chance and baselines."""

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from savlens.errors import ArgumentError
from savlens.plot._common import Curve, Number, figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def accuracy_curve(
    x: Sequence[Number],
    curves: Mapping[str, Curve],
    *,
    xlabel: str,
    chance: Number | None = None,
    baselines: Mapping[str, Number] | None = None,
    log_x: bool = False,
    title: str | None = None,
    ax: "Axes | None" = None,
) -> "Figure":
    """Draw accuracy against a parameter: one line per curve, with a band where a point has several runs.

    Args:
        x: the parameter values (shots per class, heads kept, ...).
        curves: name -> one accuracy per ``x``, or one list of accuracies per ``x`` (e.g. over seeds); lists
            are drawn as their mean (the line's data) with a min-max band.
        xlabel: the x-axis label.
        chance: a dotted line at chance accuracy.
        baselines: name -> accuracy, drawn as dashed horizontal lines (e.g. zero-shot).
        log_x: logarithmic x axis.
        title: the axes title.
        ax: draw into this axes instead of a new figure.
    """
    fig, ax = figure((5.4, 3.6), ax)
    xs = np.asarray(x, dtype=float)
    for name, values in curves.items():
        runs = [np.atleast_1d(np.asarray(v, dtype=float)) for v in values]
        if len(runs) != len(xs):
            raise ArgumentError(f"accuracy_curve: curve {name!r} has {len(runs)} points for {len(xs)} x values.")
        mean = np.array([r.mean() for r in runs])
        (line,) = ax.plot(xs, mean, marker="o", markersize=4, label=name)
        if any(r.size > 1 for r in runs):
            lo, hi = np.array([r.min() for r in runs]), np.array([r.max() for r in runs])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1.1, color=f"C{len(curves) + i}", label=f"{name} ({value:.2f})")
    if chance is not None:
        ax.axhline(chance, linestyle=":", linewidth=1.1, color="0.4", label=f"chance ({chance:.2f})")
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return fig


def accuracy_vs_shots(shots: Sequence[int], curves: Mapping[str, Curve], **kwargs: Any) -> "Figure":
    """Draw accuracy against training examples per class (paper Figure 4); see :func:`accuracy_curve`."""
    kwargs.setdefault("title", "accuracy vs shots per class")
    return accuracy_curve(shots, curves, xlabel="training examples per class", log_x=True, **kwargs)


def accuracy_vs_k(ks: Sequence[int], curves: Mapping[str, Curve], **kwargs: Any) -> "Figure":
    """Draw accuracy against the number of heads kept (paper Figure 4); see :func:`accuracy_curve`."""
    kwargs.setdefault("title", "accuracy vs heads kept")
    return accuracy_curve(ks, curves, xlabel="heads kept (k)", log_x=True, **kwargs)
