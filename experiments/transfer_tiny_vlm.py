"""Cross-task head transfer and sparse heads vs sparse layers on the tiny VLM (trained and random projector).

    python experiments/transfer_tiny_vlm.py --figures docs/img    # 5 seeds: ~7 min cold on 1 idle core
    python experiments/transfer_tiny_vlm.py --render-only         # re-render docs/results.md from the JSON

The tiny-VLM analogue of the paper's "heads chosen on VLGuard, used on MHalu": four tasks built exactly as in
experiments/sav_tiny_vlm.py (20 shots per class from easy-VQA train, test questions from easy-VQA test disjoint
by image, each seed's split drawn from fixed candidate pools): easy-VQA yes/no, colour (8-way) and shape (3-way)
questions, and Fashion-MNIST 4-way.
For each seed of the split and for ``savlens.load("tiny-vlm")`` and its control
``savlens.load("tiny-vlm-random")`` (projector untrained):

- ``savlens.transfer.transfer_matrix`` (k heads chosen on task A with leave-one-out centroid scores, class
  centroids refit on task B's shots, accuracy on B's test examples) and its ``overlap()`` (Jaccard of the top-k
  head sets, Spearman correlation of the full 30 x 9 score tables), with its two baseline rows
  (``baselines=("random", "all")``): k heads drawn at random (mean of ``n_random=10`` seeded draws, centroids
  from the column task's shots) and all 270 heads voting;
- ``savlens.transfer.task_overlap`` of the same task on the trained and the random-projector model;
- sparse heads vs sparse layers at the same feature budget (``savlens.compare.layer_budget``: round(k / 9)
  layers of 9 x 64 dims against k heads of 64 dims) with ``savlens.compare.compare_heads_layers``: on the fixed
  split (``test=``: fitted on the shots, scored on the test examples) and with 5 stratified folds over shots +
  test examples, each with its shuffled-label control of both arms.

Seeds are aggregated with ``TransferMatrix.mean`` (mean and sample sd) for the transfer matrix and its
baselines, and with :func:`ms` (the same statistics) for the other numbers.

Last-token ``blocks.*.attn.hook_z`` features are cached in one savlens feature store per model under
``~/.cache/savlens/experiments/tiny_vlm_transfer/<model id>`` (shared with experiments/sav_tiny_vlm.py; a rerun
reads them back; the seeds' splits come from the same pools, ~1,500 examples per model in all). Extraction
dominates a cold run: ~0.12 s of CPU per example.
Writes experiments/results/tiny_vlm_transfer.json (per-seed matrices, head sets, the mean and sd over seeds,
timings and the machine), rewritten after each seed; prints the Markdown tables of docs/results.md; with
``--figures DIR`` also writes DIR/tiny-vlm-transfer.png and DIR/tiny-vlm-random-transfer.png (the seed-mean
transfer matrices with their baseline rows, mean ± sd in each cell).
"""

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import FEATURE_CACHE, RESULTS, machine, write_json, write_section  # noqa: E402
from sav_tiny_vlm import head_features, tasks  # noqa: E402  (the same seeded splits as the SAV table of docs/results.md)

import savlens  # noqa: E402
from savlens import SAV  # noqa: E402
from savlens.classifiers import SparseLayers  # noqa: E402
from savlens.compare import compare_heads_layers  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402
from savlens.transfer import TaskSplit, TransferMatrix, task_overlap, transfer_matrix  # noqa: E402

CACHE = FEATURE_CACHE  # shared with experiments/sav_tiny_vlm.py (the same splits)
MODELS = ("tiny-vlm", "tiny-vlm-random")
SHORT = {"easy-vqa/yes_no": "yes/no", "easy-vqa/color": "colour", "easy-vqa/shape": "shape",
         "fashion-mnist/4-way": "fashion"}  # fmt: skip


TASKS: list[str] = []  # keep only these tasks (--tasks); empty: all


def features(model: savlens.Model, seed: int) -> dict[str, TaskSplit]:
    """Extract (or read back from the model's store) every task's shot and test features for one split seed."""
    out = {}
    for name, (train, test) in tasks(seed).items():
        if TASKS and name not in TASKS:
            continue
        out[SHORT[name]] = TaskSplit(head_features(model, train), head_features(model, test))
    return out


