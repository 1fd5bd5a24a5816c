"""SAV on the tiny VLM: few-shot head voting on easy-VQA tasks and Fashion-MNIST, against baselines, over
several split seeds with paired tests.

    python experiments/sav_tiny_vlm.py                 # 5 seeds; after experiments/transfer_tiny_vlm.py: minutes
    python experiments/sav_tiny_vlm.py --render-only   # re-render the SAV sections of docs/results.md

Tasks (per split seed: 20 labelled examples per class to fit, disjoint held-out examples to score; easy-VQA:
shots from easy-VQA train and test questions from easy-VQA test, disjoint by image, one question per image;
each seed draws its split from fixed candidate pools, :data:`POOLS`, so that the seeds share forward passes):
easy-VQA questions as yes/no (an interleaved image-text task like MHalu), colour (8-way) and shape
(3-way); Fashion-MNIST test images as a 4-way image-only task (classes 0-3: T-shirt/top, Trouser, Pullover,
Dress; text "What is shown in this image?").

Methods: SAV (k=20, last-token hook_z, leave-one-out centroid scores) on the model and on the
random-projector model; the model's zero-shot answer on the same held-out examples, read from the same
forward pass as the head features (``savlens.demo.run.zero_shot``): greedy = the class whose answer starts with
the model's most likely next token, restricted = the class whose answer tokens have the highest log-prob
(Fashion-MNIST: a second forward pass with the question "Is this a T-shirt, a trouser, a pullover or a dress?
Answer with one word.", each class's words and synonyms such as "pants", "sweater", "tee" as its answers); a
few-shot nearest-class-centroid (cosine) on the pooled EfficientNet features alone (the analogue of the
paper's SigLIP comparison). Per seed and task, SAV is
compared with each other method on the same test examples: exact McNemar p (scipy) and a paired bootstrap 95%
interval of the accuracy difference (``savlens.stats``).

On yes/no it also scores the held-out questions whose answer is not the question-text prior's (the most
frequent easy-VQA train answer of the exact question): answering them needs the image.

Head features and the answer tokens' log-probs go to the feature stores the transfer experiment uses
(``FEATURE_CACHE``/<model id>; the two scripts draw the same splits), so a rerun only refits.
Writes experiments/results/tiny_vlm_sav.json (default projector) or ``--out``; renders the SAV table of
docs/results.md from tiny_vlm_sav.json and the yes/no SAV table of the balanced-projector section from
tiny_vlm_balanced_sav.json + tiny_vlm_sav.json (tests/test_results_render.py checks both byte for byte):

    python experiments/sav_tiny_vlm.py --projector experiments/results/tiny_vlm_projector_balanced.safetensors \
        --model-id tiny-vlm-balanced --tasks easy-vqa/yes_no --no-control \
        --out experiments/results/tiny_vlm_balanced_sav.json
"""

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import FEATURE_CACHE, RESULTS, machine, write_json, write_section  # noqa: E402

import savlens  # noqa: E402
from savlens import SAV  # noqa: E402
from savlens.datasets import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    few_shot_split,
    image_disjoint_split,
    load_easy_vqa,
    load_fashion_mnist,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
MAIN_JSON = RESULTS / "tiny_vlm_sav.json"
BALANCED_JSON = RESULTS / "tiny_vlm_balanced_sav.json"
SAV_MARKERS = ("<!-- results:tiny-vlm-sav:start -->", "<!-- results:tiny-vlm-sav:end -->")
BALANCED_MARKERS = ("<!-- results:tiny-vlm-balanced-sav:start -->", "<!-- results:tiny-vlm-balanced-sav:end -->")
FASHION_4 = FASHION_MNIST_CLASSES[:4]
FASHION = "fashion-mnist/4-way"
FASHION_QUESTION = "Is this a T-shirt, a trouser, a pullover or a dress? Answer with one word."
FASHION_KEYWORDS = {"T-shirt/top": ("t-shirt", "shirt", "top", "tee"), "Trouser": ("trouser", "pant"),
                    "Pullover": ("pullover", "sweater", "jumper"), "Dress": ("dress",)}  # fmt: skip
#: the methods of each task, in table order (``sav`` is compared with each of the others on every seed)
METHODS = ("sav", "sav_random_projector", "zero_shot", "zero_shot_restricted", "centroid_efficientnet_pooled")
COMPARED = METHODS[1:]


