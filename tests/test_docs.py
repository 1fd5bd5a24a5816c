"""Docs that are generated or promised: the hook table is current, every dim word a save carries is explained, every
error class has a page, and the project points at nothing outside itself."""

import re
from pathlib import Path

import savlens
import savlens.errors as E
from savlens.names import DIM_GLOSSARY, HOOKS, dims_markdown, hooks_markdown

DOCS = Path(__file__).parent.parent / "docs"


def test_hook_table_is_generated_from_the_registry() -> None:
    assert hooks_markdown() in (DOCS / "hooks.md").read_text()


def test_dim_table_is_generated_and_names_every_dim_a_hook_uses() -> None:
    assert dims_markdown() in (DOCS / "hooks.md").read_text()
    used = {d for h in HOOKS for d in h.dims}
    assert used <= set(DIM_GLOSSARY), sorted(used - set(DIM_GLOSSARY))


def test_every_error_class_has_a_page_linked_from_its_message() -> None:
    index = (DOCS / "errors" / "index.md").read_text()
    for name in E.__all__:
        cls = getattr(E, name)
        page = DOCS / "errors" / f"{cls.page}.md"
        assert page.is_file(), page
        assert page.read_text().startswith(f"# {name}")
        assert f"({cls.page}.md)" in index
        assert f"/errors/{cls.page}/" in str(cls("x"))


def test_model_coverage_table_is_rendered_from_its_json_and_still_true() -> None:
    import json

    from savlens.testing.coverage import (
        BF16_EAGER_NOT_EXACT,
        JSON_PATH,
        SDPA_NOT_INVARIANT,
        coverage_markdown,
        facts,
    )
    from savlens.testing.tiny import ALL_FAMILIES, build_tiny

    data = json.loads(JSON_PATH.read_text())
    assert coverage_markdown(data) in (DOCS / "models.md").read_text()
    assert [r["family"] for r in data["families"]] == list(ALL_FAMILIES)
    for r in data["families"]:
        tm = build_tiny(r["family"])
        now = facts(savlens.wrap(tm.model, tm.processor))
        assert now == {k: r[k] for k in now}, r["family"]
        assert r["fp32_sdpa"] <= 2e-5 or r["family"] in SDPA_NOT_INVARIANT, r["family"]
        assert r["bf16_eager"] <= BF16_EAGER_NOT_EXACT.get(r["family"], (0.0,))[0], r["family"]


def test_the_project_refers_to_nothing_outside_itself() -> None:
    """No file of the repository points at notes a user of it does not have (the working notes beside it)."""
    import subprocess

    root = DOCS.parent
    outside = ["DESIGN" + ".md", "TINY_VLMS" + ".md", "VLM_FAMILIES" + ".md", "../" + "shared", "/work/" + "shared"]
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if listed.returncode == 0:
        files = [root / f for f in listed.stdout.splitlines()]
    else:  # not a git checkout (an unpacked sdist): the folders that ship
        folders = ("savlens", "docs", "tests", "tutorials", "bench", "experiments")
        files = [p for d in folders for p in (root / d).rglob("*")]
        files += [root / "README.md", root / "pyproject.toml", root / "mkdocs.yml"]
    found = []
    for f in files:
        if not f.is_file() or f.suffix in (".png", ".safetensors", ".gz", ".jpg", ".ico"):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        found += [f"{f.relative_to(root)}: {name}" for name in outside if name in text]
    assert found == [], "move what users need into docs/ and point there instead:\n" + "\n".join(found)


def test_every_dim_word_a_saved_tensor_can_carry_is_explained_in_the_hooks_page() -> None:
    from savlens.models.registry import registered
    from savlens.names import HOOKS

    text = (DOCS / "hooks.md").read_text()
    table = text[text.index("## Dim words") :].split("\n## ")[0]
    explained = set(re.findall(r"^\| `([a-z_]+)` \| .+ \|$", table, flags=re.M))
    used = {d for h in HOOKS for d in h.dims} | {"layer"}  # `layer`: the axis of a glob's saves (t.save("blocks.*..."))
    used |= {d for spec in registered() for d in (*spec.vision_dims, *spec.projector_dims)}
    assert used - explained == set(), "add these dims to the 'Dim words' table of docs/hooks.md"
