"""What the figures of :mod:`savlens.plot` share: a pyplot-free figure, sizes, colours, heads given as anything."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from savlens.errors import LoadError
from savlens.heads import Head, HeadSet

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Number = int | float
#: one accuracy per x value, or one list of accuracies (runs) per x value
Curve = Sequence[Number] | Sequence[Sequence[Number]]


def figure(figsize: tuple[float, float], ax: "Axes | None" = None) -> tuple["Figure", "Axes"]:
    """Return a new pyplot-free figure with one axes, or ``ax``'s figure and ``ax``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LoadError("savlens.plot needs matplotlib, which is not installed: pip install 'savlens[plot]'.") from None
    if ax is not None:
        return ax.get_figure(root=True), ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def grid_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """A figure size that keeps heatmap cells near-square and labels readable."""
    return (min(12.0, max(3.5, 0.38 * n_cols + 2.2)), min(12.0, max(3.0, 0.24 * n_rows + 1.4)))


def as_heads(value: "HeadSet | Sequence[Head | str | tuple[int, int]] | Any") -> HeadSet:
    """Return ``value`` as a :class:`~savlens.heads.HeadSet`: a HeadSet, a fitted SAV's ``heads_``, or head labels."""
    if isinstance(value, HeadSet):
        return value
    heads = getattr(value, "heads_", None)  # a fitted SAV or classifier
    if isinstance(heads, HeadSet):
        return heads
    return HeadSet(value)


def class_colors(n: int) -> list[Any]:
    """Return ``n`` distinct colours for classes (tab10, or tab20 past ten classes; repeating past 20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