def heads_vs_layers(splits: dict[str, TaskSplit], matrix: TransferMatrix, k: int, seed: int) -> dict[str, Any]:
    """Sparse heads vs sparse layers per task: fixed split and 5-fold CV, each with its shuffled-label control."""
    out = {}
    for name, s in splits.items():
        split = compare_heads_layers(s.train, test=s.test, k=k, seed=seed)
        assert split.mean()["heads"] == matrix[name, name]  # the same SAV as the diagonal of the matrix
        cv = compare_heads_layers(savlens.HeadFeatures.concat([s.train, s.test]), k=k, seed=seed, n_folds=5)
        fixed = split.mean()
        out[name] = {
            "k_layers": split.k_layers,
            "n_features_heads": cv.n_features_heads,
            "n_features_layers": cv.n_features_layers,
            "split_heads": fixed["heads"],
            "split_layers": fixed["layers"],
            "split_heads_shuffled": fixed["heads_shuffled"],
            "split_layers_shuffled": fixed["layers_shuffled"],
            "split_layers_chosen": list(split.layers_chosen or ()),
            "cv": cv.mean(),
            "cv_chance": cv.chance,
        }
    return out


def _paired(a: list[bool], b: list[bool], seed: int) -> dict[str, Any]:
    """Exact McNemar p (scipy) and the paired bootstrap 95% interval of accuracy(a) - accuracy(b)."""
    from savlens.stats import mcnemar_exact, paired_bootstrap

    mc = mcnemar_exact(a, b)
    bs = paired_bootstrap(a, b, n_resamples=10_000, seed=seed)
    return {
        "a_only": mc.a_only,
        "b_only": mc.b_only,
        "mcnemar_p": float(f"{mc.p_value:.4g}"),
        "difference": round(bs.difference, 4),
        "ci95": [round(bs.low, 4), round(bs.high, 4)],
    }


def paired_tests(splits: dict[str, TaskSplit], matrix: TransferMatrix, hvl: dict[str, Any], seed: int) -> dict:
    """The comparisons the docs draw, paired on each column task's test examples: its own k heads against the
    best layers at the same budget (fixed split), against all heads, and against every other task's k heads
    (centroids refit on the column task's shots, as in the matrix)."""
    k = matrix.k
    out: dict[str, Any] = {}
    for t, s in splits.items():
        truth = [str(y) for y in s.test.labels or []]

        def hits(pred: list, truth: list[str] = truth) -> list[bool]:
            return [str(p) == y for p, y in zip(pred, truth)]

        own = hits(SAV(k, seed=seed).fit(s.train).predict(s.test))
        assert abs(np.mean(own) - matrix[t, t]) < 1e-9
        layers = hits(SparseLayers(hvl[t]["k_layers"], seed=seed).fit(s.train).predict(s.test))
        assert abs(np.mean(layers) - hvl[t]["split_layers"]) < 1e-9
        n_all = s.train.n_layers * s.train.n_heads
        every = hits(SAV(n_all, seed=seed).fit(s.train).predict(s.test))
        out[f"{t}: heads vs layers"] = _paired(own, layers, seed)
        out[f"{t}: heads vs all heads"] = _paired(own, every, seed)
        for a in splits:
            if a != t:
                other = hits(SAV(k, seed=seed).fit_heads(s.train, heads=matrix.heads[a]).predict(s.test))
                assert abs(np.mean(other) - matrix[a, t]) < 1e-9
                out[f"{t}: own heads vs {a} heads"] = _paired(own, other, seed)
    return out


def baselines(matrix: TransferMatrix) -> dict[str, Any]:
    """The matrix's baseline rows, per column task: k random heads (mean and each draw) and all heads."""
    return {
        t: {
            "random_heads": float(matrix.baselines["random"][j]),
            "random_heads_draws": matrix.random_accuracy[t],
            "all_heads": float(matrix.baselines["all"][j]),
        }
        for j, t in enumerate(matrix.tasks)
    }


