"""The SAV estimator: planted heads, chance on noise, votes, tie-breaking, source checks, save / load."""

import json

import pytest
import torch
from _reference.synthetic import noise, planted
from hypothesis import given, settings
from hypothesis import strategies as st

from savlens.cache import HeadFeatures, gather_heads
from savlens.errors import FeatureError, LabelError, SavlensError, StoreError
from savlens.heads import HeadScores, HeadSet
from savlens.sav import SAV

PLANTED = HeadSet(["L0H1", "L2H3", "L3H2"])


def split_planted(n_train: int = 20, n_test: int = 40, signal: float = 20.0, seed: int = 0, **kw):
    """Train / test features from one planted distribution (same class means)."""
    informative = tuple((h.layer, h.head) for h in PLANTED)
    z, labels = planted(n_per_class=n_train + n_test, informative=informative, signal=signal, seed=seed, **kw)
    per = n_train + n_test
    n_classes = len(set(labels))
    train = [c * per + i for c in range(n_classes) for i in range(n_train)]
    test = [c * per + i for c in range(n_classes) for i in range(n_train, per)]
    f = HeadFeatures(z, labels=labels, model_id="m1", prompt_template="Q: {q}")
    return f.subset(train), f.subset(test)


@pytest.mark.parametrize("mode", [None, "in_sample", "kfold"])
def test_planted_heads_recovered_and_known_accuracy(mode) -> None:
    train, test = split_planted()
    sav = SAV(k=3, mode=mode).fit(train)
    assert sav.heads_.same_heads(PLANTED)
    assert sav.score(test) == 1.0
    # corrupt exactly 10% of the test labels: a perfect classifier then scores exactly 0.9
    labels = list(test.labels or [])
    for i in range(0, len(labels), 10):
        labels[i] = 1 - labels[i]
    assert sav.score(test, labels) == pytest.approx(0.9)
    assert sav.centroids_.shape == (3, 2, 8)
    assert sav.classes_ == (0, 1)


def test_more_heads_than_planted_still_vote_right() -> None:
    train, test = split_planted(n_classes=3)
    sav = SAV(k=5).fit(train)  # 3 planted heads always outvote the 2 noise heads
    assert sav.heads_[:3].same_heads(PLANTED)
    assert sav.score(test) == 1.0


def test_noise_stays_near_chance() -> None:
    z, labels = noise(n=440, seed=3)
    f = HeadFeatures(z, labels=labels)
    train, test = f.subset(range(40)), f.subset(range(40, 440))
    for k in (1, 5, 15):
        assert abs(SAV(k=k).fit(train).score(test) - 0.5) < 0.1


@st.composite
def fitted_savs(draw):
    n_classes = draw(st.integers(2, 4))
    n = draw(st.integers(n_classes * 2, 16))
    labels = [i % n_classes for i in range(n)]
    shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    z = torch.randint(-2, 3, shape, generator=g).float() if draw(st.booleans()) else torch.randn(*shape, generator=g)
    k = draw(st.integers(1, shape[1] * shape[2]))
    return SAV(k=k, reference=draw(st.booleans())), z, labels


@settings(max_examples=40, deadline=None)
@given(fitted_savs())
def test_vote_properties(data) -> None:
    sav, z, labels = data
    sav.fit(HeadFeatures(z, labels=labels))
    query = HeadFeatures(z.flip(0))
    votes = sav.votes(query)
    assert torch.equal(votes.counts.sum(-1), torch.full((query.n_examples,), sav.k))
    proba = sav.predict_proba(query)
    assert torch.allclose(proba.sum(-1), torch.ones(query.n_examples, dtype=proba.dtype))
    assert proba.shape == (query.n_examples, len(sav.classes_))
    predicted = sav.predict(query)
    assert predicted == votes.labels()
    top = votes.counts.max(-1).values
    assert all(int(votes.counts[i, sav.classes_.index(p)]) == int(top[i]) for i, p in enumerate(predicted))
    assert votes.similarity.shape == (query.n_examples, sav.k, len(sav.classes_))


def _tie_setup():
    """Two heads, two classes; the query's head L0H0 leans to A, head L0H1 strongly to B."""
    z = torch.zeros(4, 1, 2, 2)
    z[:2, 0, :] = torch.tensor([1.0, 0.0])  # class A
    z[2:, 0, :] = torch.tensor([0.0, 1.0])  # class B
    train = HeadFeatures(z, labels=["A", "A", "B", "B"])
    q = torch.zeros(1, 1, 2, 2)
    q[0, 0, 0] = torch.tensor([1.0, 0.9])
    q[0, 0, 1] = torch.tensor([0.1, 1.0])
    return train, HeadFeatures(q)


