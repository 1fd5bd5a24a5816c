"""Feature stores past memory: write, reopen, score (LOO) and fit SAV on N synthetic examples; a curve over N.

    python bench/store_scale.py                         # N = 1k, 2k, 5k, 10k (minutes on this machine)
    python bench/store_scale.py --n 1000 100000         # up to the paper's scale: ~20 GB on disk at 100k
    python bench/store_scale.py --render                # only re-render docs/performance.md from the JSON

Each example is one feature row of a 28 x 28 x 128 grid (layer x head_index x d_head, LLaVA-OneVision-7B /
Qwen2-VL-7B sized) in float16 (196 KiB), from a cheap synthetic generator with class signal on a few heads.
Every phase runs in a fresh child process, so its peak memory is its own: ``write`` (FeatureStore.append in
shards of 64 examples), ``open`` (open_shards: headers and index only), ``loo`` (centroid_accuracy, mode "loo",
streamed), ``fit`` (SAV(k=20).fit, LOO-scored, streamed) and, while the features fit in memory, ``loo_mem``
(open_store + centroid_accuracy in memory, the throughput reference). Peak memory is sampled every 20 ms from
/proc/self/status: ``RssAnon`` (the process's own memory, what the bound governs) and ``RssFile`` (page cache of
the memory-mapped shards, which the kernel reclaims), with ``read_bytes`` from /proc/self/io (bytes that came
from the disk rather than the page cache). The store is deleted after each N. Results go to
``bench/store_scale.json`` and the generated region of docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_name  # noqa: E402

OUT = ROOT / "bench" / "store_scale.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- store-scale:begin -->", "<!-- store-scale:end -->"
GRID = (28, 28, 128)
SHARD = 64
N_CLASSES = 2


# ---- the child: one phase ----------------------------------------------------------------------------------------
class _Sampler:
    """Peak RssAnon / RssFile of this process, sampled every 20 ms on a thread."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            time.sleep(0.02)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def _io() -> dict[str, int]:
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def _features(start: int, n: int, torch: Any) -> tuple[Any, list[int]]:
    """Rows ``start:start+n``: mixtures of a fixed pool of random rows, class signal on heads (5, 3) and (20, 7)."""
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(61, *GRID, generator=g)
    idx = torch.arange(start, start + n)
    labels = (idx * 2654435761 % 1000003 % N_CLASSES).tolist()
    a, b = pool[idx % 61], pool[(idx * 7 + 3) % 61]
    w = ((idx * 31 % 97).float() / 97)[:, None, None, None]
    z = a * (0.5 + w) + b * (1.5 - w)
    y = torch.tensor(labels, dtype=torch.float32)[:, None]
    z[:, 5, 3, :8] += 1.2 * (2 * y - 1)
    z[:, 20, 7, 8:16] += 0.6 * (2 * y - 1)
    return z.half(), labels


