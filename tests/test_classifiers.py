"""KNN and linear probe on the selected heads (Table 3a), sparse layers (Table 3b)."""

import dataclasses

import pytest
import torch
from _reference.synthetic import planted

from savlens.cache import HeadFeatures
from savlens.classifiers import HeadKNN, HeadLinearProbe, SparseLayers, layer_features
from savlens.errors import FeatureError, SavlensError
from savlens.heads import HeadSet

PLANTED = ((0, 1), (2, 3), (3, 2))


def split(informative=PLANTED, signal=20.0, n_train=20, n_test=30, seed=0, **kw):
    z, labels = planted(n_per_class=n_train + n_test, informative=informative, signal=signal, seed=seed, **kw)
    per, n_classes = n_train + n_test, len(set(labels))
    f = HeadFeatures(z, labels=labels, model_id="m")
    train = [c * per + i for c in range(n_classes) for i in range(n_train)]
    test = [c * per + i for c in range(n_classes) for i in range(n_train, per)]
    return f.subset(train), f.subset(test)


def test_knn_selects_planted_heads_and_classifies() -> None:
    train, test = split()
    knn = HeadKNN(k=3, n_neighbors=5).fit(train)
    assert knn.heads_.same_heads(HeadSet(PLANTED))
    assert knn.score(test) == 1.0
    proba = knn.predict_proba(test)
    assert torch.allclose(proba.sum(-1), torch.ones(len(test), dtype=proba.dtype))


def test_knn_matches_scikit_learn_cosine_knn() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    train, test = split(signal=1.0, n_classes=3)
    heads = HeadSet(["L0H1", "L1H1", "L3H3"])
    knn = HeadKNN(heads, n_neighbors=5).fit(train)
    x_tr = torch.cat([train.z[:, h.layer, h.head] for h in heads], dim=-1).double().numpy()
    x_te = torch.cat([test.z[:, h.layer, h.head] for h in heads], dim=-1).double().numpy()
    ref = neighbors.KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(x_tr, train.labels)
    assert torch.allclose(knn.predict_proba(test), torch.from_numpy(ref.predict_proba(x_te)))
    expected = ref.predict(x_te).tolist()
    proba = knn.predict_proba(test)
    untied = [i for i in range(len(test)) if (proba[i] == proba[i].max()).sum() == 1]
    assert len(untied) > 50
    assert [knn.predict(test)[i] for i in untied] == [expected[i] for i in untied]


def test_linear_probe_matches_logistic_regression_on_normalised_heads() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    train, test = split(signal=1.5)
    probe = HeadLinearProbe(k=3).fit(train)
    assert probe.heads_.same_heads(HeadSet(PLANTED))
    assert probe.score(test) > 0.9

    def design(f: HeadFeatures):
        parts = [f.z[:, h.layer, h.head] for h in probe.heads_]
        return torch.cat([p / p.norm(dim=-1, keepdim=True) for p in parts], dim=-1).double().numpy()

    ref = linear_model.LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(design(train), train.labels)
    assert torch.allclose(probe.predict_proba(test), torch.from_numpy(ref.predict_proba(design(test))), atol=1e-6)


def test_classifier_errors() -> None:
    train, test = split()
    with pytest.raises(SavlensError, match="n_neighbors must be an int between 1 and the 40 training examples"):
        HeadKNN(k=3, n_neighbors=41).fit(train)
    knn = HeadKNN(k=3).fit(train)
    with pytest.raises(FeatureError, match="HeadKNN.predict: .*model_id: fitted on 'm', these features have 'other'"):
        knn.predict(dataclasses.replace(test, model_id="other"))
    with pytest.raises(SavlensError, match="not fitted yet"):
        HeadKNN().predict(test)


def test_layer_features_concatenate_heads() -> None:
    z = torch.randn(3, 2, 4, 5)
    f = HeadFeatures(z, layers=(7, 9), model_id="m")
    lf = layer_features(f)
    assert lf.z.shape == (3, 2, 1, 20) and lf.layers == (7, 9)
    assert torch.equal(lf.z[:, 1, 0], z[:, 1].reshape(3, 20))
    assert lf.hook == "blocks.*.attn.hook_z#layer" and lf.meta["unit"] == "layer"


def test_sparse_layers_find_the_informative_layer() -> None:
    informative = tuple((2, h) for h in range(4))  # every head of layer 2
    train, test = split(informative=informative, signal=6.0)
    sparse = SparseLayers(k_layers=1).fit(train)
    assert sparse.layers_ == (2,)
    assert sparse.score(test) == 1.0
    assert sparse.scores_ is not None and sparse.scores_.scores.shape == (4, 1)
    votes = sparse.votes(test)
    assert [str(h) for h in votes.heads] == ["L2H0"]
    three = SparseLayers(k_layers=3, mode="kfold").fit(train)
    assert three.layers_[0] == 2 and len(three.layers_) == 3
    assert torch.allclose(three.predict_proba(test).sum(-1), torch.ones(len(test), dtype=torch.float64))
    with pytest.raises(FeatureError, match="model_id"):
        sparse.predict(dataclasses.replace(test, model_id="other"))
