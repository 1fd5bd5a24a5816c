"""SAV on the tiny VLM: few-shot head voting on easy-VQA tasks and Fashion-MNIST, against baselines.

    python experiments/sav_tiny_vlm.py             # ~10 min on 1 core

Tasks (20 labelled examples per class to fit, disjoint held-out examples to score, seeded splits; easy-VQA:
shots from easy-VQA train and test questions from easy-VQA test, disjoint by image, one question per image):
easy-VQA questions as yes/no (an interleaved image-text task like MHalu), colour (8-way) and shape
(3-way); Fashion-MNIST test images as a 4-way image-only task (classes 0-3: T-shirt/top, Trouser, Pullover,
Dress; text "What is shown in this image?").

Methods: SAV (k=20, last-token hook_z, leave-one-out centroid scores) on the trained model and on the
random-projector model; zero-shot generative answers of the trained model on the same held-out examples
(Fashion-MNIST: asked for one word, right when the answer names the right class and no other, synonyms such
as "pants", "sweater", "tee" included); a few-shot nearest-class-centroid (cosine) on the pooled
EfficientNet features alone (the analogue of the paper's SigLIP comparison).
Writes experiments/results/tiny_vlm_sav.json.

    python experiments/sav_tiny_vlm.py --projector experiments/results/tiny_vlm_projector_balanced.safetensors \
        --tasks easy-vqa/yes_no --out experiments/results/tiny_vlm_balanced_sav.json     # another projector

On yes/no it also scores the held-out questions whose answer is not the question-text prior's (the most
frequent easy-VQA train answer of the exact question): answering them needs the image.
"""

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine, write_json  # noqa: E402

import savlens  # noqa: E402
from savlens import SAV  # noqa: E402
from savlens.datasets import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    few_shot_split,
    image_disjoint_split,
    load_easy_vqa,
    load_fashion_mnist,
)
from savlens.threads import limit_threads  # noqa: E402
from savlens.zoo.tiny_vlm import load_tiny_vlm  # noqa: E402
from savlens.zoo.train_projector import answer_prior, load_vqa_items, normalize_answer  # noqa: E402

FASHION_4 = FASHION_MNIST_CLASSES[:4]
FASHION_QUESTION = "Is this a T-shirt, a trouser, a pullover or a dress? Answer with one word."
FASHION_KEYWORDS = {"T-shirt/top": ("t-shirt", "shirt", "top", "tee"), "Trouser": ("trouser", "pant"),
                    "Pullover": ("pullover", "sweater", "jumper"), "Dress": ("dress",)}  # fmt: skip


def tasks(seed: int) -> dict[str, tuple[list[savlens.Example], list[savlens.Example]]]:
    """Each task's (shots, test examples) for one split seed. easy-VQA: shots from easy-VQA train, test questions
    from easy-VQA test, disjoint by image and one question per image (several questions share an image; a test
    question whose image is a shot's would be half answered by the shot)."""
    out = {}
    for task, n_test in (("yes_no", 100), ("color", 25), ("shape", 50)):
        shots, test = load_easy_vqa("train", task=task), load_easy_vqa("test", task=task)
        out[f"easy-vqa/{task}"] = tuple(image_disjoint_split(shots, test, 20, n_test, seed=seed))
    fm = [e for e in load_fashion_mnist("test", limit=2000) if e.label in FASHION_4]
    out["fashion-mnist/4-way"] = tuple(few_shot_split(fm, 20, 50, seed=seed))
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate(model: savlens.Model, exs: list[savlens.Example], batch_size: int = 16) -> list[str]:
    answers = []
    for i in range(0, len(exs), batch_size):
        batch = savlens.Batch.from_examples(model, exs[i : i + batch_size])
        for row in model.hf.generate(**batch.inputs, max_new_tokens=6).tolist():
            row = row[: row.index(2)] if 2 in row else row
            answers.append(normalize_answer(model.tokenizer.decode(row)))
    return answers


@torch.no_grad()
def pooled_features(model: savlens.Model, exs: list[savlens.Example]) -> torch.Tensor:
    out = []
    for i in range(0, len(exs), 50):
        ims = [im for e in exs[i : i + 50] for im in e.load_images()]
        px = model.processor.image_processor(ims)["pixel_values"]
        out.append(model.hf.image_grid_features(px).mean(1))  # mean of the 2x2 cells = global average pool
    return torch.cat(out)