def child(phase: str, store: str, n: int, bound: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    import savlens
    from savlens.outofcore import open_shards, set_memory_bound
    from savlens.store import FeatureStore, open_store

    set_memory_bound(bound)
    header = {"model_id": "synthetic-7b-grid", "fingerprint": None, "hook": "blocks.*.attn.hook_z",
              "positions": "last", "prompt_template": None, "chat": True, "system_prompt": None,
              "layers": list(range(GRID[0])), "dtype": "float16", "logits": None, "logit_tokens": None}  # fmt: skip
    out: dict[str, Any] = {}
    io0 = _io()
    with _Sampler() as mem:
        t0 = time.perf_counter()
        if phase == "write":
            gen = 0.0
            with FeatureStore(store, {**header, "order": None}) as fs:
                for s in range(0, n, SHARD):
                    g0 = time.perf_counter()
                    z, labels = _features(s, min(SHARD, n - s), torch)
                    gen += time.perf_counter() - g0
                    fs.append(z, [f"x{i}" for i in range(s, s + z.shape[0])], labels)
                out["index_bytes"] = fs.index_bytes_written
            out["generate_s"] = gen
            out["store_bytes"] = sum(p.stat().st_size for p in Path(store).iterdir())
        elif phase == "open":
            feats = open_shards(store)
            out["n_examples"] = feats.n_examples
        elif phase == "loo":
            scores = savlens.scoring.centroid_accuracy(open_shards(store), mode="loo")
            out["best"] = str(scores.top_k(2))
        elif phase == "loo_mem":
            t_load = time.perf_counter()
            feats = open_store(store, verify=False)
            out["load_s"] = time.perf_counter() - t_load
            t_score = time.perf_counter()
            with savlens.outofcore.bounded_memory(2**40):  # one block: the in-memory path
                scores = savlens.scoring.centroid_accuracy(feats, mode="loo")
            out["score_s"] = time.perf_counter() - t_score
            out["best"] = str(scores.top_k(2))
        elif phase == "fit":
            sav = savlens.SAV(k=20).fit(open_shards(store))
            out["best"] = str(sav.heads_[:2])
        else:
            raise SystemExit(f"unknown phase {phase}")
        out["seconds"] = time.perf_counter() - t0
    io1 = _io()
    out["peak_rss_anon"] = mem.peak["RssAnon"]
    out["peak_rss_file"] = mem.peak["RssFile"]
    out["read_bytes_disk"] = io1["read_bytes"] - io0["read_bytes"]
    out["write_bytes_disk"] = io1["write_bytes"] - io0["write_bytes"]
    return out


# ---- the parent: a curve over N ----------------------------------------------------------------------------------
def _run_phase(phase: str, store: Path, n: int, bound: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", phase, str(store), str(n), str(bound)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"phase {phase} at N={n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(ns: list[int], bound: int, workdir: Path) -> dict[str, Any]:
    row_bytes = GRID[0] * GRID[1] * GRID[2] * 2
    results = []
    for n in ns:
        store = Path(tempfile.mkdtemp(prefix="savlens-store-", dir=workdir)) / "store"
        try:
            entry: dict[str, Any] = {"n": n, "feature_bytes": n * row_bytes, "load": os.getloadavg()[0]}
            for phase in ("write", "open", "loo", "fit"):
                entry[phase] = _run_phase(phase, store, n, bound)
                print(f"N={n} {phase}: {entry[phase]['seconds']:.2f} s", flush=True)
            if n * row_bytes * 2 < 8 * 2**30:  # fits in memory with its float32 copy: the in-memory reference
                entry["loo_mem"] = _run_phase("loo_mem", store, n, bound)
                print(f"N={n} loo_mem: {entry['loo_mem']['score_s']:.2f} s", flush=True)
            results.append(entry)
        finally:
            shutil.rmtree(store.parent, ignore_errors=True)
    return {
        "schema": 1,
        "command": "python bench/store_scale.py --n " + " ".join(map(str, ns)),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "torch_threads": 1,
        },
        "grid": list(GRID),
        "dtype": "float16",
        "shard_examples": SHARD,
        "memory_bound": bound,
        "results": results,
    }


# ---- rendering ---------------------------------------------------------------------------------------------------
def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Measured {data['date']} on {m['cpu']} ({m['cores']} cores shared with other engineers, "
        f"{m['memory_gib']} GiB RAM), one torch thread, with `{data['command']}`; grid "
        f"{' x '.join(map(str, data['grid']))} in {data['dtype']}, shards of {data['shard_examples']} examples, "
        f"memory bound {_mib(data['memory_bound'])}. Load is the 1-minute load average when each N started.",
        "",
        "| N | features | write | store overhead | open | LOO scoring (streamed) | LOO in memory | SAV fit "
        "(streamed) | peak own memory (LOO / fit) | page cache peak | index bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        w, o, loo, fit = r["write"], r["open"], r["loo"], r["fit"]
        store_s = w["seconds"] - w["generate_s"]
        mem = r.get("loo_mem")
        mem_cell = f"{mem['score_s']:.1f} s ({loo['seconds'] / mem['score_s']:.2f}x)" if mem else "does not fit"
        lines.append(
            f"| {r['n']:,} | {_mib(r['feature_bytes'])} | {store_s:.1f} s ({r['n'] / store_s:,.0f} ex/s) | "
            f"{1000 * store_s / r['n']:.2f} ms/ex | {1000 * o['seconds']:.0f} ms | {loo['seconds']:.1f} s | "
            f"{mem_cell} | {fit['seconds']:.1f} s | {_mib(loo['peak_rss_anon'])} / {_mib(fit['peak_rss_anon'])} | "
            f"{_mib(max(loo['peak_rss_file'], fit['peak_rss_file']))} | {w['index_bytes']:,} |"
        )
    lines += [
        "",
        "- *write* is FeatureStore.append alone (serialising, writing and fsyncing each shard, appending its index "
        "line); the synthetic generator's time is left out. *store overhead* is that time per example: set it "
        "against the extraction's own time per example (a 7B forward on a GPU takes tens of milliseconds per "
        "small batch).",
        "- *LOO in memory* is open_store + centroid_accuracy on the features in memory (one block); the ratio in "
        "brackets is streamed over in-memory time. *SAV fit* scores every head (LOO) and computes the centroids "
        "of the 20 best, all streamed.",
        "- *peak own memory* is the highest RssAnon of the phase's process (Python, torch, the blocks); *page cache "
        "peak* is RssFile, pages of the memory-mapped shards that the kernel reclaims under pressure.",
        "- *index bytes*: the append-only index written for N examples, one line per shard (linear in N).",
    ]
    return "\n".join(lines)


def write_doc(data: dict[str, Any]) -> None:
    text = DOC.read_text()
    block = f"{BEGIN}\n{render(data)}\n{END}"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Feature stores past memory\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        phase, store, n, bound = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(phase, store, n, bound)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--bound", type=int, default=2 * 2**30, help="memory bound in bytes (default 2 GiB)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--render", action="store_true", help="only re-render docs/performance.md from --out")
    ap.add_argument("--merge", action="store_true", help="keep the other sizes already in --out")
    args = ap.parse_args()
    if args.render:
        write_doc(json.loads(args.out.read_text()))
        return
    data = run(sorted(args.n), args.bound, args.workdir)
    if args.merge and args.out.exists():  # keep the other sizes of an earlier run (same grid and bound)
        old = json.loads(args.out.read_text())
        if (old["grid"], old["memory_bound"]) == (data["grid"], data["memory_bound"]):
            mine = {r["n"] for r in data["results"]}
            for r in old["results"]:
                if r["n"] not in mine:
                    r.setdefault("date", old["date"])
                    data["results"].append(r)
            data["results"].sort(key=lambda r: r["n"])
            data["command"] += f" (merged with: {old['command']}, {old['date']})"
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    write_doc(data)


if __name__ == "__main__":
    main()