def test_vote_tie_breaking_documented_rules() -> None:
    train, query = _tie_setup()
    # savlens default: highest summed cosine similarity among tied classes -> B
    assert SAV().fit_heads(train, heads=["L0H0", "L0H1"]).predict(query) == ["B"]
    assert SAV().fit_heads(train, heads=["L0H1", "L0H0"]).predict(query) == ["B"]
    # reference: the label voted first by the best-ranked head (Counter.most_common)
    assert SAV(reference=True).fit_heads(train, heads=["L0H0", "L0H1"]).predict(query) == ["A"]
    assert SAV(reference=True).fit_heads(train, heads=["L0H1", "L0H0"]).predict(query) == ["B"]
    votes = SAV().fit_heads(train, heads=["L0H0", "L0H1"]).votes(query)
    assert votes.of_example(0) == {"L0H0": "A", "L0H1": "B"}
    assert votes.shares.tolist() == [[0.5, 0.5]]


def test_predict_refuses_other_sources_and_missing_layers() -> None:
    train, test = split_planted()
    sav = SAV(k=3).fit(train)
    import dataclasses

    with pytest.raises(FeatureError, match="SAV.predict: .*model_id: fitted on 'm1', these features have 'm2'"):
        sav.predict(dataclasses.replace(test, model_id="m2"))
    hooks = "hook: fitted on 'blocks.\\*.attn.hook_z', these features have 'blocks.\\*.hook_resid_post'"
    with pytest.raises(FeatureError, match=hooks):
        sav.predict(dataclasses.replace(test, hook="blocks.*.hook_resid_post"))
    partial = HeadFeatures(test.z[:, [0, 1]], layers=(0, 1), model_id="m1")
    with pytest.raises(FeatureError, match=r"layers \[2, 3\] of the selected heads are not in these features"):
        sav.predict(partial)


def test_predict_on_the_selected_layers_only() -> None:
    """The seam for model-side extraction: only the heads' layers need to be extracted."""
    train, test = split_planted()
    sav = SAV(k=3).fit(train)
    assert sav.required_layers == (0, 2, 3)
    rows = list(sav.required_layers)
    only = HeadFeatures(
        test.z[:, rows],
        layers=sav.required_layers,
        model_id="m1",
        labels=test.labels,
        prompt_template=test.prompt_template,
    )
    assert sav.predict(only) == sav.predict(test)
    refit = SAV().fit_heads(
        HeadFeatures(train.z[:, rows], layers=(0, 2, 3), labels=train.labels, model_id="m1"), heads=sav.heads_
    )
    assert refit.k == 20 and len(refit.heads_) == 3 and refit.scores_ is None  # fit_heads leaves k as it was
    assert torch.allclose(refit.centroids_, sav.centroids_)
    assert torch.equal(gather_heads(only, sav.heads_), gather_heads(test, sav.heads_))


def test_fit_errors_name_the_problem() -> None:
    train, test = split_planted()
    with pytest.raises(SavlensError, match="k must be a positive int"):
        SAV(k=0).fit(train)
    with pytest.raises(FeatureError, match="k=17 is larger than the 4 x 4 = 16 heads"):
        SAV(k=17).fit(train)
    with pytest.raises(LabelError, match="SAV.fit: 3 labels for 40 examples"):
        SAV(k=2).fit(train, [0, 1, 0])
    with pytest.raises(LabelError, match="SAV.fit: the labels hold a single class"):
        SAV(k=2).fit(train, [0] * 40)
    with pytest.raises(LabelError, match="labels mix types"):
        SAV(k=2).fit(train, [0] * 20 + ["1"] * 20)
    bad = train.z.clone()
    bad[5, 0, 0, 0] = float("nan")
    with pytest.raises(FeatureError, match="NaN or infinite"):
        SAV(k=2).fit(HeadFeatures(bad, labels=train.labels))
    with pytest.raises(SavlensError, match="not fitted yet"):
        SAV().predict(test)
    with pytest.raises(SavlensError, match="reference=True uses the centroid criterion"):
        SAV(k=3, reference=True, criterion="probe").fit(train)
    with pytest.raises(SavlensError, match="reference=True scores in sample; got mode='loo'"):
        SAV(k=3, reference=True, mode="loo").fit(train)
    with pytest.raises(SavlensError, match="criterion 'fisher' takes no mode"):
        SAV(k=3, criterion="fisher", mode="loo").fit(train)
    sav = SAV(k=3).fit(train)
    with pytest.raises(LabelError, match=r"labels of type \['str'\] for an SAV fitted on int labels"):
        sav.score(test, ["0"] * 80)
    nan_test = test.z.clone()
    nan_test[1, 2, 3, 0] = float("inf")
    with pytest.raises(FeatureError, match="NaN or infinite values in head L2H3 of example '1'"):
        sav.predict(HeadFeatures(nan_test, model_id="m1", prompt_template=test.prompt_template))