def centroid_accuracy(train: torch.Tensor, y_train: list, test: torch.Tensor, y_test: list) -> float:
    classes = sorted(set(y_train), key=str)
    cent = torch.stack([train[[i for i, y in enumerate(y_train) if y == c]].mean(0) for c in classes])
    sim = F.cosine_similarity(test[:, None], cent[None], dim=-1)
    pred = [classes[i] for i in sim.argmax(-1).tolist()]
    return sum(p == y for p, y in zip(pred, y_test)) / len(y_test)


def zero_shot_accuracy(task: str, answers: list[str], exs: list[savlens.Example]) -> float:
    if task.startswith("fashion"):  # correct when the answer names the right class and no other
        named = [{c for c, kws in FASHION_KEYWORDS.items() if any(k in a for k in kws)} for a in answers]
        hit = [n == {str(e.label)} for n, e in zip(named, exs)]
    else:
        hit = [a == str(e.label) for a, e in zip(answers, exs)]
    return sum(hit) / len(hit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--projector", default="trained", help="'trained' (committed weights) or a safetensors path")
    p.add_argument("--model-id", default=None, help="model id of --projector (default: tiny-vlm-<file stem>)")
    p.add_argument("--tasks", nargs="+", help="keep only these tasks (e.g. easy-vqa/yes_no)")
    p.add_argument("--out", type=Path, default=RESULTS / "tiny_vlm_sav.json")
    a = p.parse_args()
    with limit_threads(a.threads):
        run(a)


def run(a: argparse.Namespace) -> None:
    """Fit and score every method on every task; write the results to ``a.out``."""
    if a.projector == "trained":
        trained = savlens.load("tiny-vlm")
    else:
        model_id = a.model_id or f"tiny-vlm-{Path(a.projector).stem}"
        trained = savlens.wrap(*load_tiny_vlm(a.projector), model_id=model_id)
    hf, proc = load_tiny_vlm("random", seed=0)
    random_model = savlens.wrap(hf, proc, model_id="tiny-vlm-random")
    results: dict = {"k": a.k, "seed": a.seed, "shots_per_class": 20, "projector": str(a.projector), "tasks": {}}
    q_prior = answer_prior(load_vqa_items("train")[0])[0]
    for name, (train, test) in tasks(a.seed).items():
        if a.tasks and name not in a.tasks:
            continue
        against = [str(e.label) != q_prior.get(str(e.text)) for e in test] if name.endswith("yes_no") else []
        classes = sorted({str(e.label) for e in train})
        row: dict = {"classes": classes, "n_train": len(train), "n_test": len(test), "chance": 1 / len(classes)}
        for label, model in (("sav_trained", trained), ("sav_random_projector", random_model)):
            t0 = time.perf_counter()
            f_train = savlens.extract(model, train, batch_size=16, progress=False)
            f_test = savlens.extract(model, test, batch_size=16, progress=False)
            sav = SAV(k=a.k, seed=a.seed).fit(f_train)
            row[label] = sav.score(f_test)
            if any(against):
                pred = sav.predict(f_test)
                hit = [str(p) == str(e.label) for p, e, x in zip(pred, test, against) if x]
                row[f"{label}_against_prior"] = sum(hit) / len(hit)
            row[f"{label}_heads"] = [str(h) for h in sav.heads_][:10]
            row[f"{label}_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        zs_exs = test
        if name.startswith("fashion"):
            zs_exs = [savlens.Example(FASHION_QUESTION, images=e.images, label=e.label, id=e.id) for e in test]
        answers = generate(trained, zs_exs)
        row["zero_shot_trained"] = zero_shot_accuracy(name, answers, test)
        if any(against):
            row["n_test_against_prior"] = sum(against)
            hit = [ans == str(e.label) for ans, e, x in zip(answers, test, against) if x]
            row["zero_shot_trained_against_prior"] = sum(hit) / len(hit)
        row["zero_shot_answers"] = Counter(answers).most_common(12)
        row["zero_shot_seconds"] = round(time.perf_counter() - t0, 1)
        row["centroid_efficientnet_pooled"] = centroid_accuracy(
            pooled_features(trained, train), [e.label for e in train], pooled_features(trained, test),
            [e.label for e in test],
        )  # fmt: skip
        results["tasks"][name] = row
        print(name, {k: v for k, v in row.items() if not isinstance(v, list)}, flush=True)
    results["machine"] = machine()
    write_json(a.out, results)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
