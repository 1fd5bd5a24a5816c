"""SAV's claim on images, where it is testable: does a skill the model was never taught to say live in its heads?

    python experiments/heldout_skill_tiny_vlm.py                # ~15-25 min on 1 core; features cached after
    python experiments/heldout_skill_tiny_vlm.py --render-only  # re-render docs/results.md from the JSON

Models: ``tiny-vlm-heldout-color`` (a projector trained with every colour question left out: it sees colours in
its image tokens but was never taught to say one), ``tiny-vlm`` (the committed projector, trained on every
skill: the trained-skill control) and ``tiny-vlm-random`` (untrained projector: SAV refitted on its own heads).

Tasks: easy-VQA colour (8-way) and shape (3-way; only questions that name no colour, so both models saw them
in training). Per split seed (5 by default): 20 shots per class from easy-VQA train and test questions from
easy-VQA test, disjoint by image and one question per image (:func:`savlens.datasets.image_disjoint_split`).

Rows (accuracy and macro-F1, mean and sd over seeds): SAV (20 heads), the model's zero-shot answer under the
natural prompt (its greedy first answer token, and the answer restricted to the labels: both read from the
same forward pass as the features), all heads voting, the best whole layers at the same feature budget, a
logistic probe on the SAV heads, SAV on the untrained-projector model, class centroids of the vision tower's
pooled output (no LM), SAV fitted on shuffled shot labels, and chance. Paired per seed: SAV vs each zero-shot
answer, exact McNemar p (scipy) and a paired bootstrap 95% interval of the accuracy difference.

Writes experiments/results/tiny_vlm_heldout_skill.json and the "held-out skill" section of docs/results.md
(between its markers), rendered from the JSON by :func:`markdown` (tests/test_heldout_skill_doc.py checks the
committed page against the committed JSON byte for byte).
"""

import argparse
import hashlib
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

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = RESULTS / "tiny_vlm_heldout_skill.json"
DOC = ROOT / "docs" / "results.md"
START, END = "<!-- results:tiny-vlm-heldout:start -->", "<!-- results:tiny-vlm-heldout:end -->"
MODELS = {"heldout": "tiny-vlm-heldout-color", "trained": "tiny-vlm"}
CONTROL = "tiny-vlm-random"
#: task -> (shots per class, test questions per class) of each seed's split
TASKS = {"color": (20, 20), "shape": (20, 40)}
#: task -> (candidate shots, candidate test questions) per class: drawn once (seed POOL_SEED, image-disjoint, one
#: question per image) so that the seeds' splits share forward passes; each seed draws its split from these
POOLS = {"color": (40, 40), "shape": (40, 60)}
POOL_SEED = 1234
ROWS = [
    ("sav", "SAV: 20 heads vote (20 shots per class)"),
    ("zero_shot_greedy", "zero-shot: the model's greedy answer"),
    ("zero_shot_restricted", "zero-shot: answer restricted to the labels"),
    ("all_heads", "SAV with all 270 heads voting"),
    ("layers", "best 2 whole layers, same feature budget"),
    ("probe", "logistic probe on the 20 SAV heads"),
    ("random_projector", "SAV refitted on tiny-vlm-random (untrained projector)"),
    ("image_only", "image only: centroids of the vision tower's pooled output"),
    ("shuffled", "SAV fitted on shuffled shot labels"),
    ("chance", "chance (balanced test set)"),
]


# ---- data ----------------------------------------------------------------------------------------------


def pools(task: str) -> tuple[list, list]:
    """Return (candidate shots from easy-VQA train, candidate test questions from easy-VQA test) of ``task``
    (:data:`POOLS` per class, image-disjoint, one question per image); for shape, only the questions that name
    no colour (the held-out model was trained on exactly those)."""
    from tiny_vlm_training import mentions_skill

    from savlens.datasets import image_disjoint_split, load_easy_vqa

    out = []
    for split in ("train", "test"):
        exs = load_easy_vqa(split, task)
        if task == "shape":
            exs = [e for e in exs if not mentions_skill(str(e.text), "color")]
        out.append(exs)
    return tuple(image_disjoint_split(out[0], out[1], *POOLS[task], seed=POOL_SEED))  # type: ignore[return-value]


