"""SAV end to end on a tiny model: fit(model, examples), predict with only the selected layers, save/load."""

from pathlib import Path

import jaxtyping
import pytest
import torch
from conftest import tiny

import savlens
from savlens.errors import FeatureError, StoreError
from savlens.extraction import extract
from savlens.sav import SAV
from savlens.testing.tiny import sample_images


def _examples(n: int, seed: int) -> list[savlens.Example]:
    imgs = sample_images(n, seed=seed)
    q = ["what color is the circle ?", "is there a red shape ?"]
    return [savlens.Example(q[i % 2], images=[imgs[i]], label=["a", "b"][i % 2], id=f"s{seed}-{i}") for i in range(n)]


def test_fit_model_and_extract_match_features_and_stop_early(tmp_path: Path) -> None:
    model = tiny("qwen2_vl")
    train, test = _examples(12, 0), _examples(6, 1)
    sav = SAV(k=3, seed=0).fit_model(model, train, batch_size=4)
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
        feats_test = sav.extract(model, test)
    finally:
        for h in hooks:
            h.remove()
    # blocks before the deepest selected layer completed; the run stopped inside it, right after its hook_z
    assert sorted(set(calls)) == list(range(deepest))
    assert feats_test.layers == sav.required_layers
    full = extract(model, test, progress=False)
    torch.testing.assert_close(feats_test.z, full.z[:, list(sav.required_layers)], rtol=1e-5, atol=1e-5)
    pred = sav.predict(feats_test)
    assert pred == ref.predict(full)
    proba = sav.predict_proba(feats_test)
    torch.testing.assert_close(proba, ref.predict_proba(full))
    assert sav.score(feats_test) == ref.score(full)

    sav.save(tmp_path / "m.sav")
    loaded = SAV.load(tmp_path / "m.sav", expect=feats_train)
    assert loaded.predict(full) == pred
    other = extract(tiny("qwen2_5_vl"), train, progress=False)
    with pytest.raises(StoreError):
        SAV.load(tmp_path / "m.sav", expect=other)


def test_fitting_and_predicting_take_features_and_name_the_model_side_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # a wrong type on purpose: savlens' own check
    model = tiny("qwen2_vl")
    train = _examples(8, 0)
    with pytest.raises(FeatureError, match=r"SAV.fit takes features, not a model; use SAV\(...\).fit_model"):
        SAV(k=2).fit(model, train)  # type: ignore[arg-type]
    sav = SAV(k=2).fit_model(model, train)
    for method in (sav.predict, sav.predict_proba, sav.votes, sav.score):
        with pytest.raises(FeatureError, match=r"takes features, not a model; pass sav.extract\(model, examples\)"):
            method(model)  # type: ignore[arg-type]


def test_saved_sav_remembers_how_to_extract(tmp_path: Path) -> None:
    model = tiny("llava_onevision")
    train, test = _examples(10, 2), _examples(4, 3)
    template = "question : {text}"
    sav = SAV(k=3).fit_model(model, train, prompt_template=template, system_prompt="Answer briefly.")
    want = sav.predict(sav.extract(model, test))
    sav.save(tmp_path / "t.sav")
    loaded = SAV.load(tmp_path / "t.sav")
    assert loaded.extract_options_ == {
        "positions": "last",
        "prompt_template": template,
        "chat": True,
        "system_prompt": "Answer briefly.",
        "dtype": torch.float32,
    }
    assert loaded.predict(loaded.extract(model, test)) == want  # extracted with the saved settings
    plain = extract(model, test, progress=False)  # no template, no system prompt
    with pytest.raises(FeatureError, match="prompt template") as info:
        loaded.predict(plain)
    assert "system_prompt: fitted on 'Answer briefly.', these features have None" in str(info.value)


def test_sav_fitted_on_features_extracts_like_them_at_predict_time() -> None:
    model = tiny("qwen2_vl")
    train, test = _examples(8, 4), _examples(4, 5)
    opts = dict(prompt_template="say : {text}", chat=False, progress=False)
    sav = SAV(k=2).fit(extract(model, train, **opts))  # type: ignore[arg-type]
    assert sav.extract_options_["prompt_template"] == "say : {text}" and sav.extract_options_["chat"] is False
    mine, theirs = sav.extract(model, test), extract(model, test, **opts)  # type: ignore[arg-type]
    torch.testing.assert_close(mine.z, theirs.z[:, list(sav.required_layers)])
    assert sav.predict(mine) == sav.predict(theirs)


def test_predict_refuses_features_of_another_chat_setting_or_system_prompt(tmp_path: Path) -> None:
    """An SAV fitted on chat-rendered features refuses raw-text features and features of another system prompt,
    after a save and load too, and SAV.extract cannot be told to make them."""
    model = tiny("qwen2_vl")
    train, test = _examples(8, 6), _examples(4, 7)
    sav = SAV(k=2).fit(extract(model, train, chat=True, progress=False))
    raw = extract(model, test, chat=False, progress=False)
    other_system = extract(model, test, system_prompt="You are a terse assistant.", progress=False)
    assert not torch.equal(raw.z, extract(model, test, progress=False).z)  # the settings change the features
    loaded = SAV.load(sav.save(tmp_path / "chat.sav"))
    for s in (sav, loaded):
        with pytest.raises(FeatureError, match="chat: fitted on True, these features have False"):
            s.predict(raw)
        with pytest.raises(FeatureError, match="system_prompt: fitted on None, these features have 'You are a terse"):
            s.predict(other_system)
    with pytest.raises(savlens.errors.ArgumentError, match=r"\['chat'\] define the features"):
        sav.extract(model, test, chat=False)
    with pytest.raises(StoreError, match="chat: saved True, expected False"):
        SAV.load(tmp_path / "chat.sav", expect=raw)
    with pytest.raises(FeatureError, match="fitted on features of 'tiny-qwen2_vl'"):
        sav.extract(tiny("qwen2_5_vl"), test)
