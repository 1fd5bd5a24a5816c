"""SAV end to end on a tiny model: fit(model, examples), predict with only the selected layers, save/load."""

from pathlib import Path

import pytest
import torch
from conftest import tiny

import savlens
from savlens.errors import StoreError
from savlens.extraction import extract
from savlens.sav import SAV
from savlens.testing.tiny import sample_images


def _examples(n: int, seed: int) -> list[savlens.Example]:
    imgs = sample_images(n, seed=seed)
    q = ["what color is the circle ?", "is there a red shape ?"]
    return [savlens.Example(q[i % 2], images=[imgs[i]], label=["a", "b"][i % 2], id=f"s{seed}-{i}") for i in range(n)]


def test_fit_predict_from_model_matches_features_and_stops_early(tmp_path: Path) -> None:
    model = tiny("qwen2_vl")
    train, test = _examples(12, 0), _examples(6, 1)
    sav = SAV(k=3, seed=0).fit(model, train, batch_size=4)
    feats_train = extract(model, train, progress=False)
    ref = SAV(k=3, seed=0).fit(feats_train)
    assert list(sav.heads_) == list(ref.heads_)
    deepest = max(sav.required_layers)
    calls: list[int] = []
    hooks = [
        model.module(model.resolved.block_path(layer)).register_forward_hook(
            lambda *a, layer=layer: calls.append(layer)
        )
        for layer in range(model.n_layers)
    ]
    try:
        pred = sav.predict(model, test)
    finally:
        for h in hooks:
            h.remove()
    # blocks before the deepest selected layer completed; the run stopped inside it, right after its hook_z
    assert sorted(set(calls)) == list(range(deepest))
    assert pred == ref.predict(extract(model, test, progress=False))
    proba = sav.predict_proba(model, test)
    torch.testing.assert_close(proba.sum(-1), torch.ones(len(test), dtype=proba.dtype))
    assert 0.0 <= sav.score(model, test) <= 1.0

    sav.save(tmp_path / "m.sav")
    loaded = SAV.load(tmp_path / "m.sav", expect=feats_train)
    assert loaded.predict(extract(model, test, progress=False)) == pred
    other = extract(tiny("qwen2_5_vl"), train, progress=False)
    with pytest.raises(StoreError):
        SAV.load(tmp_path / "m.sav", expect=other)


def test_saved_sav_remembers_how_to_extract(tmp_path: Path) -> None:
    model = tiny("llava_onevision")
    train, test = _examples(10, 2), _examples(4, 3)
    template = "question : {text}"
    sav = SAV(k=3).fit(model, train, prompt_template=template, dtype=torch.float32)
    want = sav.predict(model, test)
    sav.save(tmp_path / "t.sav")
    loaded = SAV.load(tmp_path / "t.sav")
    assert loaded.extract_options_["prompt_template"] == template
    assert loaded.predict(model, test) == want  # extracted with the saved template, not the raw text
    plain = extract(model, test, progress=False)  # no template
    with pytest.raises(savlens.errors.FeatureError, match="prompt template"):
        loaded.predict(plain)


def test_sav_fitted_on_features_extracts_like_them_at_predict_time() -> None:
    model = tiny("qwen2_vl")
    train, test = _examples(8, 4), _examples(4, 5)
    opts = dict(prompt_template="say : {text}", chat=False, progress=False)
    sav = SAV(k=2).fit(extract(model, train, **opts))  # type: ignore[arg-type]
    assert sav.extract_options_["prompt_template"] == "say : {text}" and sav.extract_options_["chat"] is False
    assert sav.predict(model, test) == sav.predict(extract(model, test, **opts))  # type: ignore[arg-type]