def test_criteria_by_name_by_function_and_with_params() -> None:
    train, test = split_planted()
    assert SAV(k=3, criterion="probe", criterion_params={"alpha": 2.0}).fit(train).scores_.params["alpha"] == 2.0
    assert SAV(k=3, criterion="fisher").fit(train).heads_.same_heads(PLANTED)
    assert SAV(k=3, mode="kfold", n_folds=3).fit(train).scores_.params["n_folds"] == 3

    def last_layer_first(features, labels):
        table = torch.zeros(features.n_layers, features.n_heads)
        table[-1] = 1.0
        return HeadScores(table, "last_layer_first", layers=features.layers)

    sav = SAV(k=4, criterion=last_layer_first).fit(train)
    assert sav.heads_.layers == (3,) and sav.scores_.criterion == "last_layer_first"
    sav.set_params(k=2)
    assert sav.get_params()["k"] == 2 and "SAV(k=2" in repr(sav)


@pytest.mark.parametrize("reference", [False, True])
def test_save_load_round_trip(tmp_path, reference: bool) -> None:
    train, test = split_planted(signal=2.0)
    sav = SAV(k=5, reference=reference).fit(train)
    path = sav.save(tmp_path / "task.sav")
    loaded = SAV.load(path, expect=test)
    assert loaded.predict(test) == sav.predict(test)
    assert torch.equal(loaded.predict_proba(test), sav.predict_proba(test))
    assert torch.equal(loaded.centroids_, sav.centroids_)
    assert loaded.heads_ == sav.heads_ and loaded.classes_ == sav.classes_ == (0, 1)
    assert loaded.reference is reference and loaded.k == 5
    assert loaded.scores_ is not None and torch.equal(loaded.scores_.scores, sav.scores_.scores)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["class_type"] == "int" and manifest["heads"] == sav.heads_.to_list()
    assert manifest["features"]["model_id"] == "m1" and manifest["features"]["hook"] == "blocks.*.attn.hook_z"
    assert len(manifest["features"]["prompt_template_sha256"]) == 64
    assert {"torch", "numpy", "safetensors", "savlens"} <= set(manifest["versions"])
    assert not list(path.glob("*.tmp")) and not list(path.glob(".*"))


def test_saving_over_a_save_is_atomic_as_a_whole(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the tensor file and the manifest leaves the old save loadable and unchanged; a
    completed save leaves exactly one tensor file, the one its manifest names."""
    import savlens.sav_io as sav_module

    train, test = split_planted(signal=2.0)
    first, second = SAV(k=5).fit(train), SAV(k=2).fit(train)
    path = first.save(tmp_path / "task.sav")

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # the process dies before the manifest is replaced

    monkeypatch.setattr(sav_module, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        second.save(path)
    monkeypatch.undo()
    assert len(list(path.glob("tensors-*.safetensors"))) == 2  # the new file exists but nothing names it yet
    survived = SAV.load(path)
    assert survived.k == 5 and torch.equal(survived.centroids_, first.centroids_)
    second.save(path)
    files = sorted(p.name for p in path.iterdir())
    named = json.loads((path / "manifest.json").read_text())["tensors"]["file"]
    assert files == sorted(["manifest.json", named])  # the stale tensor files are gone
    assert SAV.load(path).k == 2 and SAV.load(path).predict(test) == second.predict(test)


def test_load_refuses_tampering_and_other_sources(tmp_path) -> None:
    train, test = split_planted(signal=2.0)
    f = HeadFeatures(
        train.z, labels=["no" if v else "yes" for v in train.labels or []], model_id="m1", prompt_template="Q: {q}"
    )
    sav = SAV(k=4).fit(f)
    path = sav.save(tmp_path / "s")
    assert SAV.load(path).classes_ == ("no", "yes")
    import dataclasses

    with pytest.raises(StoreError, match="model_id: saved 'm1', expected 'm2'"):
        SAV.load(path, expect=dataclasses.replace(test, model_id="m2"))
    with pytest.raises(StoreError, match="prompt_template_sha256"):
        SAV.load(path, expect=dataclasses.replace(test, prompt_template="Other: {q}"))
    with pytest.raises(StoreError, match="hook: saved 'blocks.\\*.attn.hook_z', expected 'blocks.\\*.attn.hook_q'"):
        SAV.load(path, expect={"hook": "blocks.*.attn.hook_q"})
    with pytest.raises(StoreError, match=r"the saved heads need layers \[.*\]"):
        SAV.load(path, expect={"layers": []})
    with pytest.raises(StoreError, match="unknown keys \\['model'\\]"):
        SAV.load(path, expect={"model": "m1"})
    SAV.load(path, expect={"model_id": "m1", "prompt_template": "Q: {q}", "d_head": 8})
    tensors = path / json.loads((path / "manifest.json").read_text())["tensors"]["file"]
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="the file was changed or truncated after it was written"):
        SAV.load(path)
    with pytest.raises(StoreError, match="does not exist"):
        SAV.load(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="exists and is not a folder"):
        sav.save(tmp_path / "file")
