"""Seeded synthetic head features for tests (plain torch; no savlens imports)."""

import torch


def planted(
    n_per_class=20,
    n_classes=2,
    n_layers=4,
    n_heads=4,
    d_head=8,
    informative=((1, 2), (3, 0)),
    signal=4.0,
    seed=0,
    dtype=torch.float32,
):
    """Gaussian noise plus, on the ``informative`` (layer, head)s, a class mean of norm ``signal``.

    The class means of a head are orthogonal random directions (needs ``n_classes <= d_head``).

    Returns (z ``example layer head_index d_head``, labels as ints, examples grouped by class).
    """
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * n_classes
    z = torch.randn(n, n_layers, n_heads, d_head, generator=g, dtype=torch.float64)
    labels = [c for c in range(n_classes) for _ in range(n_per_class)]
    for layer, head in informative:
        q, _ = torch.linalg.qr(torch.randn(d_head, n_classes, generator=g, dtype=torch.float64))
        means = signal * q.T
        for i, c in enumerate(labels):
            z[i, layer, head] += means[c]
    return z.to(dtype), labels


def noise(n=40, n_classes=2, n_layers=4, n_heads=4, d_head=8, seed=0, dtype=torch.float32):
    """Pure Gaussian noise with balanced labels (no head carries any signal)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, n_layers, n_heads, d_head, generator=g, dtype=dtype)
    return z, [i % n_classes for i in range(n)]


def tie_heavy(n=24, n_classes=3, n_layers=3, n_heads=4, d_head=2, seed=0, dtype=torch.float32):
    """Small integer-valued features from {-1, 0, 1} with duplicated rows: many exact ties everywhere.

    Labels are shuffled so that the order of first appearance differs from the sorted order.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-1, 2, (max(2, n // 3), n_layers, n_heads, d_head), generator=g)
    z = base[torch.randint(0, base.shape[0], (n,), generator=g)].to(dtype)
    labels = [int(c) for c in torch.randint(0, n_classes, (n,), generator=g)]
    for c in range(n_classes):  # make sure every class occurs
        labels[c] = c
    perm = torch.randperm(n, generator=g).tolist()
    return z, [labels[i] for i in perm]
