"""One record of how features were made (describe()), checked wherever features meet a fitted object.

Features rendered with chat=True and features rendered as raw text (or with another system prompt) hold different
numbers for the same heads: an estimator fitted on one must refuse the other, whatever the path (SAV and its
voting rules, the classifiers and probes, transfer, stored features, a saved and loaded SAV).
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from savlens.cache import PROVENANCE, HeadFeatures
from savlens.classifiers import HeadKNN, HeadLinearProbe, SparseLayers
from savlens.errors import FeatureError
from savlens.outofcore import open_shards
from savlens.sav import SAV, extract_options_of
from savlens.store import FeatureStore
from savlens.transfer import transfer_matrix

CHAT = {"chat": True, "system_prompt": None}


def _features(n: int = 24, seed: int = 0, **meta: Any) -> HeadFeatures:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, 4, 8, generator=g)
    labels = ["a", "b"] * (n // 2)
    for layer, head in ((1, 2), (2, 0)):  # two informative heads (k=2 selects them), two informative layers
        z[0::2, layer, head, 0] += 6
        z[1::2, layer, head, 1] += 6
    return HeadFeatures(z, labels=labels, model_id="m", meta={**CHAT, **meta})


def test_describe_records_the_prompt_settings() -> None:
    f = _features(chat=False, system_prompt="Be brief.")
    assert tuple(f.describe()) == PROVENANCE
    assert f.describe()["chat"] is False and f.describe()["system_prompt"] == "Be brief."
    assert extract_options_of({**f.describe(), "positions": "-2"})["positions"] == -2


OTHERS = {
    "raw text": ({"chat": False}, "chat: fitted on True, these features have False"),
    "another system prompt": ({"system_prompt": "Be brief."}, "system_prompt: fitted on None, these features have"),
}

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "SAV": lambda: SAV(k=2),
    "SAV, reliability voting": lambda: SAV(k=2, voting="reliability"),
    "SAV, reference": lambda: SAV(k=2, reference=True),
    "HeadKNN": lambda: HeadKNN(k=2, n_neighbors=3),
    "HeadLinearProbe": lambda: HeadLinearProbe(k=2),
    "SparseLayers": lambda: SparseLayers(k_layers=1),
}


@pytest.mark.parametrize("other", OTHERS, ids=list(OTHERS))
@pytest.mark.parametrize("make", ESTIMATORS.values(), ids=list(ESTIMATORS))
def test_every_estimator_refuses_features_rendered_otherwise(make: Callable[[], Any], other: str) -> None:
    train, test = _features(seed=0), _features(seed=1)
    changed = dataclasses.replace(test, meta={**test.meta, **OTHERS[other][0]})
    est = make().fit(train)
    assert est.score(test) == 1.0  # features made the same way are accepted
    methods = [est.predict, est.predict_proba, est.score] + ([est.votes] if hasattr(est, "votes") else [])
    for method in methods:
        with pytest.raises(FeatureError, match=OTHERS[other][1]):
            method(changed)


@pytest.mark.parametrize("other", OTHERS, ids=list(OTHERS))
def test_stored_features_rendered_otherwise_are_refused(tmp_path: Path, other: str) -> None:
    train = _features(seed=0)
    meta = {**CHAT, **OTHERS[other][0]}
    header = {"model_id": "m", "hook": "blocks.*.attn.hook_z", "layers": [0, 1, 2], **meta}
    with FeatureStore(tmp_path / "s", header) as fs:
        test = _features(seed=1)
        fs.append(test.z, test.example_ids, test.labels)
    stored = open_shards(tmp_path / "s")
    assert stored.describe() == dataclasses.replace(test, meta=meta).describe()
    sav = SAV(k=2).fit(train)
    with pytest.raises(FeatureError, match=OTHERS[other][1]):
        sav.predict(stored)


def test_a_saved_sav_keeps_the_record_and_old_saves_are_completed_from_their_meta(tmp_path: Path) -> None:
    import json

    train, test = _features(seed=0, chat=False), _features(seed=1, chat=False)
    path = SAV(k=2).fit(train).save(tmp_path / "raw.sav")
    with pytest.raises(FeatureError, match="chat: fitted on False, these features have True"):
        SAV.load(path).predict(dataclasses.replace(test, meta=CHAT))
    # a save written before chat / system_prompt were part of describe(): they come back from the saved meta
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("chat", "system_prompt"):
        manifest["features"].pop(key)
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = SAV.load(path)
    assert old.source_["chat"] is False and old.extract_options_["chat"] is False
    assert old.predict(test) == SAV(k=2).fit(train).predict(test)
    with pytest.raises(FeatureError, match="chat: fitted on False"):
        old.predict(dataclasses.replace(test, meta=CHAT))


def test_transfer_refuses_a_task_whose_test_features_were_rendered_otherwise() -> None:
    a = (_features(seed=0), _features(seed=1))
    b = (_features(seed=2, chat=False), _features(seed=3, chat=False))  # another task may have its own prompt
    assert transfer_matrix({"a": a, "b": b}, k=1).accuracy.min() == 1.0
    mixed = (_features(seed=2), _features(seed=3, chat=False))
    with pytest.raises(FeatureError, match=r"task 'b' has test features made otherwise .*chat: train True, test False"):
        transfer_matrix({"a": a, "b": mixed}, k=1)
