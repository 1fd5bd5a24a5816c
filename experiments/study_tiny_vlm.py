"""The study of docs/studies.md: easy-VQA colour and shape questions on the tiny VLM, one call to run_study.

    python experiments/study_tiny_vlm.py                  # ~4 min cold on one core (extraction), ~1 min cached
    python experiments/study_tiny_vlm.py --figures docs/img

Each task's pool is every question of its kind about the first 300 (colour) or 150 (shape) training images of
easy-VQA (several questions per image), with the image as the group key, so a test question never shows an
image the shots saw. Features (last-token ``blocks.*.attn.hook_z``) are extracted once into one feature store
per task under ``~/.cache/savlens/experiments/study_tiny_vlm/``; :func:`savlens.study.run_study` then sweeps
shots, k, seeds, criteria and voting rules over both tasks and both transfer directions, with random-heads and
all-heads baselines. Writes experiments/results/study_tiny_vlm.json (the table, its summaries, the grid,
timings and the machine) and, with ``--figures DIR``, the study's standard figures into DIR (prefixed
``study-``).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine  # noqa: E402

import savlens  # noqa: E402
from savlens.datasets import load_easy_vqa  # noqa: E402
from savlens.study import run_study, write_figures  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402

CACHE = Path.home() / ".cache" / "savlens" / "experiments" / "study_tiny_vlm"
#: the pool of each task: its questions about the training images with ids below this
N_IMAGES = {"color": 300, "shape": 150}
GRID = {
    "shots": [2, 5, 10],
    "k": [1, 5, 10, 20, 40],
    "seeds": [0, 1, 2, 3, 4],
    "criteria": ["centroid", "probe"],
    "voting": ["majority", "score", "reliability"],
    "transfer": "all",
    "n_test": 10,
    "baselines": ["random", "all"],
    "n_random": 10,
}


def pools() -> dict[str, list[savlens.Example]]:
    """Every colour (shape) question about the first 300 (150) training images."""
    return {task: [e for e in load_easy_vqa("train", task) if e.meta["image_id"] < n] for task, n in N_IMAGES.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--out", type=Path, default=RESULTS / "study_tiny_vlm.json")
    p.add_argument("--figures", type=Path, default=None, help="folder for the figures (none by default)")
    a = p.parse_args()
    with limit_threads(a.threads):
        t0, cpu0 = time.perf_counter(), time.process_time()
        model = savlens.load("tiny-vlm")
        examples = pools()
        feats = {
            t: savlens.extract(model, ex, batch_size=16, store=CACHE / f"{model.model_id}-{t}", progress=False)
            for t, ex in examples.items()
        }
        groups = {t: {str(e.id): e.meta["image_id"] for e in ex} for t, ex in examples.items()}
        t_features = time.perf_counter() - t0
        table = run_study(feats, GRID, groups=groups)
        t_study = time.perf_counter() - t0 - t_features
        data = table.to_dict()
        data["experiment"] = {
            "model": model.model_id,
            "pool": {t: f"easy-VQA train {t} questions about images 0..{n - 1}" for t, n in N_IMAGES.items()},
            "group": "image_id",
            "seconds_features": round(t_features, 1),
            "seconds_study": round(t_study, 1),
            "seconds_cpu": round(time.process_time() - cpu0, 1),
            "machine": machine(),
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)  # compact JSON: ~2000 rows, each with its heads
        a.out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
        print(table)
        if a.figures is not None:
            from savlens.study.table import StudyTable

            written = write_figures(StudyTable.from_dict(data), a.figures, prefix="study-")
            print("figures:", ", ".join(written.values()))
        print(f"wrote {a.out}; features {t_features:.0f} s, study {t_study:.0f} s")


if __name__ == "__main__":
    main()