def splits(task: str, seeds: list[int]) -> dict[int, tuple[list, list]]:
    from savlens.datasets import image_disjoint_split, image_keys

    shots_pool, test_pool = pools(task)
    n_shots, n_test = TASKS[task]
    out = {}
    for s in seeds:
        train, test = image_disjoint_split(shots_pool, test_pool, n_shots, n_test, seed=s)
        shared = set().union(*map(image_keys, train)) & set().union(*map(image_keys, test))
        assert not shared, shared
        out[s] = (train, test)
    return out


# ---- features (cached) ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    from savlens.zoo.smollm2 import savlens_cache_root

    return savlens_cache_root() / "experiments" / "heldout-skill"


def features(model: Any, task: str, examples: list, tokens: dict) -> Any:
    """Head features + next-token log-probs of ``examples`` (union over seeds), stored per model and task:
    a rerun reads them back."""
    import savlens

    ids = sorted({t for ts in tokens.values() for t in ts})
    key = hashlib.sha256("\n".join(str(e.id) for e in examples).encode()).hexdigest()[:12]
    store = cache_dir() / f"{model.model_id}-{model.hf.config.projector_source.replace(':', '-')}" / f"{task}-{key}"
    return savlens.extract(model, examples, batch_size=16, store=store, progress=False, logits="last", logit_tokens=ids)


