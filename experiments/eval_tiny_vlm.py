"""Evaluate the tiny VLM generatively on held-out easy-VQA test questions, with the controls that matter.

    python experiments/eval_tiny_vlm.py            # 1,000 seeded test questions, ~10 min on 1 core

Conditions (greedy answers, exact match after lower-casing): the trained projector with each question's own
image; the same with images shuffled across questions (grounding control); the same with one mean image
(the train-set mean feature grid) for every question (the model "blind"); a random-init projector. Baselines
without the model: chance, the majority answer of each answer type, and the question-text prior (the most
frequent train answer of each exact question text). A check that the cached-feature path used here gives the
same answers as the full savlens path (Batch.from_examples from the PNG files, then TinyVLM.generate) runs on
the first 64 questions. Writes experiments/results/tiny_vlm_eval.json.

    python experiments/eval_tiny_vlm.py --projector experiments/results/tiny_vlm_projector_balanced.safetensors \
        --tasks yes_no --n 300 --skip random_projector mean_image --check 0 --out /tmp/bal.json   # another projector

For yes/no it also reports the accuracy on the questions whose answer is not the question-text prior's
("against the prior"): a model that answers from the text alone gets 0 there, one that reads the image ~1.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import tiny_vlm_training as T  # noqa: E402
from _tiny_vlm_common import RESULTS, machine, write_json  # noqa: E402

import savlens  # noqa: E402
from savlens.datasets.easyvqa import EASY_VQA_TASKS, load_easy_vqa  # noqa: E402
from savlens.threads import limit_threads  # noqa: E402
from savlens.zoo.tiny_vlm import PROJECTOR_FILE, load_tiny_vlm, read_projector  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="test questions (seeded sample of 9,673)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--check", type=int, default=64, help="questions for the full-pipeline agreement check")
    p.add_argument("--projector", default="trained", help="'trained' (committed weights) or a safetensors path")
    p.add_argument("--tasks", nargs="+", choices=list(EASY_VQA_TASKS), help="keep only these answer types")
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["shuffled_images", "mean_image", "random_projector"],
        help="model conditions to leave out",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS / "tiny_vlm_eval.json")
    a = p.parse_args()
    with limit_threads(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    """Evaluate every condition and baseline; write the results to ``a.out``."""
    model, proc = load_tiny_vlm(a.projector)
    rand = None if "random_projector" in a.skip else load_tiny_vlm("random", seed=0)[0]
    train_items, _ = T.load_vqa_items("train")
    test_items, _ = T.load_vqa_items("test")
    f_train = T.cached_image_features(model, proc, "train")
    f_test = T.cached_image_features(model, proc, "test")
    g = torch.Generator().manual_seed(a.seed)
    if a.tasks:
        test_items = [it for it in test_items if it.task in a.tasks]
    sample = [test_items[i] for i in torch.randperm(len(test_items), generator=g)[: a.n].tolist()]
    img = torch.tensor([it.image for it in sample])
    shuffled = img[torch.randperm(len(img), generator=g)]
    results: dict = {"n": len(sample), "by_task_n": {t: sum(it.task == t for it in sample) for t in EASY_VQA_TASKS}}
    results["projector"] = str(a.projector)

    # baselines without the model
    q_prior, task_major = T.answer_prior(train_items)
    overall_major = max(EASY_VQA_TASKS["yes_no"], key=lambda x: sum(it.answer == x for it in train_items))
    chance = {t: 1 / len(c) for t, c in EASY_VQA_TASKS.items()}
    chance["all"] = sum(chance[it.task] for it in sample) / len(sample)
    base = {
        "chance": chance,
        "majority_per_type": T.accuracy_by_task(sample, [task_major[it.task] for it in sample]),
        "majority_overall": T.accuracy_by_task(sample, [overall_major] * len(sample)),
        "question_prior": T.accuracy_by_task(sample, [q_prior.get(it.question, task_major[it.task]) for it in sample]),
    }
    results["baselines"] = base
    results["majority_answers"] = {"per_type": task_major, "overall": overall_major}

    with torch.no_grad():
        mean_grid = f_train.mean(0, keepdim=True).expand(len(sample), -1, -1)
        conditions = {
            "trained": model.multi_modal_projector(f_test[img]),
            "trained_shuffled_images": model.multi_modal_projector(f_test[shuffled]),
            "trained_mean_image": model.multi_modal_projector(mean_grid),
        }
        if rand is not None:
            conditions["random_projector"] = rand.multi_modal_projector(f_test[img])
        for skip in a.skip:
            conditions.pop(f"trained_{skip}", None)
    # yes/no questions whose answer differs from the question-text prior's: answering them needs the image
    against = [it.task == "yes_no" and it.answer != q_prior.get(it.question, task_major["yes_no"]) for it in sample]
    results["yes_no_against_prior_n"] = sum(against)
    results["conditions"] = {}
    preds_by: dict[str, list[str]] = {}
    for name, emb in conditions.items():
        t0 = time.perf_counter()
        preds = T.evaluate_generative(model, proc, sample, emb)
        preds_by[name] = preds
        seconds = round(time.perf_counter() - t0, 1)
        results["conditions"][name] = {**T.accuracy_by_task(sample, preds), "seconds": seconds}
        if sum(against):
            right = sum(p == it.answer for it, p, x in zip(sample, preds, against) if x)
            results["conditions"][name]["yes_no_against_prior"] = right / sum(against)
        print(name, results["conditions"][name], flush=True)
    if "random_projector" in preds_by:
        results["random_projector_answers"] = sorted(set(preds_by["random_projector"]))[:10]

    # the same answers through the public path: savlens.load, Batch.from_examples (PNG -> processor), generate
    if not a.check:
        sm = None
    elif a.projector == "trained":
        sm = savlens.load("tiny-vlm")
    else:
        sm = savlens.wrap(*load_tiny_vlm(a.projector), model_id=f"tiny-vlm:{Path(a.projector).stem}")
    exs = {e.id: e for e in load_easy_vqa("test")}
    chk = sample[: a.check]
    agree, t0 = 0, time.perf_counter()
    for i in range(0, len(chk), 16):
        assert sm is not None
        part = chk[i : i + 16]
        batch = savlens.Batch.from_examples(sm, [exs[f"easy-vqa/test/{it.index}"] for it in part])
        new = sm.hf.generate(**batch.inputs, max_new_tokens=4)
        for row, pred in zip(new.tolist(), preds_by["trained"][i : i + 16]):
            row = row[: row.index(2)] if 2 in row else row
            agree += T.normalize_answer(sm.tokenizer.decode(row)) == pred
    results["pipeline_agreement"] = {"n": len(chk), "agree": agree, "seconds": round(time.perf_counter() - t0, 1)}
    print("pipeline agreement", agree, "/", len(chk))
    results["projector_sha256"] = read_projector(PROJECTOR_FILE if a.projector == "trained" else a.projector)[1]
    results["machine"] = machine()
    write_json(a.out, results)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
