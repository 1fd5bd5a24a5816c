"""The report's data: one JSON-safe dict built from a fitted SAV (or its votes), the examples and the model."""

import base64
import io
import math
import warnings
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

from savlens.errors import ArgumentError, FeatureError, SavlensError
from savlens.heads import HeadSet
from savlens.report._attention import BATCH_OPTIONS, ImageAttention, MediaAttention, head_image_attention

if TYPE_CHECKING:
    from PIL import Image

    from savlens.example import Example
    from savlens.loading import Model
    from savlens.sav import SAV, Votes

#: the payload's format; the page refuses other versions
PAYLOAD_VERSION = 1


def _number(x: float, digits: int = 4) -> float | str | None:
    """A JSON-safe number: NaN is None, infinities are the strings ``"inf"`` / ``"-inf"``."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(float(x), digits)


def image_data_url(image: "Image.Image", size: int = 128) -> str:
    """Return ``image`` as an inline ``data:image/png;base64,...`` URL, shrunk to at most ``size`` px a side."""
    img = image.convert("RGB")
    if max(img.size) > size:
        img = img.copy()
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _media_payload(m: "MediaAttention", k: int) -> dict[str, Any]:
    """Head ``k``'s weights on one image or video: its views (panels drawn on one picture: a video's frame, an
    image's tiles, LLaVA-OneVision's base and anyres views), each panel's box on the picture (fractions of its
    width and height) and cells (row-major), and the weight on newline tokens (``off``)."""
    views: dict[str, dict[str, Any]] = {}
    for panel, cells in zip(m.grid.panels, m.cells):
        view = views.setdefault(panel.view, {"label": panel.view, "frame": panel.frame, "panels": []})
        view["panels"].append(
            {
                "box": [_number(v) for v in panel.box],
                "rows": panel.rows,
                "cols": panel.cols,
                "w": [_number(v) for v in cells[k].flatten().tolist()],
            }
        )
    off = _number(float(m.off_grid[k]))
    return {"kind": m.grid.kind, "index": m.grid.index, "off": off, "views": list(views.values())}


def _grid_payload(attention: ImageAttention | None, i: int) -> tuple[list[Any], list[Any]]:
    """Per head: the share on images and videos and the grids of example ``i`` (``[]`` without attention)."""
    if attention is None:
        return [], []
    share = [_number(float(v)) for v in attention.share[i].tolist()]
    grids = [[_media_payload(m, k) for m in attention.grids[i]] for k in range(len(attention.heads))]
    return share, grids


def _frame_urls(example: "Example", size: int) -> list[list[str]]:
    """Each video's sampled frames (as the model saw them) as PNG data URLs."""
    from PIL import Image

    return [[image_data_url(Image.fromarray(f), size) for f in frames] for frames, _ in example.load_videos()]


