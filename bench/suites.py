"""The benchmarks: per model (capture, fit, predict, early stop, scaling) and head scoring on cached features."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import savlens
from bench import baselines as bl
from bench.harness import measure, paired_ratio, peak_rss, summary, tensor_bytes, timed_once
from savlens.scoring import centroid_accuracy


@dataclass
class Settings:
    """How much to run (``--quick`` shrinks everything)."""

    quick: bool
    batch_size: int = 8
    rounds_batch: int = 25
    rounds_fit: int = 3
    rounds_seq: int = 5
    rounds_score: int = 5
    score_examples: int = 1000
    score_grid: tuple[int, int, int] = (28, 28, 128)
    threads: tuple[int, ...] = (1, 2)  # torch thread counts compared (--quick skips 2: slow on a shared machine)


@dataclass
class Case:
    """One model and the inputs every benchmark of it uses."""

    name: str
    title: str
    model: savlens.Model
    make_examples: Callable[[int, int], list[savlens.Example]]  # (n, seed) -> labelled examples
    n_fit: int
    n_pred: int
    seq_axis: str  # what the sequence-length sweep varies
    seq_points: list[tuple[int, list[savlens.Example]]]  # (x, examples of one batch)
    n_points: list[int]
    rounds_batch: int
    rounds_fit: int
    rounds_seq: int
    batch_size: int
    threads: tuple[int, ...] = (1, 2)
    notes: list[str] = field(default_factory=list)


def model_info(model: savlens.Model) -> dict[str, Any]:
    s = model.sizes
    return {
        "model_id": model.model_id,
        "class": type(model.hf).__name__,
        "family": model.family,
        "n_layers": s.n_layers,
        "n_heads": s.n_heads,
        "n_kv_heads": s.n_kv_heads,
        "d_head": s.d_head,
        "d_model": s.d_model,
        "params": sum(p.numel() for p in model.hf.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": model.attn_implementation,
    }


def batch_info(batch: savlens.Batch) -> dict[str, Any]:
    return {
        "batch_size": batch.size,
        "seq_len": batch.seq_len,
        "lengths": batch.lengths.tolist(),
        "image_tokens": batch.image_mask.sum(-1).tolist(),
    }


def _capture_last(model: savlens.Model, batch: savlens.Batch) -> Any:
    """savlens's capture inside ``extract``: all heads, last token, forward stopped after the last layer."""
    with savlens.trace(model, batch, logits=None, stop_at_layer=model.n_layers - 1) as t:
        h = t.save("blocks.*.attn.hook_z", "last", device="cpu", dtype=torch.float32)
    return h.value


def _capture_layer(model: savlens.Model, batch: savlens.Batch, layer: int) -> Any:
    with savlens.trace(model, batch, logits=None, stop_at_layer=layer) as t:
        h = t.save(f"blocks.{layer}.attn.hook_z", "last", device="cpu", dtype=torch.float32)
    return h.value


