"""An interactive view of a fitted SAV: one self-contained HTML file (no server, no network).

The page shows the ``layer x head_index`` score map with the selected heads marked; a click on a head shows,
for every example (the ones the SAV gets wrong first), the head's vote, its cosine similarity to each class
centroid, and its attention from the read position over the example's images, drawn over them. The data goes
into the page as one inline JSON blob; scripts, styles and images (PNG data URLs) are inline too.

Example:
    >>> import torch
    >>> from savlens import SAV, HeadFeatures
    >>> z = torch.randn(8, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    >>> sav = SAV(k=2).fit(HeadFeatures(z, labels=["a", "b"] * 4))
    >>> page = report_html(sav, features=HeadFeatures(z, labels=["a", "b"] * 4))
    >>> page.startswith("<!DOCTYPE html>"), "cdn" in page.lower()
    (True, False)

:func:`write_report` writes the file (``savlens report`` from the shell); ``SAV`` and ``Votes`` render the
view in notebooks (``_repr_html_``). Plots for papers stay matplotlib PNGs (:mod:`savlens.plot`).
"""

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from savlens.report._attention import ImageAttention, MediaAttention, head_image_attention
from savlens.report._data import report_data, votes_data, wrong_first
from savlens.report._page import json_for_script, render

if TYPE_CHECKING:
    from savlens.example import Example
    from savlens.loading import Model
    from savlens.sav import SAV, Votes


def report_html(
    sav: "SAV",
    examples: "Sequence[Example] | None" = None,
    *,
    model: "Model | None" = None,
    features: Any = None,
    full: bool = True,
    **options: Any,
) -> str:
    """Return the report page of a fitted ``sav`` on ``examples`` as an HTML string.

    Args:
        sav: a fitted :class:`savlens.SAV`.
        examples: the examples to show; their votes come from ``model`` (extracted) or ``features``.
        model: the SAV's model (also gives each head's attention over the images).
        features: the examples' head features instead of extracting them.
        full: a whole HTML document; False gives a fragment for a notebook cell.
        **options: :func:`report_data` options (``attention``, ``max_examples``, ``image_size``, ``batch_size``,
            ``progress``, ``title``).
    """
    return render(report_data(sav, examples, model=model, features=features, **options), full=full)


def votes_html(
    votes: "Votes",
    labels: Sequence[Hashable] | None = None,
    *,
    max_examples: int = 200,
    title: str | None = None,
    full: bool = True,
) -> str:
    """Return the report page of a :class:`savlens.Votes` (with ``labels``, the wrong examples come first)."""
    return render(votes_data(votes, labels, max_examples=max_examples, title=title), full=full)


def write_report(
    path: str | Path,
    sav: "SAV",
    examples: "Sequence[Example] | None" = None,
    *,
    model: "Model | None" = None,
    features: Any = None,
    **options: Any,
) -> Path:
    """Write the report page of a fitted ``sav`` on ``examples`` to ``path`` (atomically) and return the path.

    Arguments as :func:`report_html`. Open the file in any browser; it needs no server and no network.
    """
    from savlens.io import write_bytes

    page = report_html(sav, examples, model=model, features=features, **options)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, page.encode("utf-8"))
    return out


__all__ = [
    "ImageAttention",
    "MediaAttention",
    "head_image_attention",
    "json_for_script",
    "render",
    "report_data",
    "report_html",
    "votes_data",
    "votes_html",
    "wrong_first",
    "write_report",
]
