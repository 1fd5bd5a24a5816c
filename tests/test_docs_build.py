"""The docs site builds with `mkdocs build --strict`: every page in the nav, no broken link, API pages render."""

import os
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).parent.parent


def _nav_pages(nav: list) -> list[str]:  # type: ignore[type-arg]
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = set(_nav_pages(config["nav"]))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk - nav == set(), "add these pages to the nav in mkdocs.yml"
    tutorials = {f"tutorials/{p.stem}.md" for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.py")}
    assert nav - on_disk == tutorials  # the only generated pages


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (site / "index.html").is_file()
    page = (site / "api" / "sav" / "index.html").read_text()
    assert "fit_heads" in page and 'class="doc-section-title">Examples:' in page  # mkdocstrings rendered it
    tutorial = (site / "tutorials" / "06_causal_checks" / "index.html").read_text()
    assert "causal_validation" in tutorial
    for error_page in (ROOT / "docs" / "errors").glob("*.md"):
        assert (site / "errors" / error_page.stem / "index.html").is_file() or error_page.stem == "index"
