"""SAV votes: per true class, how many of the ``k`` heads voted for it."""

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from savlens.errors import LabelError
from savlens.plot._common import figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from savlens.voting import Votes


def vote_histograms(votes: "Votes", labels: Sequence[Hashable], *, title: str | None = None) -> "Figure":
    """Draw, per true class, a histogram of the votes its examples' true class received from the ``k`` heads.

    One panel per class in ``votes.classes`` order; the x axis counts votes for the true class (0 .. k), bars
    are stacked: examples the SAV classified right (green) and wrong (grey). A panel's two bar containers
    (labels ``"right"`` and ``"wrong"``) hold the counts per number of votes.

    Args:
        votes: :meth:`SAV.votes` on labelled examples.
        labels: the true label of each example.
        title: the figure title.
    """
    classes = list(votes.classes)
    if len(labels) != votes.votes.shape[0]:
        raise LabelError(f"vote_histograms: {len(labels)} labels for {votes.votes.shape[0]} examples.")
    unknown = sorted({str(lab) for lab in labels if lab not in classes})
    if unknown:
        raise LabelError(f"vote_histograms: labels {unknown} are not classes of these votes {classes}.")
    k = int(votes.votes.shape[1])
    truth = torch.tensor([classes.index(lab) for lab in labels])
    true_votes = votes.counts.gather(1, truth[:, None])[:, 0].numpy()
    right = (votes.winners == truth).numpy()
    n = len(classes)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, ax0 = figure((2.6 * cols + 0.4, 2.3 * rows + 0.6))
    fig.delaxes(ax0)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    bins = np.arange(k + 1)
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.set_visible(False)
            continue
        of_class = truth.numpy() == c
        r = np.bincount(true_votes[of_class & right], minlength=k + 1)
        w = np.bincount(true_votes[of_class & ~right], minlength=k + 1)
        ax.bar(bins, r, width=0.85, color="tab:green", label="right")
        ax.bar(bins, w, width=0.85, bottom=r, color="0.65", label="wrong")
        acc = r.sum() / max(1, of_class.sum())
        ax.set_title(f"{classes[c]}: {acc:.0%} right (n={int(of_class.sum())})", fontsize=9)
        ax.axvline(k / 2, color="0.3", linewidth=0.8, linestyle=":")
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel(f"votes for the true class (of k={k})", fontsize=8)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title or "SAV votes per true class", fontsize=10)
    return fig
