"""The fixed cost of a trace: savlens.trace against a bare forward and plain torch hooks, on the tiny models.

Run: ``python bench/trace_overhead.py`` (writes ``bench/trace_overhead.json`` and the table in
docs/performance.md; ``--render`` re-renders the table from the JSON). One torch thread. Contenders, timed
interleaved in the same rounds (:func:`bench.harness.measure`: every round runs each once, in a rotated order):

- ``bare``: ``model.hf(**inputs)``, the inputs savlens builds (``logits_to_keep=1``, no KV cache);
- ``hooks``: the same forward with a forward pre-hook on every layer's output projection that keeps its input at
  each row's last token (what ``t.save("blocks.*.attn.hook_z")`` saves), registered and removed per call;
- ``trace``: ``with savlens.trace(model, batch) as t: t.save("blocks.*.attn.hook_z")`` (logits at the last
  token), as users call it: names and plan cached, plain torch hooks;
- ``trace_nnsight``: the same trace through nnsight with no cache (``engine.PLAIN_HOOKS = False`` and a fresh
  plan), which is what every trace cost before the cache and the plain-hooks path.

*added* is the median CPU time of a contender minus the median CPU time of ``bare`` in the same rounds (with one
torch thread the CPU time is the work done whatever else runs on the machine); ratios are medians of the per-round
ratios. Nothing here is asserted: timings go to the JSON and the docs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import savlens  # noqa: E402
from bench.harness import cpu_name, loadavg, measure, paired_ratio  # noqa: E402
from savlens import engine  # noqa: E402
from savlens.testing.tiny import FAMILIES, build_tiny  # noqa: E402

OUT = ROOT / "bench" / "trace_overhead.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- trace-overhead:begin -->", "<!-- trace-overhead:end -->"
CONTENDERS = ("bare", "hooks", "trace", "trace_nnsight")


def contenders(model: savlens.Model, batch: savlens.Batch) -> dict[str, Any]:
    """The four calls timed for one model and batch (see the module docstring)."""
    inputs = engine.model_inputs(model, batch, "last")
    last = batch.last_index
    rows = torch.arange(last.shape[0])
    modules = [model.module(model.resolved.block_path(layer, "o_proj")) for layer in range(model.n_layers)]

    def bare() -> Any:
        with torch.no_grad():
            return model.hf(**inputs).logits

    def hooks() -> Any:
        kept: list[torch.Tensor] = []
        handles = [m.register_forward_pre_hook(lambda m, a: kept.append(a[0][rows, last])) for m in modules]
        try:
            with torch.no_grad():
                logits = model.hf(**inputs).logits
        finally:
            for h in handles:
                h.remove()
        return kept, logits

    def trace() -> Any:
        with savlens.trace(model, batch) as t:
            z = t.save("blocks.*.attn.hook_z")
        return z.value, t.logits

    def trace_nnsight() -> Any:
        old = engine.PLAIN_HOOKS
        engine.PLAIN_HOOKS = False
        engine.CACHES.pop(model, None)  # resolve and plan again, as before the cache
        try:
            return trace()
        finally:
            engine.PLAIN_HOOKS = old

    return {"bare": bare, "hooks": hooks, "trace": trace, "trace_nnsight": trace_nnsight}


def run(families: tuple[str, ...], rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    results = []
    for family in families:
        tm = build_tiny(family, seed=0)
        model = savlens.wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
        examples = [savlens.Example(text="Is the sky blue on a clear day?"), savlens.Example(text="Name a colour.")]
        batch = savlens.Batch.from_examples(model, examples)
        fns = contenders(model, batch)
        z, _ = fns["trace"]()
        kept, _ = fns["hooks"]()
        same = torch.equal(z[:, 0].flatten(2), torch.stack(kept, dim=1))  # the hooks keep what the trace saves
        load = loadavg()
        res = measure(fns, rounds, warmup=5)
        base = res["bare"]["cpu"]["median"]
        entry: dict[str, Any] = {
            "family": family,
            "n_layers": model.n_layers,
            "seq": int(batch.input_ids.shape[1]),
            "batch": batch.size,
            "same_values": same,
            "load_avg": load,
            "rounds": rounds,
        }
        for name in CONTENDERS:
            r = res[name]
            entry[name] = {
                "cpu_ms": {k: 1000 * r["cpu"][k] for k in ("min", "median", "p25", "p75")},
                "wall_ms": {k: 1000 * r["wall"][k] for k in ("min", "median")},
                "added_cpu_ms": 1000 * (r["cpu"]["median"] - base),
                "ratio_to_bare_cpu": paired_ratio(res, name, "bare")["cpu"]["median_of_paired"]
                if name != "bare"
                else 1.0,
            }
        entry["trace_vs_hooks_added_cpu_ms"] = 1000 * (res["trace"]["cpu"]["median"] - res["hooks"]["cpu"]["median"])
        results.append(entry)
        print(
            f"{family}: bare {entry['bare']['cpu_ms']['median']:.3f} ms, added: hooks "
            f"{entry['hooks']['added_cpu_ms']:.3f}, trace {entry['trace']['added_cpu_ms']:.3f}, nnsight trace "
            f"{entry['trace_nnsight']['added_cpu_ms']:.3f} ms",
            flush=True,
        )
    return {
        "schema": 1,
        "command": f"python bench/trace_overhead.py --rounds {rounds} --families {' '.join(families)}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
    }


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Measured {data['date']} on {m['cpu']} ({m['cores']} cores shared with other engineers' jobs), torch "
        f"{m['torch']}, {m['torch_threads']} torch thread, with `{data['command']}`. CPU time per call (median of "
        "the rounds; min in brackets); *added* is the median minus the bare forward's median from the same rounds; "
        "load is the 1-minute load average when each model started.",
        "",
        "| model | layers x seq x batch | load | bare forward | plain hooks: added | savlens.trace: added "
        "(x bare) | trace over plain hooks | nnsight trace, uncached: added (x bare) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        b, h, t, n = r["bare"], r["hooks"], r["trace"], r["trace_nnsight"]
        lines.append(
            f"| tiny-{r['family']} | {r['n_layers']} x {r['seq']} x {r['batch']} | {r['load_avg'][0]:.1f} | "
            f"{b['cpu_ms']['median']:.3f} ms ({b['cpu_ms']['min']:.3f}) | {1000 * h['added_cpu_ms']:.0f} us | "
            f"{1000 * t['added_cpu_ms']:.0f} us ({t['ratio_to_bare_cpu']:.2f}x) | "
            f"{1000 * r['trace_vs_hooks_added_cpu_ms']:.0f} us | "
            f"{1000 * n['added_cpu_ms']:.0f} us ({n['ratio_to_bare_cpu']:.2f}x) |"
        )
    return "\n".join(lines)


def write_doc(data: dict[str, Any]) -> None:
    text = DOC.read_text()
    block = f"{BEGIN}\n{render(data)}\n{END}"
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + block + rest.split(END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--render", action="store_true", help="re-render docs/performance.md from the JSON")
    args = parser.parse_args()
    if args.render:
        write_doc(json.loads(OUT.read_text()))
        return
    data = run(tuple(args.families), args.rounds)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    write_doc(data)


if __name__ == "__main__":
    main()
