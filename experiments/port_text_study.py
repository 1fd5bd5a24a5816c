"""The SAV arms of experiments/reproduce_text.py's shots curve, k curve and transfer matrix, as three run_study calls.

    python experiments/port_text_study.py   # ~4 min cold on one core (extracting 2 x 450 fortunes), ~1 min cached

reproduce_text.py (through text_analysis.py) draws, per seed, one test set of 40 examples per class and nested
training sets from a fixed pool of 90 fortunes per class, then loops over shots, k and tasks by hand. The study
runner does the same with ``nested=True``: this script reads the same cached pool features
(text_features.extract_pool, the same cache folder), runs the grid with :func:`savlens.study.run_study`, and
checks every SAV number against the per-seed values in the committed docs/results-text.json: the leave-one-out and
in-sample SAV arms of the shots curve (k = 20) and of the k curve (20 shots), and the transfer matrix (k = 20,
20 shots, leave-one-out). Exits 1 on any difference. (KNN, probe, zero-shot, control and layer arms are not
study rows and stay in reproduce_text.py.)
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_features import TASKS, build_pool, extract_pool  # noqa: E402

import savlens  # noqa: E402
from savlens.io import savlens_cache_root  # noqa: E402
from savlens.study import run_study  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"nested": True, "n_test": 40, "seeds": [0, 1, 2, 3, 4], "criteria": ["centroid"]}


def main() -> int:
    committed = json.loads((ROOT / "docs" / "results-text.json").read_text())
    setup = committed["setup"]
    with limit_threads(1):
        model = savlens.load("smollm2-135m")
        feats = {}
        for name in ("topics-a", "topics-b"):
            pool = build_pool(TASKS[name], setup["tasks"][name]["pool_per_class"], max_chars=setup["max_chars"])
            cache = savlens_cache_root() / "experiments" / "text"
            feats[name] = extract_pool(model, "real", TASKS[name], pool, cache, batch_size=16).features
        shots = run_study(feats, COMMON, shots=setup["shots"], k=[setup["k"]], modes=["loo", "in_sample"])
        ks = run_study(
            feats, COMMON, shots=[setup["main_shots_per_class"]], k=[*setup["ks"], 270], modes=["loo", "in_sample"]
        )
        transfer = run_study(
            feats, COMMON, shots=[setup["main_shots_per_class"]], k=[setup["k"]], modes=["loo"], transfer="all"
        )
    checked, diffs = 0, []

    def check(what: str, ours: list[float], theirs: list[float]) -> None:
        nonlocal checked
        checked += len(ours)
        if ours != theirs:
            diffs.append(f"{what}: run_study {ours} vs committed {theirs}")

    arm = {"loo": "sav_loo", "in_sample": "sav_in_sample"}
    for name in feats:
        for n in setup["shots"]:
            for mode in ("loo", "in_sample"):
                ours = [r.accuracy for r in shots.select(target=name, shots=n, mode=mode).rows]
                check(
                    f"shots curve {name} {n} {mode}", ours, committed["shots_curve"][name][str(n)][arm[mode]]["values"]
                )
        for k in [*setup["ks"], 270]:
            for mode in ("loo", "in_sample"):
                ours = [r.accuracy for r in ks.select(target=name, k=k, mode=mode).rows]
                check(f"k curve {name} {k} {mode}", ours, committed["k_curve"][name][str(k)][arm[mode]]["values"])
    tasks = committed["transfer"]["tasks"]
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            ours = [r.accuracy for r in transfer.select(source=a, target=b).rows]
            check(f"transfer {a} -> {b}", ours, committed["transfer"]["accuracy"][i][j]["values"])
    print(f"{checked} per-seed SAV accuracies compared with docs/results-text.json: {len(diffs)} differ")
    for d in diffs:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
