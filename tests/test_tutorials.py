"""The tutorials run top to bottom (as CI runs them), are jupytext percent scripts, and render as docs pages."""

import importlib.util
import runpy
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).parent.parent / "tutorials"
FILES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
TOPICS = ["trace_and_cache", "head_features_and_scores", "sav_classification", "transfer", "criterion", "causal"]


def test_the_numbered_tutorials_are_all_here() -> None:
    assert [p.name[:2] for p in FILES] == [f"{i:02d}" for i in range(1, 7)]
    for path, topic in zip(FILES, TOPICS):
        assert topic in path.name


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature-store folder for the run: tutorial 2 extracts, 3-6 reopen its store."""
    return tmp_path_factory.mktemp("tutorial-cache")


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_tutorial_runs_top_to_bottom(path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAVLENS_MODEL", raising=False)  # the offline models; a real checkpoint is opt-in
    monkeypatch.setenv("SAVLENS_TUTORIAL_CACHE", str(shared_cache))
    monkeypatch.chdir(shared_cache)
    namespace = runpy.run_path(str(path), run_name="__main__")
    assert "model" in namespace


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_tutorial_is_a_jupytext_percent_script(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:") and "format_name: percent" in text
    cells = [line for line in text.splitlines() if line.startswith("# %%")]
    assert cells[0] == "# %% [markdown]" and len(cells) >= 6
    title = text.split("# %% [markdown]\n", 1)[1].splitlines()[0]
    assert title.startswith(f"# # {int(path.name[:2])}. "), title
    assert "SAVLENS_MODEL" in text  # each runs on a real checkpoint when asked


def test_docs_hook_renders_cells() -> None:
    spec = importlib.util.spec_from_file_location("docs_hook", TUTORIALS / "_docs_hook.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    md = hook.to_markdown(FILES[0].read_text(), FILES[0].name)
    assert md.startswith("# 1. Trace a model and read its cache\n")
    assert "jupytext" not in md.split("\n")[0] and "```python\nimport os" in md
    assert '!!! note "Run it"' in md and "# %%" not in md
    assert [p.name for p in hook.tutorial_files()] == [p.name for p in FILES]


def test_tutorials_follow_the_environment_variable() -> None:
    """The same scripts load SAVLENS_MODEL when it is set (checked by reading, not by downloading)."""
    for path in FILES[1:]:
        text = path.read_text()
        assert 'os.environ.get("SAVLENS_MODEL", "smollm2-135m")' in text, path.name
        assert "savlens.load(MODEL" in text
