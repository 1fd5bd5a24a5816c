"""bench/gpu_extraction.py (prepared for a GPU; no number exists yet) runs on the CPU with the tiny config and
reports the figures the issue asks for; its extraction reads the same values as the reference-style loop."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu_extraction  # noqa: E402


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    data = gpu_extraction.main(
        ["--config", "tiny", "--batch-sizes", "1", "3", "--examples", "3", "--repeats", "1", "--device", "cpu",
         "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == data and data["device"] == "cpu" and data["dtype"] == "float32"
    assert set(data["results"]) == {"llava_onevision", "qwen2_vl"}
    printed = capsys.readouterr().out
    for family, rows in data["results"].items():
        assert [r["batch_size"] for r in rows] == [1, 3]
        for r in rows:
            assert r["max_abs_diff"] < 1e-4  # savlens and the reference loop read the same heads
            assert r["ratio"] == pytest.approx(r["bare_ex_per_s"] / r["extract_ex_per_s"])
            assert r["extract_ex_per_s"] > 0 and r["reference_ex_per_s"] > 0 and r["peak_mem_gib"] is None
            assert f"{family} bs={r['batch_size']}: extract {r['extract_ex_per_s']:.1f} ex/s" in printed
