"""Head vectors in two dimensions: t-SNE embeddings of one head's vectors and maps of them coloured by class."""

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from savlens.cache import HeadFeatures
from savlens.errors import FeatureError
from savlens.heads import Head, HeadScores, HeadSet
from savlens.plot._common import class_colors, figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def tsne_embedding(
    features: HeadFeatures,
    head: "Head | str | tuple[int, int]",
    *,
    perplexity: float | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """Return a 2-d t-SNE embedding (``example 2``) of one head's vectors (scikit-learn, seeded).

    Args:
        features: ``example layer head_index d_head`` head features.
        head: the head (``"L14H3"``, ``(14, 3)`` or a :class:`Head`).
        perplexity: t-SNE perplexity; default ``min(30, (n_examples - 1) / 3)``.
        seed: ``random_state`` of t-SNE (PCA initialisation): the same features and seed give the same map.
        normalize: unit-normalise the vectors first (the cosine geometry the SAV votes in).
    """
    from sklearn.manifold import TSNE

    from savlens.cache import gather_heads

    h = Head.coerce(head)
    x = gather_heads(features, HeadSet([h]), "tsne_embedding")[:, 0].double()
    n = x.shape[0]
    if n < 4:
        raise FeatureError(f"tsne_embedding: t-SNE needs at least 4 examples; got {n}.")
    if normalize:
        x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-8)
    perp = perplexity if perplexity is not None else min(30.0, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto")
    return np.asarray(tsne.fit_transform(x.numpy()))


def head_tsne(
    features: HeadFeatures,
    heads: "Head | str | tuple[int, int] | Sequence[Head | str | tuple[int, int]]",
    labels: Sequence[Hashable] | None = None,
    *,
    scores: HeadScores | None = None,
    perplexity: float | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> "Figure":
    """Draw a t-SNE map of one or more heads' vectors, one panel per head, coloured by class (Figure 3 bottom).

    Each panel has one scatter collection per class (labelled with the class, in sorted order), holding the
    embedding of that class's examples (:func:`tsne_embedding`).

    Args:
        features: labelled head features.
        heads: one head or several (``["L14H3", "L2H0"]``): e.g. the best head and a median one.
        labels: one label per example; None uses ``features.labels``.
        scores: head scores to print in each panel's title.
        perplexity: t-SNE perplexity (see :func:`tsne_embedding`).
        seed: t-SNE seed.
        normalize: unit-normalise the vectors first.
    """
    from savlens.labels import resolve_labels

    if isinstance(heads, (Head, str)) or (isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int)):
        head_list = [Head.coerce(heads)]  # type: ignore[arg-type]
    else:
        head_list = [Head.coerce(h) for h in heads]  # type: ignore[union-attr]
    labels = resolve_labels(features, labels, "head_tsne")
    classes = sorted(set(labels), key=str)
    fig, ax0 = figure((4.2 * len(head_list) + 1.2, 4.0))
    fig.delaxes(ax0)
    axes = fig.subplots(1, len(head_list), squeeze=False)[0]
    colors = class_colors(len(classes))
    for ax, h in zip(axes, head_list):
        emb = tsne_embedding(features, h, perplexity=perplexity, seed=seed, normalize=normalize)
        for c, color in zip(classes, colors):
            idx = [i for i, lab in enumerate(labels) if lab == c]
            ax.scatter(emb[idx, 0], emb[idx, 1], s=14, color=color, label=str(c), alpha=0.85, linewidths=0)
        score = f" (score {scores[h]:.2f})" if scores is not None else ""
        ax.set_title(f"{h}{score}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, markerscale=1.5)
    fig.suptitle("t-SNE of head vectors (hook_z at the last token), coloured by class", fontsize=10)
    return fig
