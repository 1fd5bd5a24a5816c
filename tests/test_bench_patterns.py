"""bench/patterns_cost.py: each method runs, the capture and the eager switch agree, the table renders; no timing
is asserted."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import patterns_cost  # noqa: E402


def test_methods_agree_and_render() -> None:
    row: dict = {"case": "llama"}
    for method in patterns_cost.METHODS:
        row[method] = patterns_cost.child("llama", method, repeats=1)
        assert row[method]["attn_implementation_after"] == "sdpa"  # the eager switch is undone
    a, b = (torch.tensor(row[m].pop("patterns")) for m in ("sdpa_capture", "eager_switch"))
    assert a.shape == (2, 2, 16) and row["sdpa_forward"].pop("patterns") is None
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2))
    row["max_abs_diff"] = float((a - b).abs().max())
    data = {"date": "d", "command": "c", "seconds": 1.0, "heads": ["L1H0", "L2H3"],
            "machine": {"cpu": "x", "cores": 2, "torch_threads": 1, "load_average_1min": [1.0, 2.0]},
            "results": [row]}  # fmt: skip
    table = patterns_cost.render(data)
    assert "| llama | 2 x 16 |" in table and "max diff" in table
