"""Cross-task head transfer and sparse heads vs sparse layers on the tiny VLM (trained and random projector).

    python experiments/transfer_tiny_vlm.py                       # 3 seeds: ~10 min cold on 1 core, ~25 s cached
    python experiments/transfer_tiny_vlm.py --seeds 0 --figures docs/img

The tiny-VLM analogue of the paper's "heads chosen on VLGuard, used on MHalu": four tasks built exactly as in
experiments/sav_tiny_vlm.py (20 shots per class from easy-VQA train, test questions from easy-VQA test disjoint
by image, seeded split): easy-VQA yes/no, colour (8-way) and shape (3-way) questions, and Fashion-MNIST 4-way.
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
``~/.cache/savlens/experiments/tiny_vlm_transfer/<model id>`` (a rerun reads them back in seconds; new seeds add
only the examples not yet stored). Extraction dominates the run time: ~2 min per model and seed on one core
(less for later seeds, whose splits share examples with earlier ones); the rest takes ~2 s per model and seed.
Writes experiments/results/tiny_vlm_transfer.json (per-seed matrices, head sets, the mean and sd over seeds,
timings and the machine), rewritten after each seed; prints the Markdown tables of docs/results.md; with
``--figures DIR`` also writes DIR/tiny-vlm-transfer.png and DIR/tiny-vlm-random-transfer.png (the seed-mean
transfer matrices with their baseline rows, mean ± sd in each cell).
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine, write_json  # noqa: E402
from sav_tiny_vlm import tasks  # noqa: E402  (the same seeded splits as the SAV table of docs/results.md)

import savlens  # noqa: E402
from savlens.compare import compare_heads_layers  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402
from savlens.transfer import TaskSplit, TransferMatrix, task_overlap, transfer_matrix  # noqa: E402

CACHE = Path.home() / ".cache" / "savlens" / "experiments" / "tiny_vlm_transfer"
MODELS = ("tiny-vlm", "tiny-vlm-random")
SHORT = {"easy-vqa/yes_no": "yes/no", "easy-vqa/color": "colour", "easy-vqa/shape": "shape",
         "fashion-mnist/4-way": "fashion"}  # fmt: skip


def features(model: savlens.Model, seed: int) -> dict[str, TaskSplit]:
    """Extract (or read back from the model's store) every task's shot and test features for one split seed."""
    store = CACHE / model.model_id
    out = {}
    for name, (train, test) in tasks(seed).items():
        f_train = savlens.extract(model, train, batch_size=16, store=store, progress=False)
        f_test = savlens.extract(model, test, batch_size=16, store=store, progress=False)
        out[SHORT[name]] = TaskSplit(f_train, f_test)
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
        scores |= {(mid, t): s for t, s in matrix.scores.items()}
        out[mid] = {
            **{key: value for key, value in matrix.to_dict().items() if key not in ("n_random", "random_accuracy")},
            "jaccard": overlap.jaccard.tolist(),
            "spearman": overlap.spearman.tolist(),
            "where": {t: where(h.to_list(), model.n_layers) for t, h in matrix.heads.items()},
            "heads_vs_layers": hvl,
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
        }
    tasks_ = out[MODELS[0]]["tasks"]
    out["trained_vs_random"] = {
        t: {key: ms([s["trained_vs_random"][t][key] for s in seeds]) for key in ("jaccard", "spearman")} for t in tasks_
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds (also tie-break seeds)")
    p.add_argument("--k", type=int, default=20, help="heads per task")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--out", type=Path, default=RESULTS / "tiny_vlm_transfer.json")
    p.add_argument("--figures", type=Path, default=None, help="folder for the heatmaps (none by default)")
    a = p.parse_args()
    with limit_threads(a.threads):
        run(a)


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
