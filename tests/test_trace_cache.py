"""The fixed cost of a trace: cached names / plans and the plain-hooks executor give the values of the uncached
nnsight path bit for bit, and a change of names, positions or model is never served from a stale cache."""

import gc

import pytest
import torch
from conftest import mixed_examples, tiny

import savlens
from savlens import engine, tracing
from savlens.testing.tiny import ALL_FAMILIES, build_tiny


def _batch(model: savlens.Model) -> savlens.Batch:
    return savlens.Batch.from_examples(model, mixed_examples(model))  # type: ignore[arg-type]


def _names(model: savlens.Model) -> list[str]:
    """Every module input / output the families have, but patterns (eager only) and vision hooks (saved apart)."""
    return [n for n in model.hook_names() if "hook_pattern" not in n and not n.startswith("vision_")]


def _run(model: savlens.Model, batch: savlens.Batch, saves: list[tuple[object, object]], **kw: object) -> dict:
    with savlens.trace(model, batch, **kw) as t:  # type: ignore[arg-type]
        handles = [t.save(names, positions) for names, positions in saves]  # type: ignore[arg-type]
    out = {f"{i}:{n}": h[n] for i, h in enumerate(handles) for n in h.names}
    if kw.get("logits", "last") is not None and "stop_at_layer" not in kw:
        out["logits"] = t.logits
    return out


def _uncached_nnsight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "PLAIN_HOOKS", False)
    monkeypatch.setattr(engine, "_cached_plan", lambda model, requests: engine._plan(model, requests))
    monkeypatch.setattr(engine, "_module", lambda model, path: model.module(path))
    monkeypatch.setattr(tracing, "resolve_cached", _resolve_uncached)


def _resolve_uncached(model: savlens.Model, names: object) -> list[str]:
    return engine.resolve(names, model.n_layers, model.multimodal, model.resolved.kinds)  # type: ignore[arg-type]


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_cached_plain_hooks_equal_uncached_nnsight(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(family)
    batch = _batch(model)
    saves: list[tuple[object, object]] = [(_names(model), "all"), ("blocks.*.attn.hook_z", None)]
    if model.multimodal:
        saves.append(("vision_*.hook_out", None))
    first = _run(model, batch, saves)
    cached = _run(model, batch, saves)  # names and plan from the cache
    with monkeypatch.context() as m:
        _uncached_nnsight(m)
        reference = _run(model, batch, saves)
    _equal(first, reference)
    _equal(cached, reference)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_stop_at_layer_and_edits_with_plain_hooks_equal_nnsight(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(family)
    batch = _batch(model)

    def edited() -> dict:
        with savlens.trace(model, batch) as t:
            t.ablate(["L0H1", "L1H0"])
            z = t.save("blocks.*.attn.hook_z", "all")
            resid = t.save("blocks.1.hook_resid_post", [0, -1])
        return {"z": z.value, "resid": resid.value, "logits": t.logits}

    stopped = _run(model, batch, [("blocks.{0-1}.attn.hook_z", None)], logits=None, stop_at_layer=1)
    got = edited()
    with monkeypatch.context() as m:
        _uncached_nnsight(m)
        _equal(stopped, _run(model, batch, [("blocks.{0-1}.attn.hook_z", None)], logits=None, stop_at_layer=1))
        _equal(got, edited())
    assert not got["z"][:, :, 0, 1].any() and got["z"][:, :, 0, 0].any()  # the ablated head reads zero, not others


def test_a_change_of_names_positions_or_model_is_not_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    a = tiny("llama")
    b = tiny("llama", seed=1)  # same family and module paths, other weights
    c = tiny("qwen2")  # other module paths
    runs = [
        (a, [("blocks.0.attn.hook_z", None)]),
        (a, [("blocks.1.attn.hook_z", None)]),  # other names
        (a, [("blocks.1.attn.hook_z", [0])]),  # other positions
        (a, [("blocks.1.attn.hook_z", None), ("blocks.0.hook_resid_post", "all")]),  # more requests
        (b, [("blocks.1.attn.hook_z", [0])]),  # other model, same names
        (c, [("blocks.1.attn.hook_z", [0])]),
        (a, [("blocks.1.attn.hook_z", [0])]),  # back to the first model
    ]
    got = [_run(model, _batch(model), saves) for model, saves in runs]
    with monkeypatch.context() as m:
        _uncached_nnsight(m)
        want = [_run(model, _batch(model), saves) for model, saves in runs]
    for g, w in zip(got, want):
        _equal(g, w)
    assert not torch.equal(got[0]["0:blocks.0.attn.hook_z"], got[1]["0:blocks.1.attn.hook_z"])
    assert not torch.equal(got[2]["0:blocks.1.attn.hook_z"], got[4]["0:blocks.1.attn.hook_z"])


def test_the_cache_follows_each_model_and_its_resolved_spec() -> None:
    tm = build_tiny("llama", seed=2)
    model = savlens.wrap(tm.model, tm.processor, model_id="tiny-llama")
    batch = _batch(model)
    before = _run(model, batch, [("blocks.2.attn.hook_z", None)])
    assert engine.CACHES[model]["resolved"] is model.resolved
    model.resolved = savlens.wrap(tm.model, tm.processor, model_id="tiny-llama").resolved  # a re-resolved spec
    _equal(before, _run(model, batch, [("blocks.2.attn.hook_z", None)]))
    assert engine.CACHES[model]["resolved"] is model.resolved
    n = len(engine.CACHES)
    del model
    gc.collect()
    assert len(engine.CACHES) == n - 1  # weak keys: a dropped model leaves no cache behind
