"""The statistics helpers (exact McNemar, paired bootstrap, macro-F1) against scipy / scikit-learn on known
cases, and the image-disjoint split (a property test: no image is ever both a shot and a test example)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from savlens.datasets import image_disjoint_split, image_keys
from savlens.errors import InputError, LabelError
from savlens.example import Example
from savlens.stats import macro_f1, mcnemar_exact, paired_bootstrap

scipy_stats = pytest.importorskip("scipy.stats")
sk_metrics = pytest.importorskip("sklearn.metrics")


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return a, b


@pytest.mark.parametrize(
    ("a_only", "b_only", "p"),
    [
        (0, 4, 0.125),  # 2 * 0.5**4: the demo's 4 discordant questions
        (1, 9, 22 / 1024),  # 2 * (1 + 10) / 2**10
        (5, 5, 1.0),
        (0, 0, 1.0),  # no discordant pair
        (3, 0, 0.25),
    ],
)
def test_mcnemar_exact_known_cases(a_only: int, b_only: int, p: float) -> None:
    a, b = _pairs(7, a_only, b_only, 2)
    r = mcnemar_exact(a, b)
    assert (r.a_only, r.b_only) == (a_only, b_only)
    assert r.p_value == pytest.approx(p, abs=1e-12)
    if a_only + b_only:
        assert r.p_value == pytest.approx(scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    assert mcnemar_exact(b, a).p_value == pytest.approx(r.p_value)  # symmetric


def test_mcnemar_matches_scipy_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < 0.7, rng.random(60) < 0.5
        k, n = int((a & ~b).sum()), int((a ^ b).sum())
        assert mcnemar_exact(a.tolist(), b.tolist()).p_value == pytest.approx(scipy_stats.binomtest(k, n).pvalue)


def test_paired_bootstrap() -> None:
    a, b = _pairs(50, 12, 4, 34)
    r = paired_bootstrap(a, b, n_resamples=4000, seed=1)
    assert r.difference == pytest.approx(0.08)
    assert r.low < 0.08 < r.high and r.level == 0.95 and r.n_resamples == 4000
    assert paired_bootstrap(a, b, n_resamples=4000, seed=1) == r  # seeded
    # the paired interval is about +-1.96 sd of the mean difference (d in {-1, 0, 1})
    d = np.array(a, float) - np.array(b, float)
    sd = d.std() / np.sqrt(d.size)
    assert r.high - r.low == pytest.approx(2 * 1.96 * sd, rel=0.15)
    same = paired_bootstrap(a, a, n_resamples=100)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(InputError):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(InputError):
        paired_bootstrap(a, b, level=1.5)


def test_macro_f1_matches_sklearn() -> None:
    classes = ["red", "green", "blue"]
    truth = ["red", "red", "green", "green", "blue", "blue"]
    pred = ["red", "green", "green", "green", "red", None]
    # red: P 1/2 R 1/2 F 1/2; green: P 2/3 R 1 F 0.8; blue: 0
    assert macro_f1(truth, pred, classes) == pytest.approx((0.5 + 0.8 + 0) / 3)
    rng = np.random.default_rng(0)
    t = [classes[i] for i in rng.integers(0, 3, 50)]
    p = [classes[i] for i in rng.integers(0, 3, 50)]
    assert macro_f1(t, p, classes) == pytest.approx(sk_metrics.f1_score(t, p, average="macro"))
    assert macro_f1(t, t, classes) == 1.0


_pools = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 40)),  # (label, image id)
    min_size=0,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(shots=_pools, test=_pools, n=st.integers(1, 4), m=st.integers(1, 4), seed=st.integers(0, 2**16),
       one=st.booleans())  # fmt: skip
def test_image_disjoint_split_never_shares_an_image(shots, test, n, m, seed, one) -> None:
    # the two pools draw image ids from the same range, so they overlap (as two questions on one image do)
    sp = [Example(f"s{i}", images=[f"/img/{im}.png"], label=lab, id=f"s{i}") for i, (lab, im) in enumerate(shots)]
    tp = [Example(f"t{i}", images=[f"/img/{im}.png"], label=lab, id=f"t{i}") for i, (lab, im) in enumerate(test)]
    try:
        train, held = image_disjoint_split(sp, tp, n, m, seed=seed, one_per_image=one)
    except LabelError:
        return  # too few usable examples in some class: refused, never a leaky split
    shot_images = set().union(*map(image_keys, train))
    test_images = set().union(*map(image_keys, held))
    assert not shot_images & test_images
    classes = set(e.label for e in sp)
    assert sorted(e.label for e in train) == sorted([c for c in classes for _ in range(n)])
    assert sorted(e.label for e in held) == sorted([c for c in classes for _ in range(m)])
    if one:  # one example per image within each side too
        assert len(shot_images) == len(train) and len(test_images) == len(held)
    again = image_disjoint_split(sp, tp, n, m, seed=seed, one_per_image=one)
    assert [e.id for e in again.train] == [e.id for e in train] and [e.id for e in again.test] == [e.id for e in held]


def test_image_disjoint_split_refuses_when_images_run_out() -> None:
    sp = [Example("a", images=["/x/1.png"], label="a"), Example("b", images=["/x/2.png"], label="b")]
    tp = [Example("a", images=["/x/1.png"], label="a"), Example("b", images=["/x/3.png"], label="b")]
    with pytest.raises(LabelError, match="'a': 0"):
        image_disjoint_split(sp, tp, 1, 1)
    with pytest.raises(InputError):
        image_disjoint_split(sp, tp, 0, 1)
