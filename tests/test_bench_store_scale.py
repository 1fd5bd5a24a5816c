"""bench/store_scale.py: its phases run on a small store and its table renders; no timing is asserted."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import store_scale  # noqa: E402

pytestmark = pytest.mark.slow  # a benchmark, run in full


def test_phases_run_and_render(tmp_path: Path) -> None:
    store, n = str(tmp_path / "s"), 70
    entry = {"n": n, "feature_bytes": n * 28 * 28 * 128 * 2, "load": 0.0}
    for phase in ("write", "open", "loo", "fit", "loo_mem"):
        entry[phase] = store_scale.child(phase, store, n, 2**20)  # a 1 MiB bound: many blocks
    assert entry["write"]["store_bytes"] > entry["feature_bytes"] and entry["open"]["n_examples"] == n
    assert entry["loo"]["best"] == entry["loo_mem"]["best"]  # streamed and in memory agree on the best heads
    assert "L5H3" in entry["loo"]["best"] and "L5H3" in entry["fit"]["best"]  # the planted head
    data = {"date": "d", "command": "c", "machine": {"cpu": "x", "cores": 2, "memory_gib": 1}, "grid": [28, 28, 128],
            "dtype": "float16", "shard_examples": 64, "memory_bound": 2**20, "results": [entry]}  # fmt: skip
    table = store_scale.render(data)
    assert "| 70 |" in table and "x)" in table  # the in-memory ratio is shown