#: task -> (candidate shots, candidate test examples) per class: drawn once (seed POOL_SEED; easy-VQA: shots from
#: easy-VQA train, test from easy-VQA test, image-disjoint, one question per image), so that the seeds' splits
#: share forward passes; each seed draws its split (SPLIT) from these
POOLS = {"yes_no": (30, 130), "color": (30, 35), "shape": (30, 70), "fashion": (30, 70)}
#: task -> (shots, test examples) per class of each seed's split
SPLIT = {"yes_no": (20, 100), "color": (20, 25), "shape": (20, 50), "fashion": (20, 50)}
POOL_SEED = 1234


@functools.cache
def pools() -> dict[str, tuple[list[savlens.Example], list[savlens.Example]]]:
    """Each task's candidate (shots, test examples), disjoint by image."""
    out = {}
    for task in ("yes_no", "color", "shape"):
        shots, test = load_easy_vqa("train", task=task), load_easy_vqa("test", task=task)
        out[f"easy-vqa/{task}"] = tuple(image_disjoint_split(shots, test, *POOLS[task], seed=POOL_SEED))
    fm = [e for e in load_fashion_mnist("test", limit=2000) if e.label in FASHION_4]
    out[FASHION] = tuple(few_shot_split(fm, *POOLS["fashion"], seed=POOL_SEED))
    return out  # type: ignore[return-value]


def tasks(seed: int) -> dict[str, tuple[list[savlens.Example], list[savlens.Example]]]:
    """Each task's (shots, test examples) for one split seed, drawn from :func:`pools` (easy-VQA: shots from
    easy-VQA train, test questions from easy-VQA test, disjoint by image and one question per image: several
    questions share an image, and a test question whose image is a shot's would be half answered by the shot)."""
    from savlens.datasets import image_keys

    out = {}
    for name, (shots, test) in pools().items():
        split = SPLIT[name.split("/")[1] if name.startswith("easy") else "fashion"]
        train, held = image_disjoint_split(shots, test, *split, seed=seed)
        assert not set().union(*map(image_keys, train)) & set().union(*map(image_keys, held))
        out[name] = (train, held)
    return out


# ---- the methods ---------------------------------------------------------------------------------------


def answer_token_sets(tokenizer: Any) -> dict[str, dict[str, list[int]]]:
    """Per task, per class: the first tokens of the ways the model could write that class as its answer
    (``savlens.demo.run.answer_tokens``; Fashion-MNIST: the first tokens of each class's words, e.g. "pants"
    for Trouser, a token that starts two classes' words dropped)."""
    from savlens.datasets.easyvqa import EASY_VQA_TASKS
    from savlens.demo.run import answer_tokens

    out = {f"easy-vqa/{t}": answer_tokens(tokenizer, sorted(EASY_VQA_TASKS[t])) for t in ("yes_no", "color", "shape")}
    words = [(c, w) for c, ws in FASHION_KEYWORDS.items() for w in ws]
    firsts = answer_tokens(tokenizer, [w for _, w in words])
    owners: dict[int, set[str]] = {}
    for c, w in words:
        for t in firsts[w]:
            owners.setdefault(t, set()).add(c)
    out[FASHION] = {c: sorted(t for t, o in owners.items() if o == {c}) for c in FASHION_4}
    return out


def logit_ids(tokenizer: Any) -> list[int]:
    """The vocabulary entries whose next-token log-probs the feature stores keep (every task's answer tokens)."""
    return sorted({t for task in answer_token_sets(tokenizer).values() for ts in task.values() for t in ts})


def head_features(model: savlens.Model, exs: list[savlens.Example]) -> savlens.HeadFeatures:
    """Last-token ``hook_z`` of every head plus the next-token log-probs of :func:`logit_ids` and the greedy next
    token, from one forward pass per example; stored per model under ``FEATURE_CACHE`` (shared with
    experiments/transfer_tiny_vlm.py: the same splits, read back on a rerun)."""
    return savlens.extract(
        model, exs, batch_size=16, store=FEATURE_CACHE / model.model_id, progress=False, logits="last",
        logit_tokens=logit_ids(model.tokenizer),
    )  # fmt: skip


