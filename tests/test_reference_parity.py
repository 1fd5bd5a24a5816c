"""SAV(reference=True) agrees exactly with the frozen reference re-implementation in tests/_reference."""

import numpy as np
import pytest
import torch
from _reference import reference
from _reference.synthetic import noise, planted, tie_heavy

from savlens.cache import HeadFeatures
from savlens.sav import SAV
from savlens.scoring import centroid_accuracy

SEEDS = range(50)


def _check_parity(z: torch.Tensor, labels: list, z_test: torch.Tensor, k: int) -> None:
    ref_scores, ref_heads, ref_pred = reference.fit_predict(z, labels, z_test, k)
    sav = SAV(k=k, reference=True).fit(HeadFeatures(z, labels=labels))
    assert sav.classes_ == tuple(reference.classes_in_order(labels))
    scores = sav.scores_
    assert scores is not None
    np.testing.assert_array_equal(scores.scores.reshape(-1).numpy() * len(labels), ref_scores)
    assert [(h.layer, h.head) for h in sav.heads_] == ref_heads
    assert sav.predict(HeadFeatures(z_test)) == ref_pred
    assert sav.predict(HeadFeatures(z)) == reference.predict(
        z, reference.class_centroids(z, labels), reference.classes_in_order(labels), ref_heads
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_parity_on_tie_heavy_integer_features(seed: int) -> None:
    z, labels = tie_heavy(n=24, n_classes=2 + seed % 3, seed=seed)
    z_test, _ = tie_heavy(n=16, seed=1000 + seed)
    _check_parity(z, labels, z_test, k=1 + seed % 12)


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_parity_on_continuous_and_string_labels(seed: int) -> None:
    z, labels = planted(
        n_per_class=6, n_classes=3, n_layers=3, n_heads=4, d_head=5, informative=((1, 2), (2, 0)), seed=seed, signal=1.0
    )
    names = ["cat", "ant", "bee"]
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    z, str_labels = z[perm], [names[labels[i]] for i in perm]
    z_test, _ = noise(n=10, n_layers=3, n_heads=4, d_head=5, seed=seed + 7)
    _check_parity(z, str_labels, z_test, k=5)


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_parity_in_float64_and_with_duplicated_examples(seed: int) -> None:
    z, labels = tie_heavy(n=18, n_classes=2, d_head=3, seed=seed, dtype=torch.float64)
    z = torch.cat([z, z[:6]])  # exact duplicates of examples
    labels = labels + labels[:6]
    _check_parity(z, labels, z.flip(0), k=12)


@pytest.mark.parametrize("seed", SEEDS[:5])
def test_parity_in_bfloat16(seed: int) -> None:
    z, labels = tie_heavy(n=20, n_classes=3, d_head=4, seed=seed, dtype=torch.bfloat16)
    _check_parity(z, labels, z.flip(0), k=6)


def test_reference_scores_are_in_sample_counts_with_first_appearance_classes() -> None:
    z, labels = tie_heavy(n=30, seed=3)
    counts = centroid_accuracy(HeadFeatures(z, labels=labels), mode="in_sample", reference=True).scores * 30
    np.testing.assert_array_equal(counts.reshape(-1).numpy(), reference.head_scores(z, labels))


def test_ties_really_occur_in_the_tie_heavy_sets() -> None:
    """The parity tests above are only meaningful if head scores and votes tie often."""
    tied_scores = tied_votes = 0
    for seed in range(10):
        z, labels = tie_heavy(n=24, seed=seed)
        scores, heads, _ = reference.fit_predict(z, labels, z, 6)
        tied_scores += len(scores) - len(set(scores.tolist()))
        sav = SAV(k=6, reference=True).fit(HeadFeatures(z, labels=labels))
        counts = sav.votes(HeadFeatures(z)).counts
        top2 = counts.topk(2, dim=-1).values
        tied_votes += int((top2[:, 0] == top2[:, 1]).sum())
    assert tied_scores > 50 and tied_votes > 20