def pooled_image_features(model: Any, examples: list) -> Any:
    """The vision tower's pooled output per example (the same frozen tower in every tiny-VLM), cached."""
    import torch

    from savlens.demo.run import image_features

    key = hashlib.sha256("\n".join(str(e.id) for e in examples).encode()).hexdigest()[:16]
    path = cache_dir() / f"image-only-{key}.pt"
    if path.is_file():
        saved = torch.load(path)
        if saved["ids"] == [e.id for e in examples]:
            return saved["x"]
    x = image_features(model, examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": [e.id for e in examples], "x": x}, path)
    return x


# ---- one seed ------------------------------------------------------------------------------------------


def evaluate(
    feats: Any,
    random_feats: Any,
    image_x: Any,
    row_of: dict,
    train: list,
    test: list,
    classes: tuple,
    tokens: dict,
    seed: int,
) -> dict:
    """Fit and score every row on one split; return per-row accuracy / macro-F1, the paired tests and the
    per-example correctness of SAV and zero-shot."""
    from savlens import SAV
    from savlens.cache import HeadFeatures
    from savlens.classifiers import HeadLinearProbe, SparseLayers
    from savlens.compare import layer_budget
    from savlens.demo.run import zero_shot
    from savlens.stats import macro_f1, mcnemar_exact, paired_bootstrap

    tr = [row_of[e.id] for e in train]
    te = [row_of[e.id] for e in test]
    y_tr, y_te = [e.label for e in train], [e.label for e in test]
    f_tr, f_te = feats.subset(tr).with_labels(y_tr), feats.subset(te).with_labels(y_te)
    n_units = f_tr.n_layers * f_tr.n_heads
    preds: dict[str, list] = {}
    sav = SAV(k=20, seed=seed).fit(f_tr)
    preds["sav"] = sav.predict(f_te)
    greedy, restricted = zero_shot(f_te, tokens)
    preds["zero_shot_greedy"], preds["zero_shot_restricted"] = greedy, restricted
    preds["all_heads"] = SAV(k=n_units, seed=seed).fit(f_tr).predict(f_te)
    k_layers = layer_budget(20, f_tr.n_layers, f_tr.n_heads)
    preds["layers"] = SparseLayers(k_layers, seed=seed).fit(f_tr).predict(f_te)
    preds["probe"] = HeadLinearProbe(sav.heads_, seed=seed).fit(f_tr).predict(f_te)
    r_tr, r_te = random_feats.subset(tr).with_labels(y_tr), random_feats.subset(te).with_labels(y_te)
    preds["random_projector"] = SAV(k=20, seed=seed).fit(r_tr).predict(r_te)
    im_tr = HeadFeatures(image_x[tr][:, None, None, :], labels=y_tr)
    im_te = HeadFeatures(image_x[te][:, None, None, :], labels=y_te)
    preds["image_only"] = SAV(k=1, seed=seed).fit(im_tr).predict(im_te)
    perm = np.random.default_rng(10_000 + seed).permutation(len(y_tr))
    preds["shuffled"] = SAV(k=20, seed=seed).fit(f_tr.with_labels([y_tr[i] for i in perm])).predict(f_te)
    majority = Counter(y_te).most_common(1)[0][0]
    preds["chance"] = [majority] * len(y_te)
    rows = {}
    for key, _ in ROWS:
        p = preds[key]
        rows[key] = {
            "accuracy": round(float(np.mean([a == b for a, b in zip(p, y_te)])), 4),
            "macro_f1": round(macro_f1(y_te, p, classes), 4),
        }
    rows["zero_shot_greedy"]["answered_a_label"] = round(float(np.mean([g is not None for g in greedy])), 4)
    top = Counter(int(t) for t in f_te.top_token.tolist())
    paired = {}
    ok_sav = [p == y for p, y in zip(preds["sav"], y_te)]
    for key in ("zero_shot_greedy", "zero_shot_restricted"):
        ok_zs = [p == y for p, y in zip(preds[key], y_te)]
        mc = mcnemar_exact(ok_sav, ok_zs)
        bs = paired_bootstrap(ok_sav, ok_zs, n_resamples=10_000, seed=seed)
        paired[key] = {
            "sav_only": mc.a_only,
            "zero_shot_only": mc.b_only,
            "mcnemar_p": float(f"{mc.p_value:.4g}"),
            "difference": round(bs.difference, 4),
            "ci95": [round(bs.low, 4), round(bs.high, 4)],
        }
    return {
        "n_train": len(tr),
        "n_test": len(te),
        "rows": rows,
        "paired": paired,
        "sav_heads": sav.heads_.to_list()[:10],
        "top_tokens": top.most_common(6),
    }


def summarise(seeds: dict[str, dict]) -> dict:
    out = {}
    for key, _ in ROWS:
        acc = [s["rows"][key]["accuracy"] for s in seeds.values()]
        f1 = [s["rows"][key]["macro_f1"] for s in seeds.values()]
        out[key] = {
            "accuracy_mean": round(float(np.mean(acc)), 4),
            "accuracy_sd": round(float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0, 4),
            "macro_f1_mean": round(float(np.mean(f1)), 4),
            "macro_f1_sd": round(float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0, 4),
        }
    return out


def run(a: argparse.Namespace) -> dict:
    import torch

    import savlens
    from savlens.demo.run import answer_tokens
    from savlens.io import sha256_file
    from savlens.zoo.tiny_vlm import PROJECTOR_FILES

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    load_before = os.getloadavg()
    models = {key: savlens.load(MODELS[key]) for key in a.models}
    control = savlens.load(CONTROL)
    timings["load_models_s"] = round(time.perf_counter() - t_start, 1)
    results: dict[str, Any] = {
        "seeds": a.seeds,
        "k": 20,
        "pools": POOLS,
        "pool_seed": POOL_SEED,
        "tasks": {t: {"classes": None, "shots_per_class": s, "test_per_class": n} for t, (s, n) in TASKS.items()},
        "models": {key: {"name": MODELS[key]} for key in a.models},
        "control": CONTROL,
        "projectors": {
            k: {"file": PROJECTOR_FILES[k].name, "sha256": sha256_file(PROJECTOR_FILES[k])}
            for k in ("trained", "heldout-color")
            if PROJECTOR_FILES[k].is_file()
        },
        "results": {},
    }
    for task in TASKS:
        t0 = time.perf_counter()
        split = splits(task, a.seeds)
        union = list({e.id: e for tr, te in split.values() for e in [*tr, *te]}.values())
        row_of = {e.id: i for i, e in enumerate(union)}
        classes = tuple(dict.fromkeys(e.label for e in split[a.seeds[0]][0]))
        results["tasks"][task]["classes"] = list(classes)
        results["tasks"][task]["distinct_examples"] = len(union)
        tokens = answer_tokens(control.tokenizer, classes)
        random_feats = features(control, task, union, tokens)
        image_x = pooled_image_features(control, union).to(torch.float32)
        timings[f"{task}_control_features_s"] = round(time.perf_counter() - t0, 1)
        for key, model in models.items():
            t1 = time.perf_counter()
            feats = features(model, task, union, tokens)
            timings[f"{task}_{key}_features_s"] = round(time.perf_counter() - t1, 1)
            t2 = time.perf_counter()
            per_seed = {
                str(s): evaluate(feats, random_feats, image_x, row_of, tr, te, classes, tokens, s)
                for s, (tr, te) in split.items()
            }
            for s in per_seed.values():  # readable greedy tokens
                s["top_tokens"] = [[model.tokenizer.decode([t]), n] for t, n in s["top_tokens"]]
            timings[f"{task}_{key}_analysis_s"] = round(time.perf_counter() - t2, 1)
            results["results"].setdefault(key, {})[task] = {"seeds": per_seed, "summary": summarise(per_seed)}
            print(task, key, {k: v["accuracy_mean"] for k, v in results["results"][key][task]["summary"].items()})
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    results["timings"] = timings
    results["run"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python experiments/heldout_skill_tiny_vlm.py" + (" --seeds " + " ".join(map(str, a.seeds))),
    }
    results["machine"] = machine()
    return results


# ---- markdown ------------------------------------------------------------------------------------------


def _ms(s: dict, metric: str) -> str:
    return f"{s[metric + '_mean']:.3f} ± {s[metric + '_sd']:.3f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def claims(r: dict) -> list[str]:
    """The verdicts, each computed from the JSON by the rule it states (significance: exact McNemar p < 0.05)."""
    res, seeds = r["results"], r["seeds"]
    n = len(seeds)
    out = []

    def sig(model: str, task: str, vs: str) -> tuple[int, int]:
        per = res[model][task]["seeds"].values()
        better = sum(s["paired"][vs]["difference"] > 0 and s["paired"][vs]["mcnemar_p"] < 0.05 for s in per)
        worse = sum(s["paired"][vs]["difference"] < 0 and s["paired"][vs]["mcnemar_p"] < 0.05 for s in per)
        return better, worse

    def acc(model: str, task: str, row: str) -> float:
        return float(res[model][task]["summary"][row]["accuracy_mean"])

    named = np.mean(
        [v["rows"]["zero_shot_greedy"]["answered_a_label"] for v in res["heldout"]["color"]["seeds"].values()]
    )
    bg, wg = sig("heldout", "color", "zero_shot_greedy")
    br, wr = sig("heldout", "color", "zero_shot_restricted")
    ok = bg == n and br == n
    out.append(
        f"- **{'reproduced' if ok else 'not reproduced'}**: *the heads hold a skill the model does not say* "
        f"(held-out model, colour). SAV {acc('heldout', 'color', 'sav'):.3f}; the model's greedy answer "
        f"{acc('heldout', 'color', 'zero_shot_greedy'):.3f} (it names a colour in {named:.0%} of the questions), its "
        f"answer restricted to the colour words {acc('heldout', 'color', 'zero_shot_restricted'):.3f}; chance "
        f"{acc('heldout', 'color', 'chance'):.3f}, SAV on shuffled shot labels "
        f"{acc('heldout', 'color', 'shuffled'):.3f}. SAV is significantly better than the greedy answer on {bg}/{n} "
        f"seeds (worse on {wg}) and than the restricted answer on {br}/{n} (worse on {wr}). (Rule: significantly "
        "better than both answers on every seed; beating a greedy answer that rarely names a colour is not enough.)"
    )
    for model, task in (("trained", "color"), ("trained", "shape"), ("heldout", "shape")):
        b, w = sig(model, task, "zero_shot_greedy")
        verdict = "reproduced" if b == n else ("not reproduced: the answer is better" if w == n else "not reproduced")
        out.append(
            f"- **{verdict}**: *SAV beats the model's own answer on a skill it was trained on* "
            f"({MODELS[model]}, {'colour' if task == 'color' else 'shape'}). SAV {acc(model, task, 'sav'):.3f} vs "
            f"greedy answer {acc(model, task, 'zero_shot_greedy'):.3f}; significantly better on {b}/{n} seeds, "
            f"worse on {w}/{n}. (Rule: significantly better on every seed.)"
        )
    for model in ("heldout", "trained"):
        sav, rnd, img = (acc(model, "color", k) for k in ("sav", "random_projector", "image_only"))
        ok = sav - rnd > 0.05 and sav - img > 0.05
        out.append(
            f"- **{'reproduced' if ok else 'not reproduced'}**: *SAV on the VLM's heads beats the image encoder alone "
            f"and the same model with an untrained projector* ({MODELS[model]}, colour). SAV {sav:.3f}, untrained "
            f"projector {rnd:.3f}, vision tower alone {img:.3f}. (Rule: SAV above both by more than 0.05.)"
        )
    for model in ("heldout", "trained"):
        sav, allh, lay, probe = (acc(model, "color", k) for k in ("sav", "all_heads", "layers", "probe"))
        ok = sav - allh > 0.02 and sav - lay > 0.02
        out.append(
            f"- **{'reproduced' if ok else 'not reproduced'}**: *a few selected heads beat all heads and whole "
            f"layers* ({MODELS[model]}, colour). SAV - all heads = {sav - allh:+.3f}, SAV - best 2 layers = "
            f"{sav - lay:+.3f}. (Rule: SAV above both by more than 0.02.)"
        )
    for model in ("heldout", "trained"):
        sav, probe = acc(model, "color", "sav"), acc(model, "color", "probe")
        out.append(
            f"- **{'reproduced' if sav - probe >= -0.02 else 'not reproduced'}**: *the centroid vote is as accurate "
            f"as a linear probe on the same heads* ({MODELS[model]}, colour). SAV - logistic probe = "
            f"{sav - probe:+.3f}. (Rule: SAV at most 0.02 below.)"
        )
    return out


def projector_record(r: dict, name: str) -> dict:
    """The training record of the committed projector ``name`` ("trained", "heldout-color"); it must be the one the
    results were measured with (same sha256), else the page would describe another model."""
    from savlens.zoo.tiny_vlm import PROJECTOR_FILES

    record = json.loads(PROJECTOR_FILES[name].with_suffix(".json").read_text(encoding="utf-8"))
    measured = r["projectors"][name]["sha256"]
    if record["sha256"] != measured:
        raise SystemExit(
            f"the committed {name} projector (sha256 {record['sha256'][:12]}...) is not the one "
            f"{JSON_PATH.name} was measured with ({measured[:12]}...): rerun experiments/heldout_skill_tiny_vlm.py"
        )
    return record


def models_paragraph(r: dict) -> str:
    """The "Models" paragraph, from the two projectors' training records."""
    held, trained = projector_record(r, "heldout-color"), projector_record(r, "trained")
    hc, tc = held["train_config"], trained["train_config"]
    steps, data, val = hc["steps"], held["data"], held["val_accuracy"]
    precision = "bf16 autocast" if hc["bf16"] else "fp32"
    command = "python experiments/train_tiny_vlm.py --hold-out color" + ("" if hc["bf16"] else " --no-bf16")
    command += "" if steps == tc["steps"] else f" --steps {steps}"
    if steps == tc["steps"]:
        how = f"It trained for the committed recipe's {steps:,} steps of {hc['batch_size']}"
    else:
        how = f"Unlike the committed run ({tc['steps']:,} steps) it trained for {steps:,} steps of {hc['batch_size']}"
    how += f" ({data['epochs']:.2f} epochs of its {data['train_questions']:,} questions), in {precision}"
    if hc["bf16"] != tc["bf16"]:
        how += (
            f" instead of the committed run's {'bf16 autocast' if tc['bf16'] else 'fp32'} (with torch 2.14.1 a bf16 "
            "step took about 20 times as long as an fp32 one on this CPU; the record gives the measurement)"
        )
    return (
        "**Models.** `tiny-vlm-heldout-color`: a projector trained like the committed one but with every question "
        f"that asks about or names a colour left out (`{command}`; record in "
        "`savlens/zoo/weights/tiny_vlm_projector_heldout_color.json`, sha256 "
        f"{held['sha256'][:12]}...). {how}. Validation on held-out train images: colour {val['color']:.1%} (it "
        f"was never taught to say one), shape {val['shape']:.1%}, yes/no {val['yes_no']:.1%} (both include "
        "questions that name a colour, which it never saw). It was meant to see colours in its image tokens but "
        "never be taught to say one. `tiny-vlm`: the committed projector, trained on every skill (the "
        "trained-skill control). `tiny-vlm-random`: an untrained projector; its row refits SAV (its own 20 heads) "
        "on that model."
    )


def markdown(r: dict) -> str:
    """The held-out-skill section of docs/results.md, between the markers (deterministic: only the JSON)."""
    m = r["machine"]
    tim = r["timings"]
    seeds = r["seeds"]
    lines = [
        START,
        "## tiny-vlm: a held-out skill. Does SAV read what the model knows but does not say?",
        "",
        f"Generated by `{r['run']['command']}` from `experiments/results/tiny_vlm_heldout_skill.json` on "
        f"{r['run']['date']}, {m['cpu']}, {m['cores']} cores shared with other jobs (load average "
        f"{r['run']['load_average_before'][0]:.1f} before, {r['run']['load_average_after'][0]:.1f} after), "
        f"{m['torch_threads']} torch thread, torch {m['versions']['torch']}. **Wall time {tim['total_s']:.0f} s** "
        "(feature extraction included; "
        + (
            ", ".join(
                f"{k.removesuffix('_features_s').replace('_', ' ')} read from the feature cache"
                for k, v in tim.items()
                if k.endswith("_features_s") and v < 5
            )
            or "nothing read from the feature cache"
        )
        + ", filled by an earlier run of the same code).",
        "",
        models_paragraph(r),
        "",
        "**Splits.** Per seed ("
        + ", ".join(map(str, seeds))
        + "): shots from easy-VQA train, test questions from easy-VQA test, disjoint by image and one question "
        "per image (`savlens.datasets.image_disjoint_split`), drawn from fixed candidate pools (colour "
        f"{r['pools']['color'][0]} shots and {r['pools']['color'][1]} test questions per class, shape "
        f"{r['pools']['shape'][0]} and {r['pools']['shape'][1]}; drawn once, image-disjoint, seed "
        f"{r['pool_seed']}) so that the seeds share forward passes. Colour: "
        f"{r['tasks']['color']['shots_per_class']} shots and {r['tasks']['color']['test_per_class']} test "
        "questions per colour (8 colours). Shape: "
        f"{r['tasks']['shape']['shots_per_class']} shots and {r['tasks']['shape']['test_per_class']} test "
        "questions per shape, only questions that name no colour. Zero-shot answers come from the same forward "
        "pass as the head features, under the natural prompt (the question as trained): greedy = the class whose "
        "answer starts with the model's most likely next token (none if that token starts no class); restricted "
        "= the class with the highest first-token log-prob. Cells: mean ± sd over seeds. Paired tests: exact "
        "McNemar p (scipy `binomtest` on the discordant questions) and a paired bootstrap 95% interval (10,000 "
        "resamples of the test questions) of accuracy(SAV) - accuracy(zero-shot).",
        "",
    ]
    titles = {
        ("heldout", "color"): "Held-out skill: colour on `tiny-vlm-heldout-color` (never taught to say a colour)",
        ("trained", "color"): "Trained skill: colour on `tiny-vlm`",
        ("heldout", "shape"): "Trained skill: shape on `tiny-vlm-heldout-color`",
        ("trained", "shape"): "Trained skill: shape on `tiny-vlm`",
    }
    for (model, task), title in titles.items():
        block = r["results"][model][task]
        sm = block["summary"]
        lines += [f"### {title}", "", "| method | accuracy | macro-F1 |", "|---|---:|---:|"]
        for key, name in ROWS:
            bold = "**" if key in ("sav", "zero_shot_greedy") else ""
            lines.append(f"| {bold}{name}{bold} | {_ms(sm[key], 'accuracy')} | {_ms(sm[key], 'macro_f1')} |")
        lines += [
            "",
            "| seed | n test | SAV | greedy answer | SAV only / answer only | McNemar p | SAV - answer, 95% CI | "
            "restricted answer | SAV only / restricted only | McNemar p | SAV - restricted, 95% CI |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
        ]
        for s, v in block["seeds"].items():
            g, rr = v["paired"]["zero_shot_greedy"], v["paired"]["zero_shot_restricted"]
            lines.append(
                f"| {s} | {v['n_test']} | {v['rows']['sav']['accuracy']:.3f} | "
                f"{v['rows']['zero_shot_greedy']['accuracy']:.3f} | {g['sav_only']} / {g['zero_shot_only']} | "
                f"{_p(g['mcnemar_p'])} | {g['difference']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] | "
                f"{v['rows']['zero_shot_restricted']['accuracy']:.3f} | {rr['sav_only']} / {rr['zero_shot_only']} | "
                f"{_p(rr['mcnemar_p'])} | {rr['difference']:+.3f} [{rr['ci95'][0]:+.3f}, {rr['ci95'][1]:+.3f}] |"
            )
        first = next(iter(block["seeds"].values()))
        answered = np.mean([v["rows"]["zero_shot_greedy"]["answered_a_label"] for v in block["seeds"].values()])
        tops = ", ".join(f"{t.strip() or repr(t)!s} ({c})" for t, c in first["top_tokens"])
        lines += [
            "",
            f"The greedy first token names a class in {answered:.0%} of the test questions (mean over seeds); "
            f"most common greedy first tokens, seed {seeds[0]}: {tops}. SAV heads (seed {seeds[0]}, best first): "
            + ", ".join(first["sav_heads"][:6])
            + ".",
            "",
        ]
    lines += ["### Claims on images: what reproduced and what did not", ""]
    lines += claims(r)
    lines += [
        "- The claims about heads across tasks and sparse heads vs sparse layers on images are decided in the "
        "[transfer section](#tiny-vlm-heads-across-tasks-and-sparse-heads-vs-sparse-layers) below, each by its "
        "own rule.",
    ]
    sm = r["results"]["heldout"]["color"]["summary"]
    readers = {k: sm[k]["accuracy_mean"] for k in ("sav", "probe", "all_heads", "layers")}
    if max(readers.values()) < sm["random_projector"]["accuracy_mean"]:
        lines += [
            "",
            "Reading it: on the held-out model every reader of the heads (SAV "
            f"{readers['sav']:.3f}, logistic probe {readers['probe']:.3f}, all heads {readers['all_heads']:.3f}, "
            f"best layers {readers['layers']:.3f}) is below SAV on the model with an untrained projector "
            f"({sm['random_projector']['accuracy_mean']:.3f}) and far below the vision tower alone "
            f"({sm['image_only']['accuracy_mean']:.3f}). Training the projector without colour questions removed "
            "most of the colour information from the image tokens: the model neither says the colour nor holds it "
            "in its heads, so this test cannot show SAV reading a skill the model knows but does not say. On the "
            "trained skills SAV matches the model's own answer, both at the ceiling.",
        ]
    else:
        greedy, restricted = sm["zero_shot_greedy"]["accuracy_mean"], sm["zero_shot_restricted"]["accuracy_mean"]
        lines += [
            "",
            f"Reading it: on the held-out model the heads hold colour (SAV {readers['sav']:.3f}, logistic probe "
            f"{readers['probe']:.3f}, all heads {readers['all_heads']:.3f}, best layers {readers['layers']:.3f}; "
            f"SAV on the untrained projector {sm['random_projector']['accuracy_mean']:.3f}, the vision tower alone "
            f"{sm['image_only']['accuracy_mean']:.3f}) while the model's own answer gives "
            f"{greedy:.3f} (greedy) and {restricted:.3f} (restricted to the colour words). The claims above say, "
            "seed by seed, whether that gap is significant.",
        ]
    lines += [
        "",
        "Timings (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in tim.items()) + ".",
        END,
    ]
    return "\n".join(lines) + "\n"


def section_of(page: str) -> str:
    """Return the held-out-skill section of a results page (markers included, final newline added)."""
    head, rest = page.split(START, 1)
    body, _ = rest.split(END, 1)
    return START + body + END + "\n"


def write_markdown(path: Path, section: str) -> None:
    old = path.read_text(encoding="utf-8")
    if START in old and END in old:
        head, rest = old.split(START, 1)
        _, tail = rest.split(END, 1)
        new = head + section.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="(for a quick check)")
    p.add_argument("--json", type=Path, default=JSON_PATH)
    p.add_argument("--markdown", type=Path, default=DOC)
    p.add_argument("--render-only", action="store_true", help="only re-render docs/results.md from --json")
    a = p.parse_args(argv)
    if a.render_only:
        results = json.loads(a.json.read_text(encoding="utf-8"))
    else:
        import sklearn.linear_model  # noqa: F401  (BLAS / OpenMP loaded before the thread limit)

        from savlens.threads import limit_threads

        with limit_threads(a.threads):
            results = run(a)
        write_json(a.json, results)
        print("wrote", a.json)
        results = json.loads(a.json.read_text(encoding="utf-8"))  # render what the test renders: the JSON
        if sorted(a.models) != sorted(MODELS):
            return 0
    write_markdown(a.markdown, markdown(results))
    print("wrote the held-out-skill section of", a.markdown)
    for line in claims(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