def payload(
    *,
    heads: HeadSet,
    classes: Sequence[Hashable],
    layers: Sequence[int],
    n_heads: int,
    scores: Any = None,
    criterion: str | None = None,
    votes: "Votes | None" = None,
    labels: Sequence[Hashable | None] | None = None,
    ids: Sequence[str] | None = None,
    examples: "Sequence[Example] | None" = None,
    attention: ImageAttention | None = None,
    shown: Sequence[int] | None = None,
    title: str = "SAV report",
    model_id: str | None = None,
    notes: Sequence[str] = (),
    image_size: int = 128,
) -> dict[str, Any]:
    """Assemble the page's data (see :func:`savlens.report.report_data` for what each field holds).

    ``shown`` are the example indices on the page, in order; ``attention`` rows follow ``shown``.
    """
    class_names = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    table = None
    if scores is not None:
        table = [[_number(float(v)) for v in row] for row in scores.tolist()]
    data: dict[str, Any] = {
        "version": PAYLOAD_VERSION,
        "title": title,
        "model_id": model_id,
        "classes": class_names,
        "criterion": criterion,
        "layers": [int(x) for x in layers],
        "n_heads": int(n_heads),
        "scores": table,
        "selected": [
            {"name": str(h), "layer": h.layer, "head": h.head, "rank": r + 1} for r, h in enumerate(heads)
        ],
        "examples": [],
        "accuracy": None,
        "n_examples": 0,
        "notes": list(notes),
        "attention": attention is not None,
    }
    if votes is None:
        return data
    n = int(votes.votes.shape[0])
    winners = votes.winners.tolist()
    truth = [None if labels is None else labels[i] for i in range(n)]
    codes = [index.get(t) if t is not None else None for t in truth]
    correct = [None if truth[i] is None else codes[i] == winners[i] for i in range(n)]
    known = [c for c in correct if c is not None]
    data["n_examples"] = n
    data["accuracy"] = sum(known) / len(known) if known else None
    data["n_wrong"] = sum(1 for c in correct if c is False)
    shares = votes.shares
    order = list(shown) if shown is not None else list(range(n))
    for row, i in enumerate(order):
        ex = examples[i] if examples is not None else None
        image_share, grids = _grid_payload(attention, row)
        data["examples"].append(
            {
                "index": i,
                "id": str(ids[i]) if ids is not None else str(i),
                "text": ex.text if ex is not None else None,
                "label": None if truth[i] is None else str(truth[i]),
                "label_index": codes[i],
                "predicted": winners[i],
                "correct": correct[i],
                "confidence": _number(float(shares[i].max())),
                "images": [image_data_url(img, image_size) for img in ex.load_images()] if ex is not None else [],
                "frames": _frame_urls(ex, image_size // 2) if ex is not None and ex.n_videos else [],
                "votes": votes.votes[i].tolist(),
                "similarity": [[_number(float(v)) for v in head] for head in votes.similarity[i].tolist()],
                "image_share": image_share,
                "grids": grids,
            }
        )
    return data


def wrong_first(correct: Sequence[bool | None], confidence: Sequence[float]) -> list[int]:
    """Return example indices: wrong ones first (most confident first), then unlabelled, then right ones.

    >>> wrong_first([True, False, None, False], [0.9, 0.4, 0.5, 0.8])
    [3, 1, 2, 0]
    """
    group = {False: 0, None: 1, True: 2}
    return sorted(range(len(correct)), key=lambda i: (group[correct[i]], -confidence[i] if not correct[i] else 0, i))


def report_data(
    sav: "SAV",
    examples: "Sequence[Example] | None" = None,
    *,
    model: "Model | None" = None,
    features: Any = None,
    attention: bool = True,
    max_examples: int = 200,
    image_size: int = 128,
    batch_size: int = 8,
    progress: bool = False,
    title: str | None = None,
) -> dict[str, Any]:
    """Return the report's data for a fitted ``sav`` on ``examples``: one JSON-safe dict.

    Args:
        sav: a fitted :class:`savlens.SAV`.
        examples: the examples to show (their text and images); needs ``model`` or ``features`` for the votes.
        model: the model the SAV was fitted on: the votes are extracted from it (only the selected heads'
            layers), and, with ``attention``, the heads' attention over each example's images.
        features: the examples' head features (e.g. a feature store), instead of extracting them.
        attention: compute each selected head's attention over the image tokens (needs ``model`` and images).
        max_examples: how many examples the page lists (wrong ones first); the accuracy counts all.
        image_size: longest side of the inlined images, in pixels.
        batch_size: examples per forward pass.
        progress: show extraction progress.
        title: the page's title.

    The dict holds: ``classes``; ``layers`` x ``n_heads`` head ``scores`` (the criterion's, None after
    ``fit_heads``; NaN as None, infinities as ``"inf"``); the ``selected`` heads with their rank; per listed
    example its ``id``, ``text``, ``label``, the SAV's ``predicted`` class, whether it is ``correct``, its
    ``images`` as PNG data URLs, each selected head's ``votes`` and ``similarity`` to each class centroid, and
    each video's sampled ``frames`` as PNG data URLs, and with attention each head's ``image_share`` (on image
    and video tokens) and ``grids`` (per image and video in prompt order: its ``kind``, ``index``, weight ``off``
    the grid (newline tokens), and ``views``, each a picture (``frame`` of a video) with ``panels``: ``box`` on
    the picture, ``rows``, ``cols``, weights ``w`` row-major).
    """
    from savlens.cache import HeadFeatures
    from savlens.labels import normalize_label
    from savlens.outofcore import StoredFeatures

    what = "savlens.report"
    sav._check_fitted(what)
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ArgumentError(f"{what}: max_examples must be a positive int; got {max_examples!r}.")
    scores = sav.scores_
    src = sav.source_
    layers = list(scores.layers or ()) if scores is not None else list(range(max(src.get("layers") or [0]) + 1))
    n_heads = scores.n_heads if scores is not None else int(src.get("n_heads") or max(h.head for h in sav.heads_) + 1)
    common: dict[str, Any] = {
        "heads": sav.heads_,
        "classes": sav.classes_,
        "layers": layers,
        "n_heads": n_heads,
        "scores": None if scores is None else scores.scores,
        "criterion": None if scores is None else scores.criterion + (f" ({scores.mode})" if scores.mode else ""),
        "title": title or f"SAV report: {len(sav.heads_)} heads of {src.get('model_id') or 'a model'}",
        "model_id": src.get("model_id"),
        "image_size": image_size,
    }
    if examples is None and features is None:
        return payload(**common)
    if examples is not None:
        examples = list(examples)
    if features is None:
        if model is None:
            raise ArgumentError(
                f"{what}: examples need their votes: pass model= (the SAV's model) or features= (their features)."
            )
        if examples is None:
            raise ArgumentError(f"{what}: model= extracts the features of examples=; pass the examples too.")
        features = sav.extract(model, examples, batch_size=batch_size, progress=progress)
    if not isinstance(features, (HeadFeatures, StoredFeatures)):
        raise FeatureError(f"{what}: features must be HeadFeatures or a feature store; got {type(features).__name__}.")
    n = features.n_examples if isinstance(features, StoredFeatures) else features.z.shape[0]
    if examples is not None and len(examples) != n:
        raise FeatureError(f"{what}: {len(examples)} examples but {n} rows of features; give one row per example.")
    votes = sav.votes(features)
    raw = features.labels if features.labels is not None else [e.label for e in examples or []] or None
    labels = [None if v is None else normalize_label(v) for v in raw] if raw is not None else None
    index = {c: i for i, c in enumerate(sav.classes_)}
    winners = votes.winners.tolist()
    correct = [None if labels is None or labels[i] is None else index.get(labels[i]) == winners[i] for i in range(n)]
    confidence = votes.shares.max(dim=-1).values.tolist()
    shown = wrong_first(correct, confidence)[:max_examples]
    notes = []
    if n > len(shown):
        notes.append(f"{len(shown)} of {n} examples listed (wrong ones first); the accuracy counts all {n}.")
    image_attention = None
    with_media = examples is not None and any(examples[i].n_images or examples[i].n_videos for i in shown)
    if attention and model is not None and examples is not None and with_media:
        opts = getattr(sav, "extract_options_", {})
        batch_options = {k: opts[k] for k in BATCH_OPTIONS if opts.get(k) is not None}
        query = opts.get("positions", "last")
        try:
            image_attention = head_image_attention(
                model, [examples[i] for i in shown], sav.heads_, query=query, batch_size=batch_size, **batch_options
            )
        except SavlensError as e:  # e.g. a head on a layer without self-attention: the page says so
            warnings.warn(f"savlens.report: no attention over the images ({e.detail})", stacklevel=2)
            notes.append(f"no attention over the images: {e.detail}")
    elif attention and model is None and examples is not None and any(e.n_images or e.n_videos for e in examples):
        notes.append("no attention over the images: pass the model to compute it.")
    return payload(
        **common,
        votes=votes,
        labels=labels,
        ids=features.example_ids,
        examples=examples,
        attention=image_attention,
        shown=shown,
        notes=notes,
    )


def votes_data(
    votes: "Votes", labels: Sequence[Hashable] | None = None, *, max_examples: int = 200, title: str | None = None
) -> dict[str, Any]:
    """Return the report's data for a :class:`savlens.Votes` alone: its heads, and per example each head's vote
    and similarities (no head scores, text or images: the votes do not hold them); the first ``max_examples``
    examples in :func:`wrong_first` order."""
    from savlens.labels import normalize_label

    n = int(votes.votes.shape[0])
    if labels is not None and len(labels) != n:
        raise ArgumentError(f"savlens.report: {len(labels)} labels for {n} examples of these votes.")
    truth = [None if v is None else normalize_label(v) for v in labels] if labels is not None else None
    index = {c: i for i, c in enumerate(votes.classes)}
    winners = votes.winners.tolist()
    correct = [None if truth is None or truth[i] is None else index.get(truth[i]) == winners[i] for i in range(n)]
    confidence = votes.shares.max(dim=-1).values.tolist()
    heads = votes.heads
    shown = wrong_first(correct, confidence)[:max_examples]
    notes = ["Votes hold no head scores: the map shows where the voting heads sit."]
    if n > len(shown):
        notes.append(f"{len(shown)} of {n} examples listed (wrong ones first); the accuracy counts all {n}.")
    return payload(
        heads=heads,
        classes=votes.classes,
        layers=list(range(max(h.layer for h in heads) + 1)),
        n_heads=max(h.head for h in heads) + 1,
        votes=votes,
        labels=truth,
        shown=shown,
        title=title or f"votes of {len(heads)} heads on {n} examples",
        notes=notes,
    )
