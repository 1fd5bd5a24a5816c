"""The benchmark suite runs (``bench/run.py --quick``) and writes well-formed results; no timing is asserted."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # the whole benchmark suite in quick mode (minutes)

ROOT = Path(__file__).resolve().parent.parent


def _medians(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every ``median`` value in the results, with where it sits."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "median":
                found.append((path, value))
            else:
                found += _medians(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += _medians(value, f"{path}[{i}]")
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_quick_run_writes_json_markdown_and_plots(quick_run: Path) -> None:
    res = json.loads((quick_run / "results.json").read_text())
    assert {"schema", "machine", "models", "scoring", "targets", "gpu_7b", "duration_s"} <= set(res)
    assert res["quick"] is True
    assert {"cpu", "n_cpus", "versions", "load_avg_start", "load_avg_end", "torch_threads"} <= set(res["machine"])
    case = res["models"]["tiny-qwen2_vl"]
    for key in ("info", "batch", "capture", "threads", "fit", "predict", "early_stop", "seq_scaling", "n_scaling"):
        assert key in case, key
    assert {
        "hf_forward",
        "savlens_trace_last",
        "savlens_extract",
        "nnsight_trace_full_seq",
        "reference_hooks_bs1",
    } <= set(case["capture"]["timings"])
    assert {"reference_fit", "savlens_fit"} <= set(case["fit"]["timings"])
    assert {"savlens_predict", "hf_forward_full"} <= set(case["predict"]["timings"])
    assert {"in_sample", "loo", "kfold"} <= set(res["scoring"]["threads"]["1"])
    mem = case["memory"]
    assert mem["feature_bytes_per_example"] == mem["expected_layers_x_heads_x_d_head_x_4"]
    assert len(case["seq_scaling"]["points"]) >= 2 and len(case["n_scaling"]["points"]) >= 2
    medians = _medians(res)
    assert len(medians) > 20
    for where, value in medians:
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (where, value)
    assert all(t["met"] in (True, False, None) for t in res["targets"])

    doc = (quick_run / "performance.md").read_text()
    assert "BEGIN GENERATED" in doc and "| target | model | measured |" in doc
    for name in ("perf-seq-scaling.png", "perf-examples-scaling.png", "perf-early-stop.png"):
        png = quick_run / "img" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"img/{name}" in doc
