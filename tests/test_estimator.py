"""One estimator contract for SAV, the classifiers and the probes (savlens.estimator.Estimator, scikit-learn's)."""

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from savlens.cache import HeadFeatures
from savlens.classifiers import HeadKNN, HeadLinearProbe, SparseLayers
from savlens.errors import ArgumentError, NotFittedError, SavlensError
from savlens.estimator import Estimator
from savlens.sav import SAV


def _features(seed: int = 0) -> HeadFeatures:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(24, 3, 4, 8, generator=g)
    for layer, head in ((1, 2), (2, 0)):
        z[0::2, layer, head, 0] += 6
        z[1::2, layer, head, 1] += 6
    return HeadFeatures(z, labels=["a", "b"] * 12, model_id="m")


# every estimator, built with non-default parameters, and the repr those parameters give
CASES: dict[str, tuple[Callable[[], Any], str]] = {
    "SAV": (
        lambda: SAV(k=3, criterion="fisher", seed=1, voting="reliability", voting_params={"prior": 1.0}),
        "SAV(k=3, criterion='fisher', seed=1, voting='reliability', voting_params={'prior': 1.0})",
    ),
    "HeadKNN": (lambda: HeadKNN(["L1H2", "L2H0"], n_neighbors=3), "HeadKNN(heads=['L1H2', 'L2H0'], n_neighbors=3)"),
    "HeadLinearProbe": (
        lambda: HeadLinearProbe(k=2, C=0.5, criterion="fisher"),
        "HeadLinearProbe(k=2, C=0.5, criterion='fisher')",
    ),
    "SparseLayers": (
        lambda: SparseLayers(k_layers=2, mode="kfold", n_folds=3),
        "SparseLayers(k_layers=2, mode='kfold', n_folds=3)",
    ),
}


def _make(name: str) -> Any:
    return CASES[name][0]()


@pytest.mark.parametrize("name", CASES)
def test_params_come_from_the_signature_and_round_trip(name: str) -> None:
    est = _make(name)
    assert isinstance(est, Estimator)
    names = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    params = est.get_params()
    assert list(params) == names  # every constructor parameter, nothing else, in signature order
    assert all(params[n] is getattr(est, n) for n in names)  # stored as given
    assert type(est)(**params).get_params() == params
    fresh = type(est)()
    assert fresh.set_params(**params) is fresh and fresh.get_params() == params
    assert repr(fresh) == CASES[name][1]  # only what differs from the defaults
    assert repr(type(est)()) == f"{type(est).__name__}()"
    with pytest.raises(ArgumentError, match=f"{type(est).__name__}.set_params: unknown parameter 'nope'"):
        est.set_params(nope=1)


@pytest.mark.parametrize("name", CASES)
def test_fit_leaves_the_parameters_untouched(name: str) -> None:
    est = _make(name)
    before = dict(est.get_params())
    assert est.fit(_features()) is est
    assert est.get_params() == before
    assert all(est.get_params()[n] is v for n, v in before.items())


def test_fit_heads_does_not_change_k() -> None:
    sav = SAV(k=7)
    sav.fit_heads(_features(), heads=["L1H2", "L2H0"])
    assert sav.k == 7 and len(sav.heads_) == 2 and sav.get_params()["k"] == 7


@pytest.mark.parametrize("name", CASES)
def test_not_fitted_is_an_attribute_error_as_in_scikit_learn(name: str) -> None:
    est = _make(name)
    assert not est.__sklearn_is_fitted__()
    with pytest.raises(NotFittedError, match="is not fitted yet") as info:
        est.predict(_features(1))
    assert isinstance(info.value, AttributeError) and isinstance(info.value, SavlensError)
    if isinstance(est, SAV):
        assert not hasattr(est, "required_layers") and not hasattr(est, "extract_options_")
    est.fit(_features())
    assert est.__sklearn_is_fitted__()


@pytest.mark.parametrize("name", CASES)
def test_scikit_learn_clone(name: str) -> None:
    from sklearn.base import clone

    est = _make(name).fit(_features())
    copy = clone(est)  # checks that __init__ stores every parameter as given
    assert type(copy) is type(est) and repr(copy) == CASES[name][1]
    assert copy.get_params().keys() == est.get_params().keys()
    assert est.__sklearn_is_fitted__() and not copy.__sklearn_is_fitted__()
    assert copy.fit(_features()).predict(_features(1)) == est.predict(_features(1))


class _Pair(Estimator):
    """An estimator whose parameter is an estimator: what ``deep`` is for."""

    _fitted_attr = "done_"

    def __init__(self, first: Any = None, tag: str = "x") -> None:
        self.first = first
        self.tag = tag


def test_deep_params_reach_nested_estimators() -> None:
    pair = _Pair(SAV(k=3), tag="y")
    shallow = pair.get_params(deep=False)
    assert list(shallow) == ["first", "tag"]
    deep = pair.get_params(deep=True)
    assert deep["first__k"] == 3 and deep["first__criterion"] == "centroid" and deep["tag"] == "y"
    assert set(deep) == {"first", "tag"} | {f"first__{k}" for k in SAV().get_params()}
    pair.set_params(first__k=5, first__criterion="fisher", tag="z")
    assert pair.first.k == 5 and pair.first.criterion == "fisher" and pair.tag == "z"
    with pytest.raises(ArgumentError, match="SAV.set_params: unknown parameter 'nope'"):
        pair.set_params(first__nope=1)
    with pytest.raises(ArgumentError, match="'tag' is 'z', not an estimator"):
        pair.set_params(tag__k=1)
    assert repr(pair) == "_Pair(first=SAV(k=5, criterion='fisher'), tag='z')"


def test_one_word_for_the_head_selection_criterion() -> None:
    for cls in (SAV, HeadKNN, HeadLinearProbe):
        params = inspect.signature(cls.__init__).parameters
        assert "criterion" in params and not any("scorer" in p for p in params)
    assert "k_layers" in inspect.signature(SparseLayers.__init__).parameters  # k counts heads everywhere else
    assert "k" not in inspect.signature(SparseLayers.__init__).parameters
    sav = SAV(k=2, criterion="fisher").fit(_features())
    assert sav.scores_ is not None and sav.scores_.criterion == "fisher"
