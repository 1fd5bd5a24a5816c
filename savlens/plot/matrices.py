"""Annotated matrices: cross-task head transfer and the confusion matrix of predictions."""

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from savlens.errors import LabelError
from savlens.plot._common import Number, figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from savlens.transfer import TransferMatrix


def _matrix(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    cbar: str,
    fmt: str,
    vmin: Number | None,
    vmax: Number | None,
    cmap: str,
) -> "Figure":
    n_r, n_c = values.shape
    fig, ax = figure((max(3.8, 0.9 * n_c + 2.4), max(3.0, 0.7 * n_r + 1.6)))
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=cbar, shrink=0.85)
    for i in range(n_r):
        for j in range(n_c):
            v = values[i, j]
            r, g, b, _ = image.cmap(image.norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells, whatever the colormap
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(n_c), list(cols), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def transfer_heatmap(matrix: "TransferMatrix", *, title: str | None = None) -> "Figure":
    """Draw a :class:`~savlens.transfer.TransferMatrix`: rows where heads were chosen, columns where used.

    The image holds ``matrix.accuracy`` and, below a white rule, one row per baseline in
    ``matrix.baselines`` (``"20 random heads"``, ``"all heads"``; tick labels in italics). Each cell is
    annotated with its value, or with ``mean ± sd`` when the matrix is a :meth:`TransferMatrix.mean`.

    Example:
        >>> import torch
        >>> from savlens.transfer import TransferMatrix
        >>> a = TransferMatrix(("x", "y"), torch.eye(2, dtype=torch.float64), {}, {}, 2)
        >>> a.baselines["all"] = torch.tensor([0.5, 0.25], dtype=torch.float64)
        >>> fig = transfer_heatmap(TransferMatrix.mean([a, a]))
        >>> fig.axes[0].images[0].get_array().tolist()[2], fig.axes[0].texts[-1].get_text()
        ([0.5, 0.25], '0.25 ± 0.00')
    """
    tasks = list(matrix.tasks)
    names = list(matrix.baselines)
    values = np.concatenate([matrix.accuracy.numpy(), *(matrix.baselines[n].numpy()[None] for n in names)])
    rows = tasks + [matrix.baseline_label(n) for n in names]
    default = f"cross-task head transfer (k={matrix.k})"
    if matrix.sd is not None:
        default = f"cross-task head transfer (k={matrix.k}; mean ± sd over {matrix.n_matrices} matrices)"
    fig = _matrix(
        values,
        rows,
        tasks,
        xlabel="used on (centroids + test)",
        ylabel="heads chosen on",
        title=title or default,
        cbar="accuracy",
        fmt=".2f",
        vmin=0.0,
        vmax=1.0,
        cmap="magma",
    )
    ax = fig.axes[0]
    if names:
        ax.axhline(len(tasks) - 0.5, color="white", linewidth=4, gid="transfer-baselines")
        for label in ax.get_yticklabels()[len(tasks) :]:
            label.set_fontstyle("italic")
    if matrix.sd is not None:
        sd = np.concatenate([matrix.sd.numpy(), *(matrix.baselines_sd[n].numpy()[None] for n in names)])
        for text, v, e in zip(ax.texts, values.reshape(-1), sd.reshape(-1)):
            text.set_text(f"{v:.2f} ± {e:.2f}")
            text.set_fontsize(7)
    return fig


def confusion_heatmap(
    truth: Sequence[Hashable],
    predicted: Sequence[Hashable],
    classes: Sequence[Hashable] | None = None,
    *,
    title: str | None = None,
) -> "Figure":
    """Draw the confusion matrix of predictions (rows: true class, columns: predicted class; counts)."""
    if len(truth) != len(predicted):
        raise LabelError(f"confusion_heatmap: {len(truth)} true labels for {len(predicted)} predictions.")
    classes = list(classes) if classes is not None else sorted(set(truth) | set(predicted), key=str)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        if t not in index or p not in index:
            raise LabelError(f"confusion_heatmap: label {t if t not in index else p!r} is not in {classes}.")
        counts[index[t], index[p]] += 1
    names = [str(c) for c in classes]
    acc = np.trace(counts) / max(1, counts.sum())
    return _matrix(
        counts,
        names,
        names,
        xlabel="predicted",
        ylabel="true",
        title=title or f"confusion matrix (accuracy {acc:.3f})",
        cbar="examples",
        fmt="d",
        vmin=0,
        vmax=None,
        cmap="Blues",
    )
