"""Attention patterns under SDPA (captured inside the forward pass) versus the old switch to eager attention.

    python bench/patterns_cost.py              # the cases below, 1 thread; writes bench/patterns_cost.json
    python bench/patterns_cost.py --render     # only re-render docs/performance.md from the JSON

Each case is a tiny random model of one family (``savlens.testing.tiny``, SDPA) and one batch; the heads are
``L1H0`` and ``L2H3`` read from each row's last token, as ``savlens.causal.attention_shares`` does. Methods:

- ``sdpa_capture``: :func:`savlens.attention.attention_patterns` (the model stays on SDPA; q/k of the 2 heads
  at the last row only);
- ``eager_switch``: what ``attention_shares`` did before: ``model.hf.set_attn_implementation("eager")``, a trace
  saving ``blocks.{1,2}.attn.hook_pattern`` at the last token (eager materialises every head's full
  ``query x key`` weights, savlens slices the last row), then back to SDPA;
- ``sdpa_forward``: the same trace with no pattern at all (the floor: a forward pass up to layer 2).

Every (case, method) runs in its own child process with 1 torch thread: one warm-up call, then the median wall
time of ``--repeats`` calls, then one call whose peak memory is measured (``VmHWM`` of /proc/self/status after
resetting it through /proc/self/clear_refs, minus the resident memory just before the call: the memory that
call added at its peak). Both methods' patterns are compared in the parent (``max_abs_diff``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "patterns_cost.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- patterns-cost:begin -->", "<!-- patterns-cost:end -->"
HEADS = ("L1H0", "L2H3")
METHODS = ("sdpa_capture", "eager_switch", "sdpa_forward")
#: (case name, family, kind of batch, target tokens of the longest row)
CASES = (
    ("llama", "llama", "text", 0),
    ("qwen2_vl", "qwen2_vl", "mixed", 0),
    ("llava_onevision", "llava_onevision", "mixed", 0),
    ("gemma3_text", "gemma3_text", "text", 0),
    ("llama, 2048 tokens", "llama", "long", 2048),
)


# ---- the child: one (case, method) ------------------------------------------------------------------------------
def _batch(model: Any, kind: str, n_tokens: int) -> Any:
    import savlens
    from savlens.testing.coverage import mixed_examples

    if kind == "mixed":
        return savlens.Batch.from_examples(model, mixed_examples(model, model.model_id.removeprefix("tiny-")))
    if kind == "text":
        return savlens.Batch.from_examples(model, ["what is it ?", "is there a red circle left of the blue square ?"])
    words = ["the", "red", "circle", "is", "left", "of", "the", "blue", "square", "and"]
    long = " ".join(words[i % len(words)] for i in range(n_tokens - 16))
    return savlens.Batch.from_examples(model, [long, long[: len(long) * 3 // 4]], chat=False)


def _call(method: str, model: Any, batch: Any) -> Any:
    import savlens
    from savlens.tracing import attention_patterns

    if method == "sdpa_capture":
        return attention_patterns(model, batch, list(HEADS)).value[:, :, 0]
    if method == "sdpa_forward":
        with savlens.trace(model, batch, logits=None, stop_at_layer=2) as t:
            t.save("blocks.2.hook_resid_post")
        return None
    model.hf.set_attn_implementation("eager")
    try:
        with savlens.trace(model, batch, logits=None, stop_at_layer=2) as t:
            pats = t.save(["blocks.1.attn.hook_pattern", "blocks.2.attn.hook_pattern"], "last")
    finally:
        model.hf.set_attn_implementation("sdpa")
    return _heads_of(pats)


def _heads_of(pats: Any) -> Any:
    import torch

    from savlens.heads import HeadSet

    return torch.stack(
        [pats[f"blocks.{h.layer}.attn.hook_pattern"][:, h.head, 0].float() for h in HeadSet(list(HEADS))], dim=1
    )


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(case: str, method: str, repeats: int) -> dict[str, Any]:
    """Run one (case, method) in this process; return its timings, peak memory and patterns."""
    import gc

    import torch

    import savlens
    from savlens.testing.tiny import build_tiny

    torch.set_num_threads(1)
    _, family, kind, n_tokens = next(c for c in CASES if c[0] == case)
    tm = build_tiny(family, attn_implementation="sdpa")
    if kind == "long":  # the tiny recipes declare a 512-token context; default RoPE takes any position
        tm.model.config.max_position_embeddings = 2 * n_tokens
    model = savlens.wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
    batch = _batch(model, kind, n_tokens)
    out = _call(method, model, batch)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _call(method, model, batch)
        times.append(time.perf_counter() - t0)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident size
    before = _status("VmRSS")
    _call(method, model, batch)
    peak = max(0, _status("VmHWM") - before)  # the high-water mark is updated lazily: RSS can read above it
    return {
        "seq_len": batch.seq_len,
        "batch": batch.size,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "peak_added_bytes": peak,
        "patterns": None if out is None else out.tolist(),
        "attn_implementation_after": model.attn_implementation,
    }


def _run_child(case: str, method: str, repeats: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")  # fmt: skip
    res = subprocess.run(
        [sys.executable, __file__, "--child", case, method, "--repeats", str(repeats)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if res.returncode:
        raise RuntimeError(f"{case} / {method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- the parent --------------------------------------------------------------------------------------------------
def run(repeats: int, cases: list[str]) -> dict[str, Any]:
    import torch

    results = []
    t_start = time.time()
    load_before = os.getloadavg()[0]
    for case in cases:
        row: dict[str, Any] = {"case": case}
        for method in METHODS:
            row[method] = _run_child(case, method, repeats)
        a, b = (torch.tensor(row[m].pop("patterns")) for m in ("sdpa_capture", "eager_switch"))
        row["max_abs_diff"] = float((a - b).abs().max())
        row["sdpa_forward"].pop("patterns")
        results.append(row)
        print(f"{case}: {_line(row)}", flush=True)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python bench/patterns_cost.py --repeats {repeats}",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": 1, "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]},
        "heads": list(HEADS),
        "seconds": round(time.time() - t_start, 1),
        "results": results,
    }  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    c, e, f = (row[m] for m in METHODS)
    return (
        f"S={c['seq_len']} capture {c['seconds_median'] * 1e3:.1f} ms / {c['peak_added_bytes'] / 2**20:.1f} MiB, "
        f"eager {e['seconds_median'] * 1e3:.1f} ms / {e['peak_added_bytes'] / 2**20:.1f} MiB, "
        f"forward {f['seconds_median'] * 1e3:.1f} ms / {f['peak_added_bytes'] / 2**20:.1f} MiB, "
        f"diff {row['max_abs_diff']:.1e}"
    )


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Run: `{data['command']}`, {data['date']}, {data['seconds']} s; {m['cpu']}, {m['cores']} cores, "
        f"1 torch thread, load average {m['load_average_1min'][0]} at the start and {m['load_average_1min'][1]} at "
        "the end (the machine was shared: times are medians, ratios within a row are the stable part).",
        "",
        "| case | batch x tokens | SDPA capture | eager switch (old) | SDPA forward, no pattern | capture vs eager |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["results"]:
        c, e, f = (row[x] for x in METHODS)

        def cell(r: dict[str, Any]) -> str:
            return f"{r['seconds_median'] * 1e3:.1f} ms, {max(0, r['peak_added_bytes']) / 2**20:.1f} MiB"

        lines.append(
            f"| {row['case']} | {c['batch']} x {c['seq_len']} | {cell(c)} | {cell(e)} | {cell(f)} | "
            f"max diff {row['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def write_doc(data: dict[str, Any]) -> None:
    text = DOC.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} marker")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(data)}\n{END}{tail}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", nargs=2)
        ap.add_argument("--repeats", type=int, default=5)
        args = ap.parse_args()
        print(json.dumps(child(args.child[0], args.child[1], args.repeats)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", nargs="*", default=[c[0] for c in CASES])
    ap.add_argument("--render", action="store_true", help="only re-render docs/performance.md from the JSON")
    args = ap.parse_args()
    if args.render:
        write_doc(json.loads(OUT.read_text()))
        return
    data = run(args.repeats, args.cases)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    write_doc(data)


if __name__ == "__main__":
    main()
