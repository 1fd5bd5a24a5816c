"""The docs site builds with `mkdocs build --strict` as Read the Docs builds it: every page in the nav, no broken
link, API pages render, and every link savlens writes to the published site (error messages, docs) exists in it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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


#: the runtime stack the docs build must not need: Read the Docs installs only the `docs` extra (.readthedocs.yaml)
NOT_INSTALLED_ON_READ_THE_DOCS = ("torch", "transformers", "nnsight", "numpy", "savlens")

_BUILD = f"""
import runpy, sys
for name in {NOT_INSTALLED_ON_READ_THE_DOCS!r}:
    sys.modules[name] = None  # importing it fails, as on Read the Docs
sys.argv = ["mkdocs", "build", "--strict", "--site-dir", sys.argv[1]]
runpy.run_module("mkdocs", run_name="__main__")
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once, offline, as Read the Docs builds it: mkdocs.yml, strict, without the runtime stack."""
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    page = (site / "api" / "sav" / "index.html").read_text()
    assert "fit_heads" in page and 'class="doc-section-title">Examples:' in page  # mkdocstrings rendered it
    tutorial = (site / "tutorials" / "06_causal_checks" / "index.html").read_text()
    assert "causal_validation" in tutorial
    for error_page in (ROOT / "docs" / "errors").glob("*.md"):
        assert (site / "errors" / error_page.stem / "index.html").is_file() or error_page.stem == "index"


SITE_LINK = re.compile(r"https?://savlens\.readthedocs\.io[^\s)\"'`<>\]]*")


def _error_classes() -> list[type]:
    import savlens  # noqa: F401  (every module that defines an error is imported)
    from savlens.errors import SavlensError

    found, todo = [], [SavlensError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("savlens"):
            found.append(cls)
        todo += cls.__subclasses__()
    return found


def _links_in_project() -> dict[str, set[str]]:
    """Every link to the docs site in the project's files and error messages -> where it was found."""
    files = [*(ROOT / "savlens").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "tutorials").glob("*.py")]
    files += [ROOT / "README.md", ROOT / "pyproject.toml"]
    links: dict[str, set[str]] = {}
    for f in files:
        for url in SITE_LINK.findall(f.read_text(encoding="utf-8")):
            links.setdefault(url.rstrip(".,;:"), set()).add(str(f.relative_to(ROOT)))
    for cls in _error_classes():
        message = str(cls("x"))
        (url,) = SITE_LINK.findall(message)
        links.setdefault(url, set()).add(f"the message of {cls.__name__}")
    return links


def test_every_link_to_the_docs_site_exists_in_the_built_site(site: Path) -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    site_url = config["site_url"]
    rtd = yaml.safe_load((ROOT / ".readthedocs.yaml").read_text())
    assert rtd["mkdocs"]["configuration"] == "mkdocs.yml"
    links = _links_in_project()
    assert len([u for u in links if "/errors/" in u]) >= len(_error_classes())  # the messages were read
    missing = []
    for url, where in sorted(links.items()):
        page, _, anchor = url.partition("#")
        if not page.startswith(site_url.rstrip("/")):
            missing.append(f"{url} (not under site_url {site_url}): {sorted(where)}")
            continue
        path = site / page[len(site_url.rstrip("/")) :].strip("/")
        target = path / "index.html" if path.is_dir() else path
        if not target.is_file():
            missing.append(f"{url}: {sorted(where)}")
        elif anchor and f'id="{anchor}"' not in target.read_text(encoding="utf-8"):
            missing.append(f"{url} (no anchor #{anchor}): {sorted(where)}")
    assert missing == [], "links to pages the docs site does not have:\n" + "\n".join(missing)