def _chunks(xs: list[Any], n: int) -> list[list[Any]]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def _strip(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drop the raw samples from a ``measure`` result (kept only where a ratio needs them)."""
    return {k: {kk: vv for kk, vv in v.items() if not kk.endswith("_samples")} for k, v in res.items()}


def run_case(case: Case, log: Callable[[str], None]) -> dict[str, Any]:
    m, b_size = case.model, case.batch_size
    out: dict[str, Any] = {"title": case.title, "info": model_info(m), "notes": case.notes}
    fit_ex = case.make_examples(case.n_fit, 0)
    pred_ex = case.make_examples(case.n_pred, 1)
    batch_ex = fit_ex[:b_size]
    batch = savlens.Batch.from_examples(m, batch_ex)
    inputs = bl.model_inputs(m, batch)
    one_row = [bl.model_inputs(m, savlens.Batch.from_examples(m, [e])) for e in batch_ex]
    out["batch"] = batch_info(batch)
    hooks = bl.FullSequenceHooks(m)

    def ref_bs1() -> Any:
        with hooks:
            return bl.reference_capture(m, hooks, one_row)

    def hooks_batched() -> Any:
        with hooks:
            bl.bare_forward(m, inputs)
            return dict(hooks.retained)

    # ---- 1. capture of one batch, per example --------------------------------------------------------
    log(f"[{case.name}] capture of one batch of {b_size}")
    fns: dict[str, Callable[[], Any]] = {
        "hf_forward": lambda: bl.bare_forward(m, inputs),
        "batch_build": lambda: savlens.Batch.from_examples(m, batch_ex),
        "savlens_trace_last": lambda: _capture_last(m, batch),
        "savlens_extract": lambda: savlens.extract(m, batch_ex, batch_size=b_size, progress=False),
        "nnsight_trace_empty": lambda: bl.nnsight_empty(m, inputs),
        "nnsight_trace_last": lambda: bl.nnsight_last_token(m, inputs, batch.last_index),
        "nnsight_trace_full_seq": lambda: bl.nnsight_full_sequence(m, inputs),
        "hooks_full_seq_batched": hooks_batched,
        "reference_hooks_bs1": ref_bs1,
    }
    res = measure(fns, case.rounds_batch, per=dict.fromkeys(fns, float(b_size)))
    ratios = {
        "savlens_trace_last/hf_forward": paired_ratio(res, "savlens_trace_last", "hf_forward"),
        "nnsight_trace_full_seq/hf_forward": paired_ratio(res, "nnsight_trace_full_seq", "hf_forward"),
        "hooks_full_seq_batched/hf_forward": paired_ratio(res, "hooks_full_seq_batched", "hf_forward"),
        "reference_hooks_bs1/hf_forward": paired_ratio(res, "reference_hooks_bs1", "hf_forward"),
        "reference_hooks_bs1/savlens_trace_last": paired_ratio(res, "reference_hooks_bs1", "savlens_trace_last"),
    }
    # where the capture's extra time goes: nnsight's fixed cost per trace (an empty trace vs the bare forward),
    # and savlens's own cost (savlens vs the same last-token saves + early stop written directly in nnsight)
    cpu = {k: v["cpu"]["median"] * b_size for k, v in res.items()}
    out_breakdown = {
        "hf_forward_s": cpu["hf_forward"],
        "nnsight_fixed_per_trace_s": cpu["nnsight_trace_empty"] - cpu["hf_forward"],
        "savlens_own_s": cpu["savlens_trace_last"] - cpu["nnsight_trace_last"],
        "note": "CPU-time medians per batch; differences of medians, so within the p25-p75 spread they are noise",
    }
    floor = {c: res["hf_forward"][c]["median"] + res["batch_build"][c]["median"] for c in ("wall", "cpu")}
    ratios["savlens_extract/(batch_build+hf_forward)"] = {
        c: {"ratio_of_medians": res["savlens_extract"][c]["median"] / floor[c]} for c in ("wall", "cpu")
    }
    out["capture"] = {
        "unit": "s per example",
        "timings": _strip(res),
        "ratios": ratios,
        "overhead_breakdown_per_batch": out_breakdown,
    }

    # ---- 2. 1 vs 2 torch threads ---------------------------------------------------------------------
    log(f"[{case.name}] 1 vs 2 torch threads")

    def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(1)

        return run

    tfns = {
        f"{name}_{n}t": with_threads(n, fn)
        for n in case.threads
        for name, fn in (("hf_forward", fns["hf_forward"]), ("savlens_trace_last", fns["savlens_trace_last"]))
    }
    tres = measure(tfns, max(2, case.rounds_batch // 3), per=dict.fromkeys(tfns, float(b_size)))
    out["threads"] = {"unit": "s per example", "timings": _strip(tres), "ratios": {}}
    if 2 in case.threads:
        out["threads"]["ratios"] = {
            f"{k}_2t/{k}_1t": paired_ratio(tres, f"{k}_2t", f"{k}_1t") for k in ("hf_forward", "savlens_trace_last")
        }

    # ---- 3. full fit: reference style vs savlens ------------------------------------------------------
    total_heads = m.n_layers * m.n_heads
    k = min(20, total_heads // 2)
    log(f"[{case.name}] fit on {len(fit_ex)} examples, k={k}")
    ffns: dict[str, Callable[[], Any]] = {
        "reference_fit": lambda: bl.reference_fit(m, fit_ex, k),
        "savlens_fit": lambda: savlens.SAV(k=k).fit_model(m, fit_ex, batch_size=b_size),
        "savlens_extract": lambda: savlens.extract(m, fit_ex, batch_size=b_size, progress=False),
    }
    fres = measure(ffns, case.rounds_fit, warmup=0)  # everything is warm from the capture benchmark
    feats = savlens.extract(m, fit_ex, batch_size=b_size, progress=False)
    ref = bl.reference_fit(m, fit_ex, k)
    # checks: the baseline implements the reference method (same heads as savlens's reference mode on the
    # baseline's own features), and batch-size-1 and batched captures agree up to float rounding
    ref_feats = savlens.HeadFeatures(ref["z"], labels=[e.label for e in fit_ex])
    same_method = [(h.layer, h.head) for h in savlens.SAV(k=k, reference=True).fit(ref_feats).heads_] == ref["heads"]
    batched_heads = {(h.layer, h.head) for h in savlens.SAV(k=k, reference=True).fit(feats).heads_}
    sav = savlens.SAV(k=k).fit(feats)
    out["fit"] = {
        "unit": "s per fit",
        "n_examples": len(fit_ex),
        "k": k,
        "batch_size": b_size,
        "forward_passes": {"reference_fit": 3 * len(fit_ex), "savlens_fit": math.ceil(len(fit_ex) / b_size)},
        "timings": _strip(fres),
        "ratios": {"reference_fit/savlens_fit": paired_ratio(fres, "reference_fit", "savlens_fit")},
        "checks": {
            "reference_style_heads_equal_savlens_reference_mode_on_the_same_features": same_method,
            "max_abs_diff_batched_vs_batch_size_1_features": float((feats.z - ref["z"]).abs().max()),
            "max_abs_feature": float(feats.z.abs().max()),
            "reference_mode_heads_shared_batched_vs_batch_size_1": len(batched_heads & set(ref["heads"])),
        },
    }

    # ---- 4. predict with the selected heads and the early stop ----------------------------------------
    deepest = max(sav.required_layers)
    log(f"[{case.name}] predict {len(pred_ex)} examples (heads in layers {list(sav.required_layers)})")

    def full_forward_pred() -> None:
        for chunk in _chunks(pred_ex, b_size):
            bl.bare_forward(m, bl.model_inputs(m, savlens.Batch.from_examples(m, chunk)))

    pfns: dict[str, Callable[[], Any]] = {
        "savlens_predict": lambda: sav.predict(sav.extract(m, pred_ex, batch_size=b_size)),
        "hf_forward_full": full_forward_pred,
        "savlens_extract_all_layers": lambda: savlens.extract(m, pred_ex, batch_size=b_size, progress=False),
    }
    pres = measure(pfns, case.rounds_fit, warmup=0, per=dict.fromkeys(pfns, float(len(pred_ex))))
    out["predict"] = {
        "unit": "s per example",
        "n_examples": len(pred_ex),
        "selected_layers": list(sav.required_layers),
        "deepest_layer": deepest,
        "layers_run_fraction": (deepest + 1) / m.n_layers,
        "timings": _strip(pres),
        "ratios": {"savlens_predict/hf_forward_full": paired_ratio(pres, "savlens_predict", "hf_forward_full")},
    }

    # ---- 5. early-stop sweep on one batch ---------------------------------------------------------------
    stops = sorted({round(f * (m.n_layers - 1)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)})
    log(f"[{case.name}] early stop at layers {stops}")
    sfns: dict[str, Callable[[], Any]] = {"hf_forward": fns["hf_forward"]}
    for s in stops:
        sfns[f"stop_at_{s}"] = lambda s=s: _capture_layer(m, batch, s)
    sres = measure(sfns, max(3, case.rounds_batch // 2), per=dict.fromkeys(sfns, float(b_size)))
    share = decoder_share(m, inputs, 5 if case.rounds_batch < 10 else 15)
    out["early_stop"] = {
        "unit": "s per example",
        "decoder_share_of_forward": share,
        "timings": _strip(sres),
        "points": [
            {
                "stop_at_layer": s,
                "layers_run_fraction": (s + 1) / m.n_layers,
                "ratio_vs_hf_forward": paired_ratio(sres, f"stop_at_{s}", "hf_forward"),
                "expected_from_decoder_share": 1 - share * (1 - (s + 1) / m.n_layers),
            }
            for s in stops
        ],
    }

    # ---- 6. growth with sequence length -----------------------------------------------------------------
    log(f"[{case.name}] sequence-length sweep ({case.seq_axis})")
    points = []
    for x, exs in case.seq_points:
        sb = savlens.Batch.from_examples(m, exs)
        sin = bl.model_inputs(m, sb)
        rows = [bl.model_inputs(m, savlens.Batch.from_examples(m, [e])) for e in exs]

        def ref_rows(rows: list[dict[str, Any]] = rows) -> Any:
            with hooks:
                z = bl.reference_capture(m, hooks, rows)
                return z, dict(hooks.retained)

        qfns: dict[str, Callable[[], Any]] = {
            "hf_forward": lambda sin=sin: bl.bare_forward(m, sin),
            "savlens_trace_last": lambda sb=sb: _capture_last(m, sb),
            "nnsight_trace_full_seq": lambda sin=sin: bl.nnsight_full_sequence(m, sin),
            "reference_hooks_bs1": ref_rows,
        }
        qres = measure(qfns, case.rounds_seq, per=dict.fromkeys(qfns, float(sb.size)))
        mem: dict[str, Any] = {}
        peaks: dict[str, list[int]] = {name: [] for name in qfns}
        names = list(qfns)
        for r in range(3):  # the heap's state changes a single reading: median of 3, in rotated order
            for name in names[r:] + names[:r]:
                peaks[name].append(peak_rss(qfns[name])[1]["peak_delta"])
        for name, fn in qfns.items():
            kept = fn()
            if name in ("savlens_trace_last", "nnsight_trace_full_seq"):
                per_example = tensor_bytes(kept) / sb.size
            elif name == "reference_hooks_bs1":
                per_example = tensor_bytes(kept[1])  # held by the hooks at the end of each one-row forward
            else:
                per_example = 0
            mem[name] = {
                "retained_bytes_per_example": per_example,
                "peak_rss_delta_bytes": statistics.median(peaks[name]),
            }
            del kept
        points.append(
            {
                "x": x,
                "seq_len": sb.seq_len,
                "batch": batch_info(sb),
                "timings": _strip(qres),
                "memory": mem,
            }
        )
    out["seq_scaling"] = {"axis": case.seq_axis, "unit": "s per example", "points": points}

    # ---- 7. growth with the number of examples ----------------------------------------------------------
    log(f"[{case.name}] number-of-examples sweep {case.n_points}")
    npoints = []
    for n in case.n_points:
        exs = case.make_examples(n, 2)
        feats_n, rss = peak_rss(lambda exs=exs: savlens.extract(m, exs, batch_size=b_size, progress=False))
        npoints.append(
            {
                "n_examples": n,
                "extract": {"wall": summary([rss["wall"]]), "cpu": summary([rss["cpu"]])},
                "feature_bytes": tensor_bytes(feats_n.z),
                "peak_rss_delta_bytes": rss["peak_delta"],
                "retained_rss_delta_bytes": rss["retained_delta"],
            }
        )
        del feats_n
    s = m.sizes
    expected = s.n_layers * s.n_heads * s.d_head * 4
    first, last = npoints[0], npoints[-1]
    dn = last["n_examples"] - first["n_examples"]
    out["n_scaling"] = {"unit": "s per extract call", "points": npoints}
    out["memory"] = {
        "feature_bytes_per_example": feats.z[0].numel() * feats.z.element_size(),
        "expected_layers_x_heads_x_d_head_x_4": expected,
        "peak_rss_per_cached_example_bytes": last["peak_rss_delta_bytes"] / last["n_examples"],
        "retained_rss_per_cached_example_bytes": last["retained_rss_delta_bytes"] / last["n_examples"],
        "at_n_examples": last["n_examples"],
        "retained_rss_slope_bytes_per_example": (last["retained_rss_delta_bytes"] - first["retained_rss_delta_bytes"])
        / dn,
        "peak_rss_slope_bytes_per_example": (last["peak_rss_delta_bytes"] - first["peak_rss_delta_bytes"]) / dn,
    }
    return out


def decoder_share(model: savlens.Model, inputs: dict[str, Any], rounds: int) -> float:
    """Median share of a bare forward's CPU time spent between entering the first decoder layer and leaving the
    last (the part an early stop can skip a fraction of; the rest is the vision tower, embeddings, final norm,
    lm_head and fixed per-call costs). Timed with this thread's CPU clock from two plain hooks."""
    first = model.module(model.resolved.block_path(0, ""))
    last = model.module(model.resolved.block_path(model.n_layers - 1, ""))
    marks: dict[str, float] = {}
    h1 = first.register_forward_pre_hook(lambda *a: marks.__setitem__("start", time.thread_time()))
    h2 = last.register_forward_hook(lambda *a: marks.__setitem__("end", time.thread_time()))
    shares = []
    try:
        for _ in range(rounds):
            t0 = time.thread_time()
            bl.bare_forward(model, inputs)
            total = time.thread_time() - t0
            shares.append((marks["end"] - marks["start"]) / total)
    finally:
        h1.remove()
        h2.remove()
    return statistics.median(shares)


# ---- head scoring on cached features ---------------------------------------------------------------------


def run_scoring(st: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    n = st.score_examples
    n_layers, n_heads, d_head = st.score_grid
    log(f"[scoring] {n} examples x {n_layers} x {n_heads} x {d_head}")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, n_layers, n_heads, d_head, generator=g)
    labels = ["yes" if i % 2 else "no" for i in range(n)]
    z[torch.arange(n) % 2 == 1, n_layers // 2, 3, :4] += 1.0  # one informative head
    feats = savlens.HeadFeatures(z, labels=labels)
    out: dict[str, Any] = {
        "n_examples": n,
        "grid": {"layer": n_layers, "head_index": n_heads, "d_head": d_head},
        "feature_bytes": tensor_bytes(z),
        "n_classes": 2,
        "unit": "s per call",
        "threads": {},
    }
    modes: dict[str, Callable[[], Any]] = {
        "in_sample": lambda: centroid_accuracy(feats, mode="in_sample"),
        "loo": lambda: centroid_accuracy(feats, mode="loo"),
        "kfold": lambda: centroid_accuracy(feats, mode="kfold", n_folds=5),
        "reference": lambda: centroid_accuracy(feats, mode="in_sample", reference=True),
        "sav_fit_k20": lambda: savlens.SAV(k=20).fit(feats),
    }
    for threads in st.threads:
        torch.set_num_threads(threads)
        try:
            res = measure(modes, st.rounds_score)
        finally:
            torch.set_num_threads(1)
        out["threads"][str(threads)] = _strip(res)
    _, rss = peak_rss(lambda: centroid_accuracy(feats, mode="loo"))
    out["loo_peak_rss_delta_bytes"] = rss["peak_delta"]
    return out


def timed_load(fn: Callable[[], Any]) -> tuple[Any, float]:
    out, t = timed_once(fn)
    return out, t["wall"]
