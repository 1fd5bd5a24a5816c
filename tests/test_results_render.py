"""The tiny-VLM sections of the docs are their committed JSONs rendered by the experiments' own code, byte for
byte (fast: no model). Re-render with ``--render-only`` of experiments/sav_tiny_vlm.py, transfer_tiny_vlm.py and
demo_docs.py."""

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent
EXPERIMENTS = ROOT / "experiments"
RESULTS_PAGE = ROOT / "docs" / "results.md"


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def _json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text(encoding="utf-8"))


def test_sav_tables_are_the_committed_json_rendered() -> None:
    sav = _script("sav_tiny_vlm")
    common = _script("_tiny_vlm_common")
    page = RESULTS_PAGE.read_text(encoding="utf-8")
    main = _json(sav.MAIN_JSON)
    assert common.section_of(page, *sav.SAV_MARKERS) == sav.markdown_sav(main)
    balanced = _json(sav.BALANCED_JSON)
    assert common.section_of(page, *sav.BALANCED_MARKERS) == sav.markdown_balanced(balanced, main)


def test_transfer_section_is_the_committed_json_rendered() -> None:
    transfer = _script("transfer_tiny_vlm")
    common = _script("_tiny_vlm_common")
    page = RESULTS_PAGE.read_text(encoding="utf-8")
    results = _json(EXPERIMENTS / "results" / "tiny_vlm_transfer.json")
    assert common.section_of(page, *transfer.MARKERS) == transfer.markdown_section(results)


def test_demo_blocks_are_the_committed_json_rendered() -> None:
    demo = _script("demo_docs")
    assert demo.check(_json(demo.JSON_PATH)) == []


@pytest.mark.parametrize("name", ["tiny_vlm_sav.json", "tiny_vlm_balanced_sav.json", "tiny_vlm_transfer.json"])
def test_committed_results_have_several_seeds_and_paired_tests(name: str) -> None:
    r = _json(EXPERIMENTS / "results" / name)
    seeds = r.get("seeds_run", r.get("seeds"))
    assert isinstance(seeds, list) and len(seeds) >= 3
    per_seed = r["per_seed"] if "per_seed" in r else r["seeds"]
    for seed in map(str, seeds):
        blocks = per_seed[seed].values()
        tests = [p for b in blocks if isinstance(b, dict) and "paired" in b for p in b["paired"].values()]
        assert tests, f"{name}: no paired test for seed {seed}"
        for p in tests:
            lo, hi = p["ci95"]
            assert lo <= p["difference"] <= hi and 0 <= p["mcnemar_p"] <= 1


def test_no_tiny_vlm_number_is_left_from_the_question_level_splits() -> None:
    for page in (RESULTS_PAGE, ROOT / "README.md", ROOT / "docs" / "tiny-vlm.md"):
        text = page.read_text(encoding="utf-8")
        assert "not rerun" not in text and "(to be rendered)" not in text, page.name
