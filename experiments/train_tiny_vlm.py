"""Train the tiny VLM's projector on easy-VQA train questions (CPU, one thread) and save it with its record.

    python experiments/train_tiny_vlm.py                      # the committed run: 2,400 steps, ~32 min on 1 idle core
    python experiments/train_tiny_vlm.py --steps 300 --out /tmp/pilot.safetensors   # a quick pilot
    python experiments/train_tiny_vlm.py --balance-yes-no \
        --out experiments/results/tiny_vlm_projector_balanced.safetensors     # yes/no text prior removed
    python experiments/train_tiny_vlm.py --hold-out color --no-bf16 \
        --out savlens/zoo/weights/tiny_vlm_projector_heldout_color.safetensors  # never taught to say a colour
        # fp32, because a bf16 step took ~20x as long as an fp32 one with torch 2.14.1 on the CPU; the record
        # (tiny_vlm_projector_heldout_color.json) gives the steps the committed held-out projector trained for

``--hold-out color`` drops every train question that asks about a colour or names one (colour questions, "is
there a red shape?", "what is the teal shape?"); the colour task's sampling weight becomes 0, so the others keep
their ratio (yes/no 2 : shape 1). Validation still covers every task, colour included.

Writes ``<out>`` (fp16 safetensors) and ``<out>.json`` (training config, loss curve, validation accuracy on
held-out train images, timings, machine, sha256). The frozen parts are never saved.
"""

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import tiny_vlm_training as T  # noqa: E402
from _tiny_vlm_common import machine  # noqa: E402

from savlens.datasets.easyvqa import EASY_VQA_TASKS  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402
from savlens.zoo.tiny_vlm import PROJECTOR_FILE, load_tiny_vlm  # noqa: E402


def main() -> None:
    d = T.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch and BLAS / OpenMP threads")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 (about 2x slower)")
    p.add_argument(
        "--task-weights", type=float, nargs=3, default=d.task_weights, help="sampling weights of yes_no color shape"
    )
    p.add_argument(
        "--balance-yes-no",
        action="store_true",
        help="draw yes/no questions so that yes and no are equally likely for every question text",
    )
    p.add_argument(
        "--hold-out",
        choices=sorted(T.HOLD_OUT_SKILLS),
        default=None,
        help="leave every question about this skill (or naming one of its words) out of the training data",
    )
    p.add_argument("--n-val", type=int, default=500, help="validation questions to evaluate after training")
    p.add_argument("--out", type=Path, default=PROJECTOR_FILE)
    a = p.parse_args()
    weights = tuple(a.task_weights) if a.task_weights else None
    if a.hold_out is not None and weights is not None:  # the held-out task gets no rows; the others keep their ratio
        weights = tuple(0.0 if t == a.hold_out else w for t, w in zip(EASY_VQA_TASKS, weights))
    cfg = replace(
        d,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        threads=a.threads,
        bf16=not a.no_bf16,
        task_weights=weights,
        balance_yes_no=a.balance_yes_no,
        hold_out=a.hold_out,
    )
    with limit_threads(cfg.threads):
        run(a, cfg)


def run(a: argparse.Namespace, cfg: T.TrainConfig) -> None:
    """Train the projector with ``cfg``, evaluate it on held-out questions, save it and its record to ``a.out``."""
    t0 = time.perf_counter()
    model, proc = load_tiny_vlm("random", dtype=torch.float32)
    feats = T.cached_image_features(model, proc, "train")
    t_feats = time.perf_counter() - t0
    items, _ = T.load_vqa_items("train")
    first_val = feats.shape[0] - cfg.val_images
    all_train = [it for it in items if it.image < first_val]
    train = T.hold_out_items(all_train, cfg.hold_out)
    val = [it for it in items if it.image >= first_val]  # every task, a held-out one included
    print(f"train {len(train)} questions on {first_val} images; val {len(val)} on {cfg.val_images}; {cfg}")
    res = T.train_projector(model, proc, train, feats, cfg, log=lambda s: print(s, flush=True))
    print(f"trained in {res.seconds:.0f}s")
    g = torch.Generator().manual_seed(cfg.seed)
    val_sample = [val[i] for i in torch.randperm(len(val), generator=g)[: a.n_val].tolist()]
    t1 = time.perf_counter()
    with torch.no_grad():
        emb = model.multi_modal_projector(feats[[it.image for it in val_sample]])
    preds = T.evaluate_generative(model, proc, val_sample, emb)
    val_acc = T.accuracy_by_task(val_sample, preds)
    t_val = time.perf_counter() - t1
    print("val accuracy", {k: round(v, 4) for k, v in val_acc.items()}, f"({t_val:.0f}s)")
    every = cfg.log_every
    chunks = [res.losses[i : i + every] for i in range(0, res.steps, every)]
    curve = [round(sum(c) / len(c), 4) for c in chunks]
    record = {
        "what": "projector of savlens tiny-vlm (EfficientNet-Lite0 -> projector -> SmolLM2-135M-Instruct)",
        "train_config": asdict(cfg),
        "projector": {"layers": "Linear(1280,576) GELU Linear(576,576)", "params": 1_070_208, "dtype": "float16"},
        "image": {"size": model.config.image_size, "grid": model.config.image_grid, "tokens": model.n_image_tokens},
        "data": {
            "train_questions": len(train),
            "train_images": first_val,
            "val_questions": len(val),
            "val_images": cfg.val_images,
            "examples_seen": res.examples,
            "epochs": round(res.examples / len(train), 3),
            **(_balance_record(train) if cfg.balance_yes_no else {}),
            **(_hold_out_record(all_train, train, cfg.hold_out) if cfg.hold_out else {}),
        },
        "loss_curve": {"every_steps": every, "mean_loss": curve},
        "val_accuracy": {"n": len(val_sample), **{k: round(v, 4) for k, v in val_acc.items()}},
        "seconds": {
            "image_features": round(t_feats, 1),
            "training": round(res.seconds, 1),
            "training_cpu": round(res.cpu_seconds, 1),
            "val_eval": round(t_val, 1),
        },
        "machine": machine(),
    }
    sha = T.save_projector(model.multi_modal_projector, a.out, record)
    print(f"saved {a.out} sha256 {sha}")


def _hold_out_record(all_train: list[T.VQAItem], train: list[T.VQAItem], skill: str) -> dict:
    """Describe what :func:`tiny_vlm_training.hold_out_items` dropped."""
    kept = {id(it) for it in train}
    dropped = [it for it in all_train if id(it) not in kept]
    return {
        "hold_out": {
            "skill": skill,
            "words": sorted(T.HOLD_OUT_SKILLS[skill]),
            "dropped_questions": len(dropped),
            "dropped_by_task": dict(sorted(Counter(it.task for it in dropped).items())),
            "kept_by_task": dict(sorted(Counter(it.task for it in train).items())),
            "kept_texts": len({it.question for it in train}),
        }
    }


def _balance_record(train: list[T.VQAItem]) -> dict:
    """Describe what :func:`tiny_vlm_training.yes_no_balance_weights` keeps of the yes/no questions."""
    kept = T.yes_no_balance_weights(train)
    texts = {it.question for it in train if it.task == "yes_no"}
    kept_texts = {train[i].question for i in kept}
    return {
        "balance_yes_no": {
            "yes_no_questions": sum(it.task == "yes_no" for it in train),
            "kept_questions": len(kept),
            "texts": len(texts),
            "kept_texts": len(kept_texts),
            "dropped_texts": sorted(texts - kept_texts),
        }
    }


if __name__ == "__main__":
    main()
