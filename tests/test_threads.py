"""limit_threads sets torch's and threadpoolctl's pools inside the block and restores them; the probe uses it."""

import re

import pytest
import torch
from _reference.synthetic import planted

from savlens.cache import HeadFeatures
from savlens.classifiers import HeadLinearProbe
from savlens.errors import ArgumentError
from savlens.threads import limit_threads

threadpoolctl = pytest.importorskip("threadpoolctl")
pytest.importorskip("sklearn.linear_model")  # loads scikit-learn's and scipy's BLAS / OpenMP before any limit


def _pools() -> list[tuple[str, int]]:
    return [(p["filepath"], p["num_threads"]) for p in threadpoolctl.threadpool_info()]


@pytest.fixture
def two_threads():
    """Start from 2 threads everywhere (so that a limit of 1 is visible), and put the session's 1 thread back."""
    before = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=2):
        torch.set_num_threads(2)
        yield
    torch.set_num_threads(before)


def test_limit_threads_sets_and_restores_torch_and_blas(two_threads) -> None:
    outside = _pools()
    assert outside, "threadpoolctl finds no BLAS / OpenMP library"
    with limit_threads(1):
        assert torch.get_num_threads() == 1
        assert {n for _, n in _pools()} == {1}
    assert torch.get_num_threads() == 2
    assert _pools() == outside


def test_limit_threads_restores_after_an_exception(two_threads) -> None:
    outside = _pools()
    with pytest.raises(RuntimeError, match="boom"), limit_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    assert _pools() == outside


def test_limit_threads_none_leaves_the_pools_alone(two_threads) -> None:
    outside = _pools()
    with limit_threads(None):
        assert torch.get_num_threads() == 2
        assert _pools() == outside
    assert torch.get_num_threads() == 2


def test_limit_threads_nests() -> None:
    before = torch.get_num_threads()
    with limit_threads(2):
        with limit_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, True])
def test_limit_threads_rejects_bad_counts(n) -> None:
    message = (
        "limit_threads: n must be a positive int (the number of threads) or None (leave the thread pools as they "
        f"are); got {n!r}. Pass n=1 on a machine shared with other jobs."
    )
    with pytest.raises(ArgumentError, match=re.escape(message)):
        limit_threads(n)  # checked at the call, before any with-block


def _probe_split() -> tuple[HeadFeatures, HeadFeatures]:
    z, labels = planted(n_per_class=30, n_classes=3, informative=((0, 1), (2, 3)), signal=1.0, seed=7)
    f = HeadFeatures(z, labels=labels, model_id="m")
    return f.subset([i for i in range(90) if i % 30 < 12]), f.subset([i for i in range(90) if i % 30 >= 12])


# HeadLinearProbe(k=2, seed=0) on _probe_split(), recorded before the probe ran under limit_threads
# (score 0.556: a hard split, so the predictions are not all the true labels).
PROBE_PREDICTIONS_BEFORE = [
    0, 2, 2, 2, 2, 0, 2, 2, 0, 2, 2, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 1, 0,
    1, 1, 0, 2, 1, 0, 1, 1, 1, 2, 1, 0, 2, 0, 1, 1, 2, 2, 0, 2, 2, 1, 1, 1, 2, 2, 2,
]  # fmt: skip
PROBE_FIRST_PROBA_BEFORE = [[0.4758, 0.0851, 0.4391], [0.2771, 0.2618, 0.4610], [0.3159, 0.0836, 0.6005]]


def test_probe_predictions_are_unchanged(two_threads) -> None:
    train, test = _probe_split()
    probe = HeadLinearProbe(k=2, seed=0).fit(train)
    assert torch.get_num_threads() == 2  # restored after fit
    assert probe.predict(test) == PROBE_PREDICTIONS_BEFORE
    proba = probe.predict_proba(test)
    assert torch.allclose(proba[:3], torch.tensor(PROBE_FIRST_PROBA_BEFORE, dtype=proba.dtype), atol=1e-4)
    untouched = HeadLinearProbe(k=2, seed=0, n_threads=None).fit(train)
    assert untouched.predict(test) == PROBE_PREDICTIONS_BEFORE
    assert torch.allclose(untouched.predict_proba(test), proba, atol=1e-10)


def test_probe_runs_its_solver_under_the_limit(two_threads, monkeypatch) -> None:
    seen = []
    linear_model = pytest.importorskip("sklearn.linear_model")
    fit, predict_proba = linear_model.LogisticRegression.fit, linear_model.LogisticRegression.predict_proba

    def spy(method):
        def wrapped(self, *args, **kwargs):
            seen.append((torch.get_num_threads(), {n for _, n in _pools()}))
            return method(self, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(linear_model.LogisticRegression, "fit", spy(fit))
    monkeypatch.setattr(linear_model.LogisticRegression, "predict_proba", spy(predict_proba))
    train, test = _probe_split()
    HeadLinearProbe(k=2).fit(train).predict(test)
    HeadLinearProbe(k=2, n_threads=None).fit(train).predict(test)
    assert seen == [(1, {1}), (1, {1}), (2, {2}), (2, {2})]


@pytest.mark.parametrize("n", [0, -2])
def test_probe_rejects_bad_thread_counts(n) -> None:
    train, _ = _probe_split()
    with pytest.raises(ArgumentError, match=r"HeadLinearProbe: n_threads must be a positive int .* got " + str(n)):
        HeadLinearProbe(k=2, n_threads=n).fit(train)