@torch.no_grad()
def pooled_features(model: savlens.Model, exs: list[savlens.Example]) -> torch.Tensor:
    out = []
    for i in range(0, len(exs), 50):
        ims = [im for e in exs[i : i + 50] for im in e.load_images()]
        px = model.processor.image_processor(ims)["pixel_values"]
        out.append(model.hf.image_grid_features(px).mean(1))  # mean of the 2x2 cells = global average pool
    return torch.cat(out)


def centroid_predict(train: torch.Tensor, y_train: list, test: torch.Tensor) -> list:
    """Nearest class centroid (cosine) of ``train`` for each row of ``test``."""
    classes = sorted(set(y_train), key=str)
    cent = torch.stack([train[[i for i, y in enumerate(y_train) if y == c]].mean(0) for c in classes])
    sim = F.cosine_similarity(test[:, None], cent[None], dim=-1)
    return [classes[i] for i in sim.argmax(-1).tolist()]


def run_task(
    name: str,
    train: list,
    test: list,
    model: savlens.Model,
    control: savlens.Model | None,
    k: int,
    seed: int,
    prior: dict,
) -> dict[str, Any]:
    """Every method on one task and split seed: accuracies, paired tests of SAV against each other method."""
    from savlens.stats import mcnemar_exact, paired_bootstrap

    truth = [str(e.label) for e in test]
    classes = sorted({str(e.label) for e in train})
    row: dict[str, Any] = {"classes": classes, "n_train": len(train), "n_test": len(test), "chance": 1 / len(classes)}
    hits: dict[str, list[bool]] = {}
    from savlens.demo.run import zero_shot

    tokens = answer_token_sets(model.tokenizer)[name]
    for key, m in (("sav", model), ("sav_random_projector", control)):
        if m is None:
            continue
        f_train, f_test = head_features(m, train), head_features(m, test)
        sav = SAV(k=k, seed=seed).fit(f_train)
        hits[key] = [str(p) == y for p, y in zip(sav.predict(f_test), truth)]
        row[f"{key}_heads"] = [str(h) for h in sav.heads_][:10]
        if key == "sav":
            zs = f_test
    if name == FASHION:  # asked for one word, with the four classes named (the feature prompt names none)
        zs = head_features(model, [savlens.Example(FASHION_QUESTION, images=e.images, label=e.label,
                                                   id=f"{e.id}|asked") for e in test])  # fmt: skip
    greedy, restricted = zero_shot(zs, tokens)
    hits["zero_shot"] = [g is not None and str(g) == y for g, y in zip(greedy, truth)]
    hits["zero_shot_restricted"] = [r is not None and str(r) == y for r, y in zip(restricted, truth)]
    row["zero_shot_names_a_class"] = round(float(np.mean([g is not None for g in greedy])), 4)
    row["zero_shot_top_tokens"] = [
        [model.tokenizer.decode([t]), c] for t, c in Counter(int(t) for t in zs.top_token.tolist()).most_common(6)
    ]
    pred = centroid_predict(pooled_features(model, train), [e.label for e in train], pooled_features(model, test))
    hits["centroid_efficientnet_pooled"] = [str(p) == y for p, y in zip(pred, truth)]
    for key in hits:
        row[key] = round(float(np.mean(hits[key])), 4)
    if name.endswith("yes_no"):
        against = [str(e.label) != prior.get(str(e.text)) for e in test]
        row["n_test_against_prior"] = sum(against)
        for key in [k for k in ("sav", "sav_random_projector", "zero_shot", "zero_shot_restricted") if k in hits]:
            row[f"{key}_against_prior"] = round(float(np.mean([h for h, x in zip(hits[key], against) if x])), 4)
    row["paired"] = {}
    for key in [k for k in COMPARED if k in hits]:
        mc = mcnemar_exact(hits["sav"], hits[key])
        bs = paired_bootstrap(hits["sav"], hits[key], n_resamples=10_000, seed=seed)
        row["paired"][key] = {
            "sav_only": mc.a_only,
            "other_only": mc.b_only,
            "mcnemar_p": float(f"{mc.p_value:.4g}"),
            "difference": round(bs.difference, 4),
            "ci95": [round(bs.low, 4), round(bs.high, 4)],
        }
    return row