def where(heads: list[str], n_layers: int) -> dict[str, Any]:
    """Say where a head set sits: its median layer and how many heads fall in each third of the layers."""
    layer = [savlens.Head.parse(h).layer for h in heads]
    thirds = [sum(1 for x in layer if i * n_layers // 3 <= x < (i + 1) * n_layers // 3) for i in range(3)]
    return {"median_layer": float(np.median(layer)), "per_third": thirds}


def run_seed(models: dict[str, savlens.Model], seed: int, k: int) -> tuple[dict[str, Any], dict[str, TransferMatrix]]:
    """Everything for one split seed and both models; also each model's transfer matrix."""
    out: dict[str, Any] = {}
    matrices = {}
    scores = {}
    for mid, model in models.items():
        t0 = time.perf_counter()
        splits = features(model, seed)
        t_extract = time.perf_counter() - t0
        matrix = matrices[mid] = transfer_matrix(splits, k=k, seed=seed, baselines=("random", "all"), n_random=10)
        overlap = matrix.overlap()
        hvl = heads_vs_layers(splits, matrix, k, seed)
        paired = paired_tests(splits, matrix, hvl, seed)
        scores |= {(mid, t): s for t, s in matrix.scores.items()}
        out[mid] = {
            **{key: value for key, value in matrix.to_dict().items() if key not in ("n_random", "random_accuracy")},
            "jaccard": overlap.jaccard.tolist(),
            "spearman": overlap.spearman.tolist(),
            "where": {t: where(h.to_list(), model.n_layers) for t, h in matrix.heads.items()},
            "heads_vs_layers": hvl,
            "paired": paired,
            "baselines": baselines(matrix),  # in this file's layout (per column task), not to_dict()'s
            "n_train": {t: s.train.n_examples for t, s in splits.items()},
            "n_test": {t: s.test.n_examples for t, s in splits.items()},
            "seconds_features": round(t_extract, 1),
            "seconds_analysis": round(time.perf_counter() - t0 - t_extract, 1),
        }
        print(f"seed {seed} {mid}: features {t_extract:.0f} s\n{matrix}\n{overlap}", flush=True)
    tasks_ = out[MODELS[0]]["tasks"]
    same = {}
    for t in tasks_:  # the same task on the trained and the random-projector model
        o = task_overlap({"trained": scores[(MODELS[0], t)], "random": scores[(MODELS[1], t)]}, k=k, seed=seed)
        same[t] = {"jaccard": float(o.jaccard[0, 1]), "spearman": float(o.spearman[0, 1])}
    out["trained_vs_random"] = same
    return out, matrices


def ms(values: list[Any]) -> dict[str, Any]:
    """Mean and sample sd (ddof=1; 0 with one seed) over seeds: the statistics of ``TransferMatrix.mean``."""
    a = np.asarray(values, dtype=float)
    sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(a[0])
    return {"mean": a.mean(0).tolist(), "sd": sd.tolist()}


def summarize(per_seed: dict[str, Any], means: dict[str, TransferMatrix]) -> dict[str, Any]:
    """Mean and sd over seeds of every matrix and heads-vs-layers number (``means``: each model's seed mean)."""
    seeds = list(per_seed.values())
    out: dict[str, Any] = {"k": seeds[0][MODELS[0]]["k"]}
    for mid in MODELS:
        rows = [s[mid] for s in seeds]
        mean = means[mid]
        tasks_ = list(mean.tasks)
        assert mean.sd is not None
        hvl: dict[str, Any] = {}
        for t in tasks_:
            h = [r["heads_vs_layers"][t] for r in rows]
            keys = ("split_heads", "split_layers", "split_heads_shuffled", "split_layers_shuffled")
            hvl[t] = {key: ms([x[key] for x in h]) for key in keys}
            hvl[t] |= {f"cv_{key}": ms([x["cv"][key] for x in h]) for key in h[0]["cv"]}
        out[mid] = {
            "tasks": tasks_,
            "accuracy": {"mean": mean.accuracy.tolist(), "sd": mean.sd.tolist()},
            **{
                f"{name}_heads": {"mean": mean.baselines[name].tolist(), "sd": mean.baselines_sd[name].tolist()}
                for name in ("random", "all")
            },
            "jaccard": ms([r["jaccard"] for r in rows]),
            "spearman": ms([r["spearman"] for r in rows]),
            "heads_vs_layers": hvl,
            "paired": summarize_paired([r["paired"] for r in rows if "paired" in r]),
        }
    tasks_ = out[MODELS[0]]["tasks"]
    out["trained_vs_random"] = {
        t: {key: ms([s["trained_vs_random"][t][key] for s in seeds]) for key in ("jaccard", "spearman")} for t in tasks_
    }
    return out


def summarize_paired(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per comparison over seeds: the mean difference and how many seeds are significantly better / worse
    (exact McNemar p < 0.05), and the range of p."""
    if not per_seed:
        return {}
    out = {}
    for key in per_seed[0]:
        ps = [s[key] for s in per_seed]
        out[key] = {
            "difference_mean": round(float(np.mean([p["difference"] for p in ps])), 4),
            "better": sum(p["difference"] > 0 and p["mcnemar_p"] < 0.05 for p in ps),
            "worse": sum(p["difference"] < 0 and p["mcnemar_p"] < 0.05 for p in ps),
            "p_min": min(p["mcnemar_p"] for p in ps),
            "p_max": max(p["mcnemar_p"] for p in ps),
            "n_seeds": len(ps),
        }
    return out


def pm(m: dict[str, Any], *index: int, fmt: str = ".3f") -> str:
    """Format ``mean ± sd`` of one entry of a :func:`summarize` block."""
    mean, sd = m["mean"], m["sd"]
    for i in index:
        mean, sd = mean[i], sd[i]
    return f"{mean:{fmt}} ± {sd:{fmt}}"


def markdown(summary: dict[str, Any], n_seeds: int) -> str:
    """Render the tables of docs/results.md from the summary."""
    lines = []
    for mid in MODELS:
        s = summary[mid]
        tasks_ = s["tasks"]
        for what, fmt in (("accuracy", ".3f"), ("jaccard", ".2f"), ("spearman", ".2f")):
            lines += [f"\n{mid} {what} (mean ± sd over {n_seeds} seeds; rows: heads from, columns: used on)\n"]
            lines += ["| heads from \\ used on | " + " | ".join(tasks_) + " |", "|---|" + "---:|" * len(tasks_)]
            for i, a in enumerate(tasks_):
                cells = [pm(s[what], i, j, fmt=fmt) for j in range(len(tasks_))]
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
            if what == "accuracy":
                for key, label in (("random_heads", f"{summary['k']} random heads"), ("all_heads", "all heads")):
                    cells = [pm(s[key], j) for j in range(len(tasks_))]
                    lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
        lines += [f"\n{mid} heads vs layers\n", "| task | heads (split) | layers (split) | heads (CV) | layers (CV) | "
                  "heads, shuffled | layers, shuffled |", "|---|" + "---:|" * 6]  # fmt: skip
        for t in tasks_:
            h = s["heads_vs_layers"][t]
            keys = ("split_heads", "split_layers", "cv_heads", "cv_layers", "cv_heads_shuffled", "cv_layers_shuffled")
            lines.append(f"| {t} | " + " | ".join(pm(h[key]) for key in keys) + " |")
    lines += ["\ntrained vs random, same task\n", "| task | Jaccard | Spearman |", "|---|---:|---:|"]
    for t, v in summary["trained_vs_random"].items():
        lines.append(f"| {t} | {pm(v['jaccard'], fmt='.2f')} | {pm(v['spearman'], fmt='.2f')} |")
    return "\n".join(lines)


# ---- the results page ----------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"
MARKERS = ("<!-- results:tiny-vlm-transfer:start -->", "<!-- results:tiny-vlm-transfer:end -->")
LABEL = {"yes/no": "yes/no", "colour": "colour", "shape": "shape", "fashion": "fashion"}
CHANCE = {"yes/no": 0.5, "colour": 0.125, "shape": 1 / 3, "fashion": 0.25}


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _sig(p: dict[str, Any]) -> str:
    """``better / worse`` seeds of a :func:`summarize_paired` entry, as a phrase."""
    n = p["n_seeds"]
    if p["better"] == n:
        return f"significantly better on all {n} seeds"
    if p["worse"] == n:
        return f"significantly worse on all {n} seeds"
    if p["better"] == p["worse"] == 0:
        return f"no seed significant, p >= {_p(p['p_min'])}"
    return f"significantly better on {p['better']} of {n} seeds, worse on {p['worse']}"


def _range(values: list[float], fmt: str = ".1f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def claims(r: dict[str, Any]) -> list[str]:
    """The paper's claims this experiment tests on images, each with the rule that decides it (trained model)."""
    s, mid = r["summary"], MODELS[0]
    tasks_ = s[mid]["tasks"]
    ti = {t: i for i, t in enumerate(tasks_)}
    a = s[mid]["accuracy"]["mean"]
    rnd = s[mid]["random_heads"]["mean"]
    out = []
    parts, passed, testable = [], [], 0
    for src, dst in (("shape", "colour"), ("colour", "shape")):
        own, moved, random_ = a[ti[dst]][ti[dst]], a[ti[src]][ti[dst]], rnd[ti[dst]]
        if own - random_ <= 0.03:
            parts.append(
                f"{src} heads used on {dst}: {moved:.3f} (its own heads {own:.3f}, {s['k']} random heads "
                f"{random_:.3f}: at the ceiling, no room to show transfer)"
            )
            continue
        testable += 1
        gain = (moved - random_) / (own - random_)
        passed.append(moved - random_ > 0.03 and gain >= 0.5)
        parts.append(
            f"{src} heads used on {dst}: {moved:.3f} (its own heads {own:.3f}, {s['k']} random heads {random_:.3f}: "
            f"{gain:.0%} of the gain over random heads)"
        )
    verdict = "not testable" if not testable else ("reproduced" if all(passed) else "not reproduced")
    out.append(
        f"- **{verdict}**: *heads chosen on one task carry over to a related task* (tiny-vlm, colour and shape). "
        f"{'; '.join(parts)}. (Rule, as for text: transferred heads above random heads by more than 0.03 and "
        "recovering at least half of the own-heads gain, in each direction where the own heads are more than 0.03 "
        "above random heads.)"
    )
    parts, ok = [], True
    for t in tasks_:
        own, random_ = a[ti[t]][ti[t]], rnd[ti[t]]
        if own >= 0.99:
            parts.append(f"{t} {own - random_:+.3f} (own heads {own:.3f}: at the ceiling, not counted)")
            continue
        ok &= own - random_ > 0.05
        parts.append(f"{t} {own - random_:+.3f}")
    out.append(
        f"- **{'reproduced' if ok else 'not reproduced'}**: *the selected heads beat randomly chosen heads* "
        f"(tiny-vlm). Own heads - {s['k']} random heads: {', '.join(parts)}. (Rule: above by more than 0.05 on "
        "every task where the own heads are below 0.99.)"
    )
    for m_ in MODELS:
        parts, wins = [], []
        for t in tasks_:
            h = s[m_]["heads_vs_layers"][t]
            d = h["split_heads"]["mean"] - h["split_layers"]["mean"]
            pv = s[m_]["paired"][f"{t}: heads vs layers"]
            wins.append(d > 0.02 and pv["worse"] == 0)
            parts.append(f"{t} {d:+.3f} ({pv['better']} / {pv['worse']} seeds significantly better / worse)")
        verdict = "reproduced" if all(wins) else ("partly reproduced" if any(wins) else "not reproduced")
        out.append(
            f"- **{verdict}**: *sparse heads beat sparse layers at the same feature budget* ({m_}). Heads - 2 best "
            f"layers on the split: {'; '.join(parts)}. (Rule: heads above layers by more than 0.02 on average and "
            "significantly worse on no seed, on every task; 'partly' when on some tasks.)"
        )
    return out


def markdown_section(r: dict[str, Any]) -> str:
    """The transfer section of docs/results.md (between :data:`MARKERS`), from the JSON only."""
    seeds, s, m = r["seeds_run"], r["summary"], r["machine"]
    n = len(seeds)
    per = [r["seeds"][str(x)] for x in seeds]
    tasks_ = s[MODELS[0]]["tasks"]
    ti = {t: i for i, t in enumerate(tasks_)}
    k = s["k"]

    def acc(mid: str, a: str, b: str) -> float:
        return float(s[mid]["accuracy"]["mean"][ti[a]][ti[b]])

    def base(mid: str, key: str, t: str) -> float:
        return float(s[mid][key]["mean"][ti[t]])

    def paired(mid: str, key: str) -> dict[str, Any]:
        return s[mid]["paired"][key]

    lines = [
        MARKERS[0],
        "## tiny-vlm: heads across tasks, and sparse heads vs sparse layers",
        "",
        "The tiny-VLM analogue of the paper's \"heads chosen on VLGuard, used on MHalu\", on real multimodal "
        "weights, with the random-projector model as the control. Rendered by `python "
        "experiments/transfer_tiny_vlm.py --render-only` from `experiments/results/tiny_vlm_transfer.json` "
        "(script `experiments/transfer_tiny_vlm.py`). Tasks and splits are those of the SAV table above (20 "
        "shots per class from easy-VQA train; test questions from easy-VQA test on other images, one per image; "
        "test examples per seed: "
        + ", ".join(f"{t} {v}" for t, v in per[0][MODELS[0]]["n_test"].items())
        + "; each seed's split drawn from fixed candidate pools, so the seeds share most test examples and differ "
        "mostly in their shots), for split seeds "
        + ", ".join(map(str, seeds))
        + f" (the seed also breaks ties between equal head scores); k = {k}, last-token `hook_z`, leave-one-out "
        f"centroid scores. Everything below is mean ± sd over the {n} seeds; the diagonal equals the SAV table's "
        "SAV columns.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (load average "
        f"{r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end), "
        f"{'no GPU' if not m['gpu'] else m['gpu']}, {m['torch_threads']} torch thread, torch {m['versions']['torch']}, "
        f"transformers {m['versions']['transformers']}, nnsight {m['versions']['nnsight']}"
        + (f"; {r['date']}" if "date" in r else "")
        + f". This run: {r['seconds_wall']:.0f} s wall, {r['seconds_cpu']:.0f} s CPU; feature extraction "
        + ", ".join(
            f"{_range([p[mid]['seconds_features'] for p in per], '.0f')} s per seed for {mid}" for mid in MODELS
        )
        + " (read back from the feature stores under `~/.cache/savlens/experiments/tiny_vlm_transfer/` where an "
        "earlier run of the same code filled them: a cold run extracts the ~1,500 examples of the pools per model, "
        "about 0.12 s of CPU each).",
        "",
        "### Transfer matrix (rows: heads chosen on; columns: used on, with that task's own shots and test examples)",
        "",
        f"Two baselines per column: {k} heads drawn at random (mean of 10 draws, centroids from the column's shots) "
        "and all 270 heads voting.",
    ]
    names = {MODELS[0]: "tiny-vlm (trained projector)", MODELS[1]: "tiny-vlm-random (projector untrained)"}
    for mid in MODELS:
        a, sd = s[mid]["accuracy"]["mean"], s[mid]["accuracy"]["sd"]
        lines += ["", f"| {names[mid]} | " + " | ".join(tasks_) + " |", "|---|" + "---:|" * len(tasks_)]
        for i, t in enumerate(tasks_):
            cells = [
                (f"**{a[i][j]:.3f} ± {sd[i][j]:.3f}**" if i == j else f"{a[i][j]:.3f} ± {sd[i][j]:.3f}")
                for j in range(len(tasks_))
            ]
            lines.append(f"| {t} heads | " + " | ".join(cells) + " |")
        for key, label in (("random_heads", f"{k} random heads"), ("all_heads", "all 270 heads")):
            cells = [pm(s[mid][key], j) for j in range(len(tasks_))]
            lines.append(f"| *{label}* | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Chance: " + ", ".join(f"{CHANCE[t]:.3g}" for t in tasks_) + ". The seed-mean matrices as heatmaps: "
        "[trained](img/tiny-vlm-transfer.png), [random projector](img/tiny-vlm-random-transfer.png).",
        "",
        "### Do the tasks choose the same heads?",
        "",
        f"Jaccard overlap of the top-{k} head sets and Spearman correlation of the full 30 x 9 score tables "
        f"(`TransferMatrix.overlap()`). Two random {k}-head sets out of 270 share 1.5 heads on average (Jaccard "
        "~0.04).",
        "",
        "| task pair | Jaccard, trained | Spearman, trained | Jaccard, random proj. | Spearman, random proj. |",
        "|---|---:|---:|---:|---:|",
    ]
    pairs = [(a, b) for i, a in enumerate(tasks_) for b in tasks_[i + 1 :]]
    for a, b in pairs:
        cells = [pm(s[mid][w], ti[a], ti[b], fmt=".2f") for mid in MODELS for w in ("jaccard", "spearman")]
        lines.append(f"| {a} / {b} | " + " | ".join(cells) + " |")
    tvr = s["trained_vs_random"]
    lines += [
        "",
        "The same task on the two models (`task_overlap` of the trained and the random-projector scores): Jaccard "
        + ", ".join(f"{pm(tvr[t]['jaccard'], fmt='.2f')} ({t})" for t in tasks_)
        + "; Spearman "
        + ", ".join(f"{tvr[t]['spearman']['mean']:.2f} ({t})" for t in tasks_)
        + ".",
        "",
    ]
    where_lines = []
    for mid in MODELS:
        parts = []
        for t in tasks_:
            med = [p[mid]["where"][t]["median_layer"] for p in per]
            late = [p[mid]["where"][t]["per_third"][2] for p in per]
            early = [p[mid]["where"][t]["per_third"][0] for p in per]
            parts.append(
                f"{t} median layer {_range(med)} ({_range(late, '.0f')} of {k} in layers 20-29, "
                f"{_range(early, '.0f')} in layers 0-9)"
            )
        where_lines.append(f"{names[mid]}: " + "; ".join(parts))
    both = [set(p[MODELS[0]]["heads"]["colour"]) & set(p[MODELS[0]]["heads"]["shape"]) for p in per]
    shared = set.intersection(*both)
    lines += [
        f"Where the heads sit (median layer of the {k} over seeds; 30 layers). " + ". ".join(where_lines) + ". "
        "Colour and shape heads the trained model shares in every seed: "
        + (", ".join(sorted(shared, key=lambda h: (int(h[1:].split("H")[0]), h))) or "none")
        + ".",
        "",
        "### Sparse heads vs sparse layers at the same feature budget",
        "",
        f"{k} heads ({k * 64:,} dims) against the 2 best layers (`layer_budget`: round({k} / 9) = 2 layers of 9 x "
        "64 = 1,152 dims), both voting with nearest-centroid units. \"Split\": fitted on the 20 shots per class, "
        "scored on the held-out examples (the heads column is the matrix diagonal). \"CV\": `compare_heads_layers` "
        "on shots + test examples pooled, 5 stratified folds, with its control (each arm fitted on shuffled "
        "training labels). Paired: heads against layers on the split's test examples, per seed (exact McNemar "
        "p < 0.05).",
        "",
        "| model, task | heads, split | layers, split | paired, split | heads, CV | layers, CV | heads, shuffled | "
        "layers, shuffled |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    short = {MODELS[0]: "trained", MODELS[1]: "random proj."}
    for mid in MODELS:
        for t in tasks_:
            h = s[mid]["heads_vs_layers"][t]
            pv = paired(mid, f"{t}: heads vs layers")
            lines.append(
                f"| {short[mid]}, {t} | {pm(h['split_heads'])} | {pm(h['split_layers'])} | {pv['better']} better / "
                f"{pv['worse']} worse of {pv['n_seeds']} | {pm(h['cv_heads'])} | {pm(h['cv_layers'])} | "
                f"{pm(h['cv_heads_shuffled'])} | {pm(h['cv_layers_shuffled'])} |"
            )
    chosen = [p[MODELS[0]]["heads_vs_layers"][t]["split_layers_chosen"] for p in per for t in ("colour",)]
    lines += [
        "",
        "Layers chosen on the trained model for colour, per seed: "
        + "; ".join(" + ".join(map(str, c)) for c in chosen)
        + ".",
        "",
        "### Reading it",
        "",
    ]
    # colour <-> shape
    mid = MODELS[0]
    j_cs = s[mid]["jaccard"]["mean"][ti["colour"]][ti["shape"]]
    sp_cs = s[mid]["spearman"]["mean"][ti["colour"]][ti["shape"]]
    c_on_s, s_on_c = paired(mid, "shape: own heads vs colour heads"), paired(mid, "colour: own heads vs shape heads")
    lines.append(
        f"- **Colour and shape** (both ask about the one shape in the picture) choose overlapping heads on the "
        f"trained model (Jaccard {j_cs:.2f}, about {2 * j_cs / (1 + j_cs) * k:.0f} of {k} shared; Spearman "
        f"{sp_cs:.2f} over all 270 heads). Colour with shape heads {acc(mid, 'shape', 'colour'):.3f} against its own "
        f"{acc(mid, 'colour', 'colour'):.3f} (paired, own against shape heads: {_sig(s_on_c)}); shape with colour "
        f"heads {acc(mid, 'colour', 'shape'):.3f} against its own {acc(mid, 'shape', 'shape'):.3f} (paired: "
        f"{_sig(c_on_s)}). The room to show transfer is small: {k} random heads already reach "
        f"{base(mid, 'random_heads', 'colour'):.3f} (colour) and {base(mid, 'random_heads', 'shape'):.3f} (shape), "
        f"all heads {base(mid, 'all_heads', 'colour'):.3f} and {base(mid, 'all_heads', 'shape'):.3f}."
    )
    others = [t for t in tasks_ if t != "yes/no"]
    yj = [s[mid]["jaccard"]["mean"][ti["yes/no"]][ti[t]] for t in others]
    yon = [acc(mid, t, "yes/no") for t in others]
    own_yn = [paired(mid, f"yes/no: own heads vs {t} heads") for t in others]
    lines.append(
        f"- **Yes/no** shares {_range(yj, '.2f')} (Jaccard) of its heads with the other tasks. With their heads it "
        f"gets {_range(yon, '.3f')}, against {acc(mid, 'yes/no', 'yes/no'):.3f} with its own ("
        + "; ".join(f"vs {t} heads: {_sig(p)}" for t, p in zip(others, own_yn))
        + f") and {base(mid, 'random_heads', 'yes/no'):.3f} with {k} random heads. Its late heads carry the "
        "question-text prior found above, not a comparison of image and question. The paper's pair, VLGuard and "
        "MHalu, are two yes/no tasks; this yes/no task is the odd one out here, so it is not that setting."
    )
    if "fashion" in ti:
        pf = paired(mid, "fashion: heads vs all heads")
        lines.append(
            f"- **Fashion-MNIST** on the trained model: own heads {acc(mid, 'fashion', 'fashion'):.3f}, {k} random "
            f"heads {base(mid, 'random_heads', 'fashion'):.3f}, all heads {base(mid, 'all_heads', 'fashion'):.3f} "
            f"(own heads against all heads: {_sig(pf)}). On the random-projector model: own heads "
            f"{acc(MODELS[1], 'fashion', 'fashion'):.3f}, random heads "
            f"{base(MODELS[1], 'random_heads', 'fashion'):.3f}."
        )
    same_j = [tvr[t]["jaccard"]["mean"] for t in tasks_]
    lines.append(
        f"- **The random projector moves the heads**: the same task selects mostly other heads on the two models "
        f"(Jaccard {_range(same_j, '.2f')}); colour and shape share "
        f"{s[MODELS[1]]['jaccard']['mean'][ti['colour']][ti['shape']]:.2f} there. Which heads a task uses depends "
        "on what the image pathway delivers, not on the task alone."
    )
    hvl = []
    for m_ in MODELS:
        for t in tasks_:
            pv = paired(m_, f"{t}: heads vs layers")
            h = s[m_]["heads_vs_layers"][t]
            hvl.append(
                f"{short[m_]} {t} {h['split_heads']['mean'] - h['split_layers']['mean']:+.3f} "
                f"({pv['better']}/{pv['worse']})"
            )
    wins = sum(paired(m_, f"{t}: heads vs layers")["better"] for m_ in MODELS for t in tasks_)
    losses = sum(paired(m_, f"{t}: heads vs layers")["worse"] for m_ in MODELS for t in tasks_)
    lines.append(
        "- **Heads vs layers** at the same feature budget, split, heads - layers (seeds significantly better / "
        "worse): " + ", ".join(hvl) + f". Over all {2 * len(tasks_)} model-task pairs and {n} seeds, heads are "
        f"significantly better in {wins} and worse in {losses} of {2 * len(tasks_) * n} paired tests. The "
        "shuffled-label controls sit near chance for both arms."
    )
    lines += ["", "### Claims on images: heads across tasks and heads vs layers", ""]
    lines += claims(r)
    lines += [
        "",
        "- Not tested: VLGuard and MHalu themselves (no offline data or 7B weights), transfer between two "
        "different data sets of one kind (safety vs hallucination); all easy-VQA tasks share one image set and "
        f"question style. With 150-200 test examples per task and {n} seeds, differences under ~0.05 are rarely "
        "significant on one seed.",
        "",
        "```bash",
        "python experiments/transfer_tiny_vlm.py --figures docs/img   # -> experiments/results/tiny_vlm_transfer.json",
        "python experiments/transfer_tiny_vlm.py --render-only       # re-render this section from the JSON",
        "```",
        MARKERS[1],
    ]
    return "\n".join(lines) + "\n"


def figure(means: dict[str, TransferMatrix], n_seeds: int, folder: Path) -> None:
    """Draw the seed-mean transfer matrix of each model (``savlens.plot.transfer_heatmap``) into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    from savlens import plot

    folder.mkdir(parents=True, exist_ok=True)
    for mid, mean in means.items():
        fig = plot.transfer_heatmap(mean, title=f"{mid}, k={mean.k}: mean ± sd of {n_seeds} seeds")
        fig.set_size_inches(5.6, 4.6)
        fig.savefig(folder / f"{mid}-transfer.png", dpi=72, bbox_inches="tight")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="split seeds (also tie-break seeds)")
    p.add_argument("--k", type=int, default=20, help="heads per task")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--out", type=Path, default=RESULTS / "tiny_vlm_transfer.json")
    p.add_argument("--figures", type=Path, default=None, help="folder for the heatmaps (none by default)")
    p.add_argument("--render-only", action="store_true", help="only re-render docs/results.md from --out")
    p.add_argument("--tasks", nargs="+", default=[], help="keep only these tasks (e.g. easy-vqa/color)")
    a = p.parse_args()
    TASKS[:] = a.tasks
    if not a.render_only:
        with limit_threads(a.threads):
            run(a)
    write_section(DOC, *MARKERS, markdown_section(json.loads(a.out.read_text(encoding="utf-8"))))
    print("rendered the transfer section of", DOC)


def run(a: argparse.Namespace) -> None:
    """Run every seed, write the JSON after each, print the tables."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    models = {mid: savlens.load(mid) for mid in MODELS}
    results: dict[str, Any] = {
        "k": a.k,
        "seeds_run": [],
        "shots_per_class": 20,
        "store": str(CACHE),
        "load_average_start": os.getloadavg(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": {},
    }
    matrices: dict[str, list[TransferMatrix]] = {mid: [] for mid in MODELS}
    for seed in a.seeds:
        results["seeds"][str(seed)], per_model = run_seed(models, seed, a.k)
        for mid in MODELS:
            matrices[mid].append(per_model[mid])
        means = {mid: TransferMatrix.mean(matrices[mid]) for mid in MODELS}
        results["seeds_run"].append(seed)
        results["summary"] = summarize(results["seeds"], means)
        results["seconds_wall"] = round(time.perf_counter() - t_start, 1)
        results["seconds_cpu"] = round(time.process_time() - cpu_start, 1)
        results["load_average_end"] = os.getloadavg()
        results["machine"] = machine()
        write_json(a.out, results)
    print(markdown(results["summary"], len(a.seeds)))
    if a.figures is not None:
        figure(means, len(a.seeds), a.figures)
    print(f"wrote {a.out}; {results['seconds_wall']:.0f} s wall, {results['seconds_cpu']:.0f} s CPU")


if __name__ == "__main__":
    main()
