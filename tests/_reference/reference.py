"""Frozen re-implementation of the published SAV reference code's rules (docs/reproducing-savs.md).

Written from the design's description of the reference script, with plain loops, numpy and
``torch.nn.functional.cosine_similarity`` only. It imports nothing from savlens and must not be edited
to follow savlens: savlens's ``reference=True`` mode is tested against it.

Rules reproduced:
- classes numbered in order of first appearance in the training labels;
- class centroid of a head = mean of that head's vectors over the class's examples (``torch.stack(...).mean(0)``);
- per head and example, cosine similarity to each class centroid (eps 1e-8); the first maximum wins;
- a head's score = its count of correctly assigned training examples (in sample: an example is part of the
  centroid it is compared with);
- heads flattened layer-major (flat = layer * n_heads + head); top k = ``np.argsort(scores)[-k:][::-1]``,
  with ``kind="stable"`` (the reference's default sort is platform dependent among equal scores);
- each selected head votes in rank order; the winner is ``Counter(votes).most_common()[0][0]``.
"""

import collections

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-8


def classes_in_order(labels):
    """Return the distinct labels in order of first appearance."""
    seen = []
    for label in labels:
        if label not in seen:
            seen.append(label)
    return seen


def class_centroids(z, labels):
    """Return {label: tensor[layer, head, d_head]}, the mean over the label's examples."""
    out = {}
    for c in classes_in_order(labels):
        members = [z[i] for i in range(len(labels)) if labels[i] == c]
        out[c] = torch.stack(members).mean(dim=0)
    return out


def nearest_class(vector, centroids, classes, layer, head):
    """Return the label whose centroid (at this head) is most cosine-similar; first maximum wins."""
    best, best_sim = None, None
    for c in classes:
        sim = F.cosine_similarity(vector, centroids[c][layer, head], dim=0, eps=EPS).item()
        if best_sim is None or sim > best_sim:
            best, best_sim = c, sim
    return best


def head_scores(z, labels):
    """Return the flat layer-major array of in-sample correct counts per head."""
    n, n_layers, n_heads = z.shape[0], z.shape[1], z.shape[2]
    classes = classes_in_order(labels)
    centroids = class_centroids(z, labels)
    scores = np.zeros(n_layers * n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            for i in range(n):
                if nearest_class(z[i, layer, head], centroids, classes, layer, head) == labels[i]:
                    scores[layer * n_heads + head] += 1
    return scores


def top_heads(scores, k, n_heads):
    """Return the top-k (layer, head) pairs, best first."""
    flat = np.argsort(scores, kind="stable")[-k:][::-1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]


def predict(z, centroids, classes, heads):
    """Return the majority-vote label of each example."""
    out = []
    for i in range(z.shape[0]):
        votes = [nearest_class(z[i, layer, head], centroids, classes, layer, head) for layer, head in heads]
        out.append(collections.Counter(votes).most_common()[0][0])
    return out


def fit_predict(z_train, labels, z_test, k):
    """Run the reference end to end: return (scores, heads, predictions)."""
    scores = head_scores(z_train, labels)
    heads = top_heads(scores, k, z_train.shape[2])
    predictions = predict(z_test, class_centroids(z_train, labels), classes_in_order(labels), heads)
    return scores, heads, predictions
