"""mkdocs hook: render the jupytext percent-format tutorials (tutorials/NN_*.py) as docs pages.

Markdown cells (``# %% [markdown]``) become page text, code cells become Python code blocks, the jupytext header
is dropped. Pages are generated at build time as ``tutorials/<file stem>.md``; mkdocs.yml lists them in its nav.
"""

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
TUTORIAL = re.compile(r"^\d\d_.+\.py$")
REPO = "tutorials"


def tutorial_files() -> list[Path]:
    """Return the numbered tutorial scripts, in order."""
    return sorted(p for p in ROOT.iterdir() if TUTORIAL.match(p.name))


def to_markdown(source: str, name: str) -> str:
    """Convert one percent-format script to Markdown."""
    lines = source.splitlines()
    if lines and lines[0].startswith("# ---"):  # the jupytext header
        end = next(i for i in range(1, len(lines)) if lines[i].startswith("# ---"))
        lines = lines[end + 1 :]
    cells: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, body in cells:
        while body and not body[0].strip():
            body.pop(0)
        while body and not body[-1].strip():
            body.pop()
        if not body:
            continue
        if kind == "markdown":
            out.append("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body))
        else:
            out.append("```python\n" + "\n".join(body) + "\n```")
    note = (
        f'!!! note "Run it"\n    This page is `{REPO}/{name}`, a [jupytext](https://jupytext.readthedocs.io) '
        f"percent-format script: run it with `python {REPO}/{name}` or open it as a notebook. CI runs it "
        "top to bottom on the offline models; set `SAVLENS_MODEL` to a checkpoint to run it on a real model."
    )
    first, rest = out[0], out[1:]
    return "\n\n".join([first, note, *rest]) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """Add one generated page per tutorial."""
    from mkdocs.structure.files import File

    for path in tutorial_files():
        md = to_markdown(path.read_text(encoding="utf-8"), path.name)
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=md))
    return files
