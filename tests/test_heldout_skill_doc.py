"""The held-out-skill section of docs/results.md is the committed JSON rendered by the experiment's own code,
byte for byte (fast: no model; experiments/heldout_skill_tiny_vlm.py --render-only rewrites it)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "experiments" / "heldout_skill_tiny_vlm.py"


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("heldout_skill_tiny_vlm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_is_the_committed_json_rendered() -> None:
    exp = _script()
    results = json.loads(exp.JSON_PATH.read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert exp.section_of(page) == exp.markdown(results)


def test_committed_results_cover_the_issue() -> None:
    results = json.loads(_script().JSON_PATH.read_text(encoding="utf-8"))
    assert len(results["seeds"]) >= 5
    for model in ("heldout", "trained"):
        for task in ("color", "shape"):
            block = results["results"][model][task]
            assert len(block["seeds"]) == len(results["seeds"])
            for seed in block["seeds"].values():
                assert {"sav", "zero_shot_greedy", "random_projector", "image_only", "shuffled", "chance"} <= set(
                    seed["rows"]
                )
                lo, hi = seed["paired"]["zero_shot_greedy"]["ci95"]
                assert lo <= seed["paired"]["zero_shot_greedy"]["difference"] <= hi