def summarise(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per task: mean, sd (ddof=1) and the per-seed values of every accuracy; per comparison, how many seeds
    SAV is significantly better / worse (exact McNemar p < 0.05) and the range of p."""
    out: dict[str, Any] = {}
    names = list(next(iter(per_seed.values())))
    for name in names:
        rows = [s[name] for s in per_seed.values()]
        task: dict[str, Any] = {"n_test": rows[0]["n_test"], "chance": rows[0]["chance"]}
        skip = ("chance", "n_train", "n_test", "seconds")
        for key in [k for k, v in rows[0].items() if isinstance(v, int | float) and k not in skip]:
            v = [r[key] for r in rows]
            task[key] = {
                "mean": round(float(np.mean(v)), 4),
                "sd": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4),
                "values": v,
            }
        task["paired"] = {}
        for key in rows[0]["paired"]:
            ps = [r["paired"][key] for r in rows]
            task["paired"][key] = {
                "difference_mean": round(float(np.mean([p["difference"] for p in ps])), 4),
                "better": sum(p["difference"] > 0 and p["mcnemar_p"] < 0.05 for p in ps),
                "worse": sum(p["difference"] < 0 and p["mcnemar_p"] < 0.05 for p in ps),
                "p_min": min(p["mcnemar_p"] for p in ps),
                "p_max": max(p["mcnemar_p"] for p in ps),
            }
        out[name] = task
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Fit and score every method on every task and seed."""
    from tiny_vlm_training import answer_prior, load_vqa_items

    from savlens.zoo.tiny_vlm import load_tiny_vlm

    t_start, cpu_start, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    if a.projector == "trained":
        model = savlens.load("tiny-vlm")
    else:
        model_id = a.model_id or f"tiny-vlm-{Path(a.projector).stem}"
        model = savlens.wrap(*load_tiny_vlm(a.projector), model_id=model_id)
    control = None if a.no_control else savlens.load("tiny-vlm-random")
    prior = answer_prior(load_vqa_items("train")[0])[0]
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in a.seeds:
        per_seed[str(seed)] = {}
        for name, (train, test) in tasks(seed).items():
            if a.tasks and name not in a.tasks:
                continue
            t0 = time.perf_counter()
            row = run_task(name, train, test, model, control, a.k, seed, prior)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            per_seed[str(seed)][name] = row
            print(seed, name, {k: row[k] for k in METHODS if k in row}, flush=True)
    return {
        "k": a.k,
        "seeds": a.seeds,
        "pools": POOLS,
        "pool_seed": POOL_SEED,
        "split": SPLIT,
        "shots_per_class": 20,
        "projector": str(a.projector),
        "model_id": model.model_id,
        "per_seed": per_seed,
        "summary": summarise(per_seed),
        "run": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds_wall": round(time.perf_counter() - t_start, 1),
            "seconds_cpu": round(time.process_time() - cpu_start, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "features_cache": str(FEATURE_CACHE),
        },
        "machine": machine(),
    }


# ---- markdown ------------------------------------------------------------------------------------------

SHORT = {"easy-vqa/yes_no": "easy-VQA yes/no", "easy-vqa/color": "easy-VQA colour, 8-way",
         "easy-vqa/shape": "easy-VQA shape, 3-way", "fashion-mnist/4-way": "Fashion-MNIST, 4-way"}  # fmt: skip
LABEL = {"sav_random_projector": "SAV on the random-projector model", "zero_shot": "the model's greedy answer",
         "zero_shot_restricted": "its answer restricted to the labels",
         "centroid_efficientnet_pooled": "centroid on EfficientNet features"}  # fmt: skip


def _pm(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _provenance(r: dict[str, Any], json_name: str) -> str:
    m, run_ = r["machine"], r["run"]
    return (
        f"Rendered by `python experiments/sav_tiny_vlm.py --render-only` from `experiments/results/{json_name}`: "
        f"{len(r['seeds'])} split seeds ({', '.join(map(str, r['seeds']))}), run {run_['date']} on {m['cpu']}, "
        f"{m['cores']} cores shared with other jobs (load average {run_['load_average_before'][0]:.1f} before, "
        f"{run_['load_average_after'][0]:.1f} after), {m['torch_threads']} torch thread, torch "
        f"{m['versions']['torch']}, transformers {m['versions']['transformers']}; {run_['seconds_wall']:.0f} s wall, "
        f"{run_['seconds_cpu']:.0f} s CPU (head features read back from the stores the transfer experiment below "
        "fills where it ran first)."
    )


def _paired_table(summary: dict[str, Any], n: int) -> list[str]:
    lines = [
        f"| task | SAV against | mean SAV - other | seeds SAV significantly better / worse (of {n}) "
        "| McNemar p, range |",
        "|---|---|---:|---:|---|",
    ]
    for name, s in summary.items():
        for key in COMPARED:
            p = s["paired"][key]
            lines.append(
                f"| {SHORT[name]} | {LABEL[key]} | {p['difference_mean']:+.3f} | {p['better']} / {p['worse']} | "
                f"{_p(p['p_min'])} - {_p(p['p_max'])} |"
            )
    return lines


def _verdict(p: dict[str, Any], n: int) -> str:
    if p["better"] == n:
        return "significantly better on every seed"
    if p["worse"] == n:
        return "significantly worse on every seed"
    return f"significantly better on {p['better']} of {n} seeds and worse on {p['worse']}"


def markdown_sav(r: dict[str, Any]) -> str:
    """The SAV table of docs/results.md (between :data:`SAV_MARKERS`), from tiny_vlm_sav.json only."""
    s, n = r["summary"], len(r["seeds"])
    lines = [
        SAV_MARKERS[0],
        f"### SAV (k = {r['k']}, {r['shots_per_class']} examples per class, last-token `hook_z`, leave-one-out head "
        f"scores, {n} split seeds)",
        "",
        _provenance(r, "tiny_vlm_sav.json"),
        "",
        "Held-out examples: easy-VQA test questions on images none of the shots (easy-VQA train) use, one question "
        "per image (`savlens.datasets.image_disjoint_split`). Each seed draws its split (20 shots per class; test: "
        + ", ".join(f"{name} {r['split'][name][1]}" for name in r["split"])
        + " per class) from fixed candidate pools drawn once with seed "
        + f"{r['pool_seed']} ("
        + ", ".join(f"{name} {a} shots and {b} test examples" for name, (a, b) in r["pools"].items())
        + " per class), so the seeds share forward passes and differ mostly in their shots. An earlier version of "
        "this table drew shots and test questions both from easy-VQA test and split them by question, so some test "
        "questions shared their image and label with a shot; its numbers are gone. Fashion-MNIST test (classes "
        "T-shirt/top, Trouser, Pullover, Dress; 28x28 grey images; text \"What is shown in this image?\"). "
        "Zero-shot: the trained model's answer to the question, "
        "read from the same forward pass as the head features: greedy = right when the model's most likely next "
        "token starts the right class's answer, restricted = the class whose answer tokens have the highest "
        "log-prob (Fashion-MNIST: a second pass with the question \"Is this a T-shirt, a trouser, a pullover or a "
        'dress? Answer with one word.", each class\'s words and synonyms such as "pants" as its answers). Centroid '
        "baseline: nearest class centroid (cosine) of the globally pooled EfficientNet-Lite0 features, 20 per class "
        "(the image alone; the analogue of the paper's SigLIP comparison). Cells: accuracy, mean ± sd over seeds.",
        "",
        "| task (test examples per seed) | chance | **SAV, trained** | SAV, random projector | zero-shot, trained | "
        "zero-shot restricted | centroid on EfficientNet features |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in s.items():
        lines.append(
            f"| {SHORT[name]} ({t['n_test']}) | {t['chance']:.3f} | {_pm(t['sav'])} | {_pm(t['sav_random_projector'])} "
            f"| {_pm(t['zero_shot'])} | {_pm(t['zero_shot_restricted'])} | {_pm(t['centroid_efficientnet_pooled'])} |"
        )
    lines += [
        "",
        "Paired on the same test examples, per seed (exact McNemar p with scipy; the paired bootstrap 95% intervals "
        "of each seed are in the JSON):",
        "",
        *_paired_table(s, n),
        "",
        "Reading it:",
    ]
    col, yn, fm = s.get("easy-vqa/color"), s.get("easy-vqa/yes_no"), s.get(FASHION)
    if col:
        p = col["paired"]["zero_shot"]
        lines.append(
            f"- On colour, SAV on the trained model's heads ({col['sav']['mean']:.3f}) against the model's own answer "
            f"({col['zero_shot']['mean']:.3f}): {_verdict(p, n)}."
            + (
                " The model was trained on these questions and answers them at the ceiling, so there is little for "
                "the heads to add."
                if col["zero_shot"]["mean"] >= 0.95
                else ""
            )
            + f" SAV - the random-projector model = {col['sav']['mean'] - col['sav_random_projector']['mean']:+.3f} "
            f"(it gets {col['sav_random_projector']['mean']:.3f}); SAV - the image features alone = "
            f"{col['sav']['mean'] - col['centroid_efficientnet_pooled']['mean']:+.3f} (they get "
            f"{col['centroid_efficientnet_pooled']['mean']:.3f}; the global average mixes the shape with a light, "
            "randomly tinted background)."
        )
    sh = s.get("easy-vqa/shape")
    if sh:
        lines.append(
            f"- Shape is easy for every method that sees the image: SAV {sh['sav']['mean']:.3f}, zero-shot "
            f"{sh['zero_shot']['mean']:.3f}, image features alone {sh['centroid_efficientnet_pooled']['mean']:.3f}."
        )
    if yn:
        lines.append(
            f"- Yes/no carries the question-text prior of the table above: SAV {yn['sav']['mean']:.3f}, zero-shot "
            f"{yn['zero_shot']['mean']:.3f}, SAV on the random-projector model "
            f"{yn['sav_random_projector']['mean']:.3f}; on the {yn['n_test_against_prior']['mean']:.0f} test "
            "questions per seed (mean) whose answer is not the prior's they get "
            f"{yn['sav_against_prior']['mean']:.3f}, {yn['zero_shot_against_prior']['mean']:.3f} and "
            f"{yn['sav_random_projector_against_prior']['mean']:.3f}. The image-only centroid is near chance "
            f"({yn['centroid_efficientnet_pooled']['mean']:.3f}), as it should be (the answer depends on the question)."
        )
    if fm:
        first_fm = r["per_seed"][str(r["seeds"][0])][FASHION]
        pr = fm["paired"]["sav_random_projector"]
        pc = fm["paired"]["centroid_efficientnet_pooled"]
        lines.append(
            "- **Fashion-MNIST is out of domain for the projector** (trained only on easy-VQA shapes): SAV on the "
            f"trained model {fm['sav']['mean']:.3f}, on the random-projector model "
            f"{fm['sav_random_projector']['mean']:.3f} (the trained model's SAV is {_verdict(pr, n)} against it), "
            f"the pooled EfficientNet features {fm['centroid_efficientnet_pooled']['mean']:.3f} ({_verdict(pc, n)}); "
            f"zero-shot {fm['zero_shot']['mean']:.3f} (restricted to the class words "
            f"{fm['zero_shot_restricted']['mean']:.3f}; most common first answer tokens, seed {r['seeds'][0]}: "
            + ", ".join(f"{t.strip()!r} ({c})" for t, c in first_fm["zero_shot_top_tokens"][:4])
            + "). The model is an easy-VQA test bed, not a general VLM."
        )
    first = r["per_seed"][str(r["seeds"][0])]
    lines.append(
        f"- The best heads of the trained model, seed {r['seeds'][0]}: "
        + "; ".join(f"{SHORT[t].split(',')[0]} {', '.join(v['sav_heads'][:5])}" for t, v in first.items())
        + "."
    )
    lines.append(SAV_MARKERS[1])
    return "\n".join(lines) + "\n"


def markdown_balanced(b: dict[str, Any], main: dict[str, Any]) -> str:
    """The yes/no SAV table of the balanced-projector section (between :data:`BALANCED_MARKERS`), from
    tiny_vlm_balanced_sav.json and the committed model's rows of tiny_vlm_sav.json (the same splits)."""
    task = "easy-vqa/yes_no"
    sb, sm = b["summary"][task], main["summary"][task]
    n = len(b["seeds"])
    assert b["seeds"] == main["seeds"], "the two runs must use the same split seeds"
    lines = [
        BALANCED_MARKERS[0],
        f"### SAV on yes/no (k = {b['k']}, {b['shots_per_class']} shots per class, the splits of "
        f"`experiments/sav_tiny_vlm.py`, {n} seeds)",
        "",
        _provenance(b, "tiny_vlm_balanced_sav.json")
        + " The committed and random projectors' rows are the yes/no rows of `tiny_vlm_sav.json` (the SAV table "
        "above: the same splits).",
        "",
        f"{sb['n_test']} held-out test questions per seed, {sb['n_test_against_prior']['mean']:.0f} of them against "
        "the prior (mean over seeds). Mean ± sd over seeds.",
        "",
        "| model | SAV | SAV, against the prior | zero-shot | zero-shot, against the prior |",
        "|---|---:|---:|---:|---:|",
        f"| balanced projector (`{b['model_id']}`) | {_pm(sb['sav'])} | {_pm(sb['sav_against_prior'])} | "
        f"{_pm(sb['zero_shot'])} | {_pm(sb['zero_shot_against_prior'])} |",
        f"| committed projector | {_pm(sm['sav'])} | {_pm(sm['sav_against_prior'])} | {_pm(sm['zero_shot'])} | "
        f"{_pm(sm['zero_shot_against_prior'])} |",
        f"| random projector | {_pm(sm['sav_random_projector'])} | {_pm(sm['sav_random_projector_against_prior'])} "
        "| | |",
        f"| centroid on EfficientNet features (image only) | {_pm(sb['centroid_efficientnet_pooled'])} | | | |",
        "",
        "SAV against the model's own answer, paired per seed (balanced projector):",
        "",
        "| seed | SAV | zero-shot | SAV only / answer only | McNemar p | SAV - answer, 95% CI |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for seed in b["seeds"]:
        row = b["per_seed"][str(seed)][task]
        p = row["paired"]["zero_shot"]
        lines.append(
            f"| {seed} | {row['sav']:.3f} | {row['zero_shot']:.3f} | {p['sav_only']} / {p['other_only']} | "
            f"{_p(p['mcnemar_p'])} | {p['difference']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] |"
        )
    seed0 = str(b["seeds"][0])
    pz = sb["paired"]["zero_shot"]
    lines += [
        "",
        f"The balanced model's top yes/no heads (seed {seed0}): "
        + ", ".join(b["per_seed"][seed0][task]["sav_heads"][:5])
        + f"; the committed model's: {', '.join(main['per_seed'][seed0][task]['sav_heads'][:5])}.",
        "",
        f"- **SAV** on the balanced model gets {sb['sav']['mean']:.3f} on yes/no, against "
        f"{sm['sav']['mean']:.3f} on the committed model and {sm['sav_random_projector']['mean']:.3f} on the "
        f"random projector. Against the prior: {sb['sav_against_prior']['mean']:.3f} (balanced), "
        f"{sm['sav_against_prior']['mean']:.3f} (committed), {sm['sav_random_projector_against_prior']['mean']:.3f} "
        f"(random projector). SAV against the balanced model's own answer ({sb['zero_shot']['mean']:.3f}): "
        f"{_verdict(pz, n)} (mean difference {pz['difference_mean']:+.3f}). An SAV-beats-zero-shot gap alone does "
        "not show that the heads read the image: the test questions keep the text prior, the heads encode the "
        "question text, and 20 shots per class are enough for the centroids to pick the prior up again after "
        "training removed it from the answer; the against-the-prior column says whether they read the image.",
        BALANCED_MARKERS[1],
    ]
    return "\n".join(lines) + "\n"


def render(doc: Path = DOC) -> None:
    """Re-render both sections of ``doc`` from the committed JSONs."""
    main = json.loads(MAIN_JSON.read_text(encoding="utf-8"))
    write_section(doc, *SAV_MARKERS, markdown_sav(main))
    if BALANCED_JSON.is_file():
        balanced = json.loads(BALANCED_JSON.read_text(encoding="utf-8"))
        write_section(doc, *BALANCED_MARKERS, markdown_balanced(balanced, main))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="split seeds (also tie-breaks)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS / OpenMP threads")
    p.add_argument("--projector", default="trained", help="'trained' (committed weights) or a safetensors path")
    p.add_argument("--model-id", default=None, help="model id of --projector (default: tiny-vlm-<file stem>)")
    p.add_argument("--tasks", nargs="+", help="keep only these tasks (e.g. easy-vqa/yes_no)")
    p.add_argument("--out", type=Path, default=MAIN_JSON)
    p.add_argument(
        "--no-control", action="store_true", help="skip SAV on tiny-vlm-random (the default run has it, same splits)"
    )
    p.add_argument("--render-only", action="store_true", help="only re-render docs/results.md from the JSONs")
    a = p.parse_args()
    if not a.render_only:
        from savlens.threads import limit_threads

        with limit_threads(a.threads):
            results = run(a)
        write_json(a.out, results)
        print("wrote", a.out)
    if MAIN_JSON.is_file() and "summary" in json.loads(MAIN_JSON.read_text(encoding="utf-8")):
        render()
        print("rendered the SAV sections of", DOC)


if __name__ == "__main__":
    main()
