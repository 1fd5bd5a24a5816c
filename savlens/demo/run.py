"""The demo's forward passes, its results table and :func:`run_demo`: SAV against zero-shot answering,
other classifiers on the same features, a control model, image-only features and chance."""

import json
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.demo.figures import write_figures
from savlens.demo.tasks import DemoTask
from savlens.errors import ArgumentError, InputError
from savlens.example import Example
from savlens.inputs import Batch
from savlens.loading import Model
from savlens.sav import SAV
from savlens.stats import wilson_interval
from savlens.tracing import trace

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
    interval = None if acc is None else list(wilson_interval(round(acc * n), n))
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


def _paired(
    sav_pred: Sequence[Any],
    greedy: Sequence[Any],
    restricted: Sequence[Any],
    truth: Sequence[Any],
    seed: int,
) -> dict[str, Any]:
    """SAV vs the model's greedy and restricted answers on the same questions: exact McNemar p and a paired
    bootstrap 95% interval of accuracy(SAV) - accuracy(answer)."""
    from savlens.stats import mcnemar_exact, paired_bootstrap

    ok = [p == t for p, t in zip(sav_pred, truth)]
    out: dict[str, Any] = {}
    for name, answers in (("greedy", greedy), ("restricted", restricted)):
        if not answers or (name == "restricted" and all(a is None for a in answers)):
            continue  # no label has its own token: there is no restricted answer
        other = [a == t for a, t in zip(answers, truth)]
        mc, bs = mcnemar_exact(ok, other), paired_bootstrap(ok, other, seed=seed)
        out[name] = {
            "sav_only": mc.a_only,
            "answer_only": mc.b_only,
            "mcnemar_p": mc.p_value,
            "difference": bs.difference,
            "ci95": [bs.low, bs.high],
        }
    return out


def paired_lines(paired: dict[str, Any]) -> list[str]:
    """Describe :func:`run_demo`'s ``extra["paired"]``: one line per model and answer kind."""
    lines = []
    for model_id, kinds in paired.items():
        for kind, v in kinds.items():
            what = "greedy answer" if kind == "greedy" else "answer restricted to the labels"
            lines.append(
                f"{model_id}: SAV - its {what} = {v['difference']:+.3f}, paired bootstrap 95% interval "
                f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]; SAV alone right on {v['sav_only']}, the answer alone "
                f"on {v['answer_only']}: exact McNemar p = {v['mcnemar_p']:.2g}"
            )
    return lines


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
    trained: Model | None = None,
    trained_note: str = "",
) -> DemoResult:
    """Run the demo on a loaded model and task; write figures under ``out`` (None: no figures).

    Besides SAV and the model's zero-shot answers: with ``control`` (a model with the same architecture and
    something removed, e.g. ``savlens.load("tiny-vlm-random")``: the projector untrained), an SAV fitted the
    same way on its heads; with a vision-language model and one image per example, nearest class centroids
    (cosine, the same shots) on the vision tower's pooled output alone, without the language model (the
    analogue of the paper's image-encoder comparison).

    With ``trained`` (the held-out-skill comparison: ``model`` was never taught to say the task's answers, e.g.
    ``tiny-vlm-heldout-color`` on colours, and ``trained`` is the same architecture trained on them,
    ``tiny-vlm``): SAV and the zero-shot answers of ``trained`` on the same split as rows of their own, and
    for both models the paired comparison of SAV with the model's own answer (exact McNemar p and a paired
    bootstrap 95% interval of the accuracy difference, in ``extra["paired"]``). Also, always: an SAV fitted on
    shuffled shot labels (the floor of the procedure).
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
        if progress:
            split = "test" if examples is task.test else "train"
            prompt = next((w for w, t in task.other_prompts.items() if t == template), "")
            where = f"{m.model_id}, {split}" + (f", {prompt}" if prompt else "")
            print(f"savlens demo: head features ({where})", file=sys.stderr, flush=True)
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
    probe = HeadLinearProbe(sav.heads_, seed=seed).fit(train)
    rows.append(_row(f"logistic probe on the same {k} heads", probe.score(test), n))
    greedy, restricted = zero_shot(test, tokens)
    rows += zero_shot_rows(greedy, restricted, truth, has_tokens=any(tokens.values()))
    labels = list(train.labels or [])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = SAV(k=k, seed=seed).fit(train.with_labels([labels[i] for i in order]))
    rows.append(_row(f"SAV fitted on shuffled shot labels ({k} heads)", shuffled.score(test), n))
    paired: dict[str, Any] = {model.model_id: _paired(sav_pred, greedy, restricted, truth, seed)}
    t_methods = time.perf_counter() - t1
    t2 = time.perf_counter()
    if trained is not None:
        tag = f"trained skill, {trained.model_id}" + (f" ({trained_note})" if trained_note else "")
        tr_train = features(trained, task.train, task.prompt_template, False)
        tr_test = features(trained, task.test, task.prompt_template, True)
        tr_pred = SAV(k=k, seed=seed).fit(tr_train).predict(tr_test)
        rows.append(_row(f"{tag}: SAV, {k} heads", accuracy(tr_pred, truth), n))
        g, r = zero_shot(tr_test, tokens)
        rows += [
            {**row, "method": f"{tag}: {row['method']}"}
            for row in zero_shot_rows(g, r, truth, has_tokens=any(tokens.values()))
        ]
        paired[trained.model_id] = _paired(tr_pred, g, r, truth, seed)
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
        name = "image only: class centroids of the vision tower's pooled output (no LM)"
        try:
            pooled = {
                split: HeadFeatures(image_features(model, exs)[:, None, None, :], labels=[e.label for e in exs])
                for split, exs in (("train", task.train), ("test", task.test))
            }
            rows.append(_row(name, SAV(k=1, seed=seed).fit(pooled["train"]).score(pooled["test"]), n))
        except InputError:  # tiles or flattened patches (LLaVA-OneVision, Qwen2-VL): no per-image vector
            rows.append(_row(name, None, n, "the vision tower gives no per-image output"))
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
            "paired": paired,
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
