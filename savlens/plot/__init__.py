"""Figures of the SAV method: head score heatmaps, head overlays, t-SNE, votes, accuracy curves, transfer.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot: nothing is shown, no global
state (backend, current figure) is touched, and the figure is freed when it goes out of scope. Save one with
``fig.savefig("heads.png")``; in a notebook, a returned figure is displayed as the cell's value.

The values drawn are the values given: :func:`score_heatmap` draws ``HeadScores.scores`` as they are and marks
the cells of the selected heads, :func:`transfer_heatmap` draws ``TransferMatrix.accuracy``, and so on. Needs
matplotlib (``pip install 'savlens[plot]'``).

Example:
    >>> import torch
    >>> from savlens.heads import HeadScores
    >>> scores = HeadScores(torch.rand(4, 3, generator=torch.Generator().manual_seed(0)), "demo")
    >>> fig = score_heatmap(scores, k=2)
    >>> fig.axes[0].images[0].get_array().shape
    (4, 3)
"""

from savlens.plot._common import Curve as Curve
from savlens.plot._common import Number as Number
from savlens.plot.attention import attention_on_image, attention_share_bars
from savlens.plot.curves import accuracy_curve, accuracy_vs_k, accuracy_vs_shots
from savlens.plot.embeddings import head_tsne, tsne_embedding
from savlens.plot.grid import attention_on_grid
from savlens.plot.heads import head_overlay, score_heatmap
from savlens.plot.matrices import confusion_heatmap, transfer_heatmap
from savlens.plot.votes import vote_histograms

__all__ = [
    "accuracy_curve",
    "accuracy_vs_k",
    "accuracy_vs_shots",
    "attention_on_grid",
    "attention_on_image",
    "attention_share_bars",
    "confusion_heatmap",
    "head_overlay",
    "head_tsne",
    "score_heatmap",
    "transfer_heatmap",
    "tsne_embedding",
    "vote_histograms",
]
