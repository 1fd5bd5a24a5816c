"""The ``savlens`` command line: the demo, feature extraction, fitting, prediction, evaluation, heads, transfer.

Run ``savlens --help`` or ``savlens COMMAND --help``; docs/cli.md has worked examples. Commands that read
data take either a **feature store** (a folder written by ``savlens extract`` or ``savlens.extract(...,
store=...)``) or an **examples file** (JSONL / JSON / CSV / TSV, or a folder of class-named image folders,
read with :func:`savlens.datasets.load_examples`) together with ``--model``.

Exit codes: 0 success; 2 bad arguments or input (a missing or malformed file, an unknown model name, a
store or saved SAV from another model, unusable labels); 1 any other failure; 130 interrupted.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from savlens import errors as _errors
from savlens.demo import DEFAULT_MODEL as DEFAULT_DEMO_MODEL
from savlens.demo import TASKS as DEMO_TASKS
from savlens.errors import (
    FeatureError,
    HookNameError,
    InputError,
    LabelError,
    LoadError,
    PositionError,
    SavlensError,
    StoreError,
    UnsupportedModelError,
)

#: SavlensError classes that mean "your arguments or files were refused" (exit code 2).
INPUT_ERRORS = (
    InputError,
    LabelError,
    FeatureError,
    StoreError,
    LoadError,
    HookNameError,
    PositionError,
    UnsupportedModelError,
    *([_errors.ArgumentError] if hasattr(_errors, "ArgumentError") else []),
)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TINY_PREFIX = "tiny:"


class UsageError(Exception):
    """Bad command-line arguments found after parsing (exit code 2)."""


# ---- shared helpers -------------------------------------------------------------------------------------


def load_model(name: str, *, dtype: str = "auto", attn: str = "sdpa", device: str | None = None) -> Any:
    """Load ``name`` for the CLI: a :func:`savlens.load` name or path, or ``tiny:<family>``.

    ``tiny:<family>`` (``tiny:llama``, ``tiny:qwen2_vl``, ...) builds a tiny random-weight model in memory
    (:func:`savlens.models.tiny.build_tiny`, seed 0): no signal, but every step runs in seconds.
    """
    import torch

    import savlens

    if name.startswith(TINY_PREFIX):
        from savlens.models.tiny import FAMILIES, build_tiny

        family = name.removeprefix(TINY_PREFIX)
        if family not in FAMILIES:
            raise LoadError(
                f"--model {name!r}: no tiny family {family!r}; use one of {[TINY_PREFIX + f for f in FAMILIES]}."
            )
        torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
        tm = build_tiny(family, attn_implementation=attn, dtype=torch_dtype)
        model = savlens.wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
    else:
        model = savlens.load(name, dtype=dtype if dtype == "auto" else getattr(torch, dtype), attn_implementation=attn)
    if device is not None:
        try:
            model.hf.to(device)
        except (RuntimeError, AssertionError) as e:
            raise LoadError(f"--device {device!r}: cannot move the model there ({e}).") from e
    return model


def is_store(path: str | os.PathLike[str]) -> bool:
    """Return True when ``path`` is a feature-store folder (it holds a ``manifest.json``)."""
    return (Path(path) / "manifest.json").is_file()


def _need_path(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {path!r} does not exist.")
    return p


def _read_examples(args: argparse.Namespace, path: str) -> list[Any]:
    from savlens.datasets import load_examples

    _need_path(path, "examples file")
    return load_examples(
        path,
        root=args.root,
        text_key=args.text_key,
        label_key=args.label_key,
        image_key=args.image_key,
        id_key=args.id_key,
        format=args.format,
    )


def _model(args: argparse.Namespace, data: str) -> Any:
    if not getattr(args, "model", None):
        raise UsageError(
            f"{data!r} is an examples file, not a feature store: give --model to extract its features "
            "(or run `savlens extract` first)."
        )
    return load_model(args.model, dtype=args.dtype, attn=args.attn, device=args.device)


def read_features(
    args: argparse.Namespace,
    data: str,
    *,
    layers: Sequence[int] | None = None,
    options: dict[str, Any] | None = None,
    model: Any = None,
) -> Any:
    """Return :class:`HeadFeatures` from a feature store, or from an examples file run through ``--model``."""
    from savlens import extract, open_store

    path = _need_path(data, "data")
    if is_store(path):
        return open_store(path)
    examples = _read_examples(args, data)
    model = model if model is not None else _model(args, data)
    opts = dict(options if options is not None else _extract_options(args))
    names = "blocks.*.attn.hook_z" if layers is None else "blocks.{" + ",".join(map(str, layers)) + "}.attn.hook_z"
    return extract(model, examples, names, batch_size=args.batch_size, progress=not args.quiet, **opts)


def _extract_options(args: argparse.Namespace) -> dict[str, Any]:
    positions: Any = getattr(args, "positions", "last")
    if positions != "last":
        try:
            positions = int(positions)
        except ValueError:
            raise UsageError(f"--positions must be 'last' or an int; got {positions!r}.") from None
    return {
        "positions": positions,
        "prompt_template": args.template,
        "chat": not args.no_chat,
        "system_prompt": args.system_prompt,
    }


def _store_options(path: Path) -> dict[str, Any]:
    from savlens.store import read_manifest

    m = read_manifest(path)
    return {k: m.get(k) for k in ("positions", "prompt_template", "chat", "system_prompt")}


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(text)


def _save_figure(fig: Any, path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _load_sav(path: str) -> Any:
    from savlens import SAV

    p = _need_path(path, "saved SAV")
    if not (p / "manifest.json").is_file():
        raise UsageError(f"{path!r} is not a saved SAV (no manifest.json); write one with `savlens fit ... --out`.")
    return SAV.load(p)


def _features_for_sav(args: argparse.Namespace, sav: Any, data: str) -> Any:
    """Features of ``data`` for a fitted SAV: a store as is, or examples extracted as the SAV's features were."""
    path = _need_path(data, "data")
    if is_store(path):
        from savlens import open_store

        feats = open_store(path)
        same_model = feats.model_id == sav.source_.get("model_id")  # else SAV.predict names the mismatch
        if same_model and feats.prompt_template != sav.source_.get("prompt_template"):
            raise FeatureError(
                f"the store {data!r} was extracted with prompt template {feats.prompt_template!r}, but the SAV in "
                f"{args.sav!r} was fitted on features with {sav.source_.get('prompt_template')!r}; extract it "
                "with the same template."
            )
        return feats
    model = _model(args, data)
    src = sav.source_
    fingerprint = (src.get("meta") or {}).get("fingerprint")
    if src.get("model_id") != model.model_id or (fingerprint and fingerprint != model.fingerprint):
        raise StoreError(
            f"the SAV in {args.sav!r} was fitted on features of {src.get('model_id')!r}, not of --model "
            f"{args.model!r} ({model.model_id}); use the model it was fitted with."
        )
    recorded = (src.get("meta") or {}).get("extract") or {}
    positions = src.get("positions", "last")
    options = {
        "positions": int(positions) if str(positions).lstrip("-").isdigit() else positions,
        "prompt_template": src.get("prompt_template"),
        "chat": recorded.get("chat", True),
        "system_prompt": recorded.get("system_prompt"),
    }
    return read_features(args, data, layers=sav.required_layers, options=options, model=model)


# ---- commands -------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from savlens import demo

    t0 = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype, attn=args.attn, device=args.device)
    load_s = time.perf_counter() - t0
    n_units = model.n_layers * model.n_heads
    if args.k > n_units:
        raise UsageError(f"--k {args.k} is more than the {n_units} heads of {model.model_id!r}.")
    categories = args.categories.split(",") if args.categories else None
    task = demo.task_for(model, args.task, shots=args.shots, n_test=args.test, seed=args.seed, categories=categories)
    control, control_note = None, ""
    if args.model in demo.CONTROLS and not args.no_control:
        control_name, control_note = demo.CONTROLS[args.model]
        control = load_model(control_name, dtype=args.dtype, attn=args.attn, device=args.device)
    if not args.quiet and not args.json:
        print(f"savlens demo: {model!r}", file=sys.stderr)
        print(
            f"task: {task.description}; {args.shots} shots per class, {len(task.test)} test examples, seed {args.seed}",
            file=sys.stderr,
        )
    result = demo.run_demo(
        model,
        task,
        k=args.k,
        seed=args.seed,
        batch_size=args.batch_size,
        out=None if args.no_figures else args.out,
        progress=not args.quiet,
        load_seconds=load_s,
        control=control,
        control_note=control_note,
    )
    result.timings["total_s"] = time.perf_counter() - t0
    payload = result.to_dict()
    if not args.json:
        payload.pop("extra")
    t = result.timings
    text = "\n".join(
        [
            f"\nsavlens demo: {result.model} on {result.task}",
            f"{result.n_train} training examples ({args.shots} per class), {result.n_test} test examples, "
            f"k={result.k}, seed {args.seed}; prompt: {task.prompt_template or '(the question as it is)'!r}",
            "",
            result.table(),
            "",
            f"selected heads (best first): {', '.join(result.heads)}",
            f"time: load {t['load_model_s']:.1f}s, forward passes {t['forward_s']:.1f}s, methods "
            f"{t['methods_s']:.1f}s, baselines and controls {t['baselines_and_controls_s']:.1f}s"
            + (f", figures {t['figures_s']:.1f}s" if "figures_s" in t else "")
            + f"; total {t['total_s']:.1f}s",
            *(
                [f"figures in {args.out}/: " + ", ".join(Path(f).name for f in result.figures)]
                if result.figures
                else []
            ),
        ]
    )
    _emit(args, payload, text)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from savlens.demo import check_family, check_table
    from savlens.models.tiny import FAMILIES

    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        raise UsageError(f"--families: unknown {unknown}; choose from {list(FAMILIES)}.")
    rows = [check_family(f, args.repeats) for f in args.families]
    _emit(args, {"families": rows}, check_table(rows))
    return EXIT_OK if all(r["logits_equal"] for r in rows) else EXIT_ERROR


def cmd_extract(args: argparse.Namespace) -> int:
    from savlens import extract

    examples = _read_examples(args, args.examples)
    model = load_model(args.model, dtype=args.dtype, attn=args.attn, device=args.device)
    import torch

    t0 = time.perf_counter()
    feats = extract(
        model,
        examples,
        args.hook,
        batch_size=args.batch_size,
        dtype=getattr(torch, args.feature_dtype),
        store=args.out,
        progress=not args.quiet,
        **_extract_options(args),
    )
    seconds = time.perf_counter() - t0
    counts = _label_counts(feats.labels)
    payload = {
        "store": args.out,
        "n_examples": feats.n_examples,
        "features": feats.describe(),
        "labels": counts,
        "seconds": seconds,
    }
    text = (
        f"wrote {feats.n_examples} examples to {args.out} in {seconds:.1f}s: {args.hook} at {feats.positions}, "
        f"layer={feats.n_layers} head_index={feats.n_heads} d_head={feats.d_head}\nlabels: "
        + (", ".join(f"{k}: {v}" for k, v in counts.items()) if counts else "none")
    )
    _emit(args, payload, text)
    return EXIT_OK


def _label_counts(labels: Sequence[Hashable] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for lab in labels or []:
        if lab is not None:
            out[str(lab)] = out.get(str(lab), 0) + 1
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    from savlens import SAV

    path = _need_path(args.data, "data")
    options = _store_options(path) if is_store(path) else _extract_options(args)
    feats = read_features(args, args.data)
    sav = SAV(k=args.k, scorer=args.scorer, mode=args.mode, seed=args.seed, reference=args.reference).fit(feats)
    sav.source_.setdefault("meta", {})["extract"] = {k: options.get(k) for k in ("chat", "system_prompt")}
    sav.save(args.out)
    scores = sav.scores_
    top: list[dict[str, Any]] = [{"head": str(h), "score": None if scores is None else scores[h]} for h in sav.heads_]
    criterion = None if scores is None else {"name": scores.criterion, "mode": scores.mode}
    payload = {
        "sav": args.out,
        "k": len(sav.heads_),
        "classes": [str(c) for c in sav.classes_],
        "heads": top,
        "n_examples": feats.n_examples,
        "features": feats.describe(),
        "criterion": criterion,
    }
    if args.plot and scores is not None:
        from savlens import plot

        payload["plot"] = _save_figure(plot.score_heatmap(scores, heads=sav.heads_), args.plot)
    shown = ", ".join(f"{t['head']} ({t['score']:.2f})" if t["score"] is not None else t["head"] for t in top[:10])
    more = f" ... ({len(top) - 10} more)" if len(top) > 10 else ""
    how = "none" if criterion is None else f"{criterion['name']}, {criterion['mode']}"
    text = (
        f"fitted an SAV on {feats.n_examples} examples of {len(sav.classes_)} classes "
        f"({', '.join(map(str, sav.classes_))}); saved to {args.out}\n"
        f"{len(top)} heads (score: {how}): {shown}{more}" + (f"\nplot: {args.plot}" if args.plot else "")
    )
    _emit(args, payload, text)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    sav = _load_sav(args.sav)
    feats = _features_for_sav(args, sav, args.data)
    votes = sav.votes(feats)
    predicted = votes.labels()
    shares = votes.shares
    rows = []
    for i, (eid, label) in enumerate(zip(feats.example_ids or [], predicted)):
        row: dict[str, Any] = {"id": eid, "predicted": label, "confidence": float(shares[i].max())}
        if feats.labels is not None:
            row["label"] = feats.labels[i]
        rows.append(row)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    payload = {"n_examples": len(rows), "predictions": rows, "out": args.out}
    lines = [f"{'id':<28} {'predicted':<16} {'votes':>6}" + ("  label" if feats.labels is not None else "")]
    for r in rows[: args.show]:
        lines.append(
            f"{str(r['id'])[:28]:<28} {str(r['predicted'])[:16]:<16} {r['confidence']:>6.0%}"
            + (f"  {r['label']}" if "label" in r else "")
        )
    if len(rows) > args.show:
        lines.append(f"... {len(rows) - args.show} more" + (f" in {args.out}" if args.out else " (use --out FILE)"))
    elif args.out:
        lines.append(f"written to {args.out}")
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


def classification_report(
    truth: Sequence[Hashable], predicted: Sequence[Hashable], classes: Sequence[Hashable]
) -> dict[str, Any]:
    """Return accuracy, per-class precision / recall / F1 / support and the confusion matrix (rows: true).

    Labels outside ``classes`` (a class the SAV never saw) get their own rows; they are always wrong.

    Example:
        >>> r = classification_report(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
        >>> r["accuracy"], r["per_class"]["b"]["precision"], r["confusion"]
        (0.6666666666666666, 0.5, [[1, 1], [0, 1]])
    """
    labels = list(classes) + sorted({t for t in truth if t not in classes}, key=str)
    index = {c: i for i, c in enumerate(labels)}
    conf = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted):
        conf[index[t]][index[p]] += 1
    per_class = {}
    for c, i in index.items():
        tp = conf[i][i]
        pred_n = sum(row[i] for row in conf)
        true_n = sum(conf[i])
        precision = tp / pred_n if pred_n else 0.0
        recall = tp / true_n if true_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(c)] = {"precision": precision, "recall": recall, "f1": f1, "support": true_n}
    correct = sum(conf[i][i] for i in range(len(labels)))
    return {
        "accuracy": correct / max(1, len(truth)),
        "n_examples": len(truth),
        "classes": [str(c) for c in labels],
        "per_class": per_class,
        "confusion": conf,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from savlens.scoring import normalize_label

    sav = _load_sav(args.sav)
    feats = _features_for_sav(args, sav, args.data)
    if feats.labels is None or any(lab is None for lab in feats.labels):
        raise LabelError(f"savlens eval: {args.data!r} has unlabelled examples; eval needs a label for every one.")
    truth = [normalize_label(v) for v in feats.labels]
    predicted = sav.predict(feats)
    report = classification_report(truth, predicted, sav.classes_)
    if args.plot:
        from savlens import plot

        names = report["classes"]
        fig = plot.confusion_heatmap([str(t) for t in truth], [str(p) for p in predicted], names)
        report["plot"] = _save_figure(fig, args.plot)
    width = max(9, *(len(c) for c in report["classes"])) + 1
    lines = [f"accuracy {report['accuracy']:.3f} on {report['n_examples']} examples ({len(sav.heads_)} heads)", ""]
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for c, m in report["per_class"].items():
        lines.append(f"{c:<{width}}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * width + "".join(f"{c[:8]:>9}" for c in report["classes"]))
    for c, row in zip(report["classes"], report["confusion"]):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>9d}" for v in row))
    if args.plot:
        lines.append(f"\nplot: {args.plot}")
    _emit(args, report, "\n".join(lines))
    return EXIT_OK


def cmd_heads(args: argparse.Namespace) -> int:
    sav = _load_sav(args.sav)
    scores = sav.scores_
    src = sav.source_
    heads = [
        {
            "rank": i + 1,
            "head": str(h),
            "layer": h.layer,
            "head_index": h.head,
            "score": None if scores is None else scores[h],
        }
        for i, h in enumerate(sav.heads_)
    ]
    by_layer: dict[int, int] = {}
    for h in sav.heads_:
        by_layer[h.layer] = by_layer.get(h.layer, 0) + 1
    payload: dict[str, Any] = {
        "sav": args.sav,
        "model_id": src.get("model_id"),
        "classes": [str(c) for c in sav.classes_],
        "criterion": None if scores is None else {"name": scores.criterion, "mode": scores.mode},
        "heads": heads,
        "heads_per_layer": {str(k): v for k, v in sorted(by_layer.items())},
    }
    if args.plot:
        from savlens import plot

        if scores is not None:
            fig = plot.score_heatmap(scores, heads=sav.heads_)
        else:
            fig = plot.head_overlay(
                {"selected": sav.heads_}, n_layers=max(src.get("layers") or [0]) + 1, n_heads=src.get("n_heads")
            )
        payload["plot"] = _save_figure(fig, args.plot)
    lines = [
        f"{len(heads)} heads of the SAV in {args.sav} (model {src.get('model_id')}, classes "
        f"{', '.join(payload['classes'])})",
        f"{'rank':>4}  {'head':<8}{'score':>8}",
    ]
    for h in heads:
        lines.append(
            f"{h['rank']:>4}  {h['head']:<8}" + (f"{h['score']:>8.3f}" if h["score"] is not None else f"{'-':>8}")
        )
    lines.append("heads per layer: " + ", ".join(f"L{k}: {v}" for k, v in sorted(by_layer.items())))
    if args.plot:
        lines.append(f"plot: {args.plot}")
    _emit(args, payload, "\n".join(lines))
    return EXIT_OK


def split_features(feats: Any, shots: int, n_test: int | None, seed: int) -> tuple[Any, Any]:
    """Split labelled features into ``shots`` per class for training and a disjoint test set, as
    :func:`savlens.datasets.few_shot_split` splits examples (same seed, same draw)."""
    from savlens.datasets import few_shot_split
    from savlens.example import Example

    if feats.labels is None:
        raise LabelError("savlens transfer: a task's features have no labels.")
    ids = list(feats.example_ids)
    proxies = [Example(label=lab, id=i) for lab, i in zip(feats.labels, ids)]
    train, test = few_shot_split(proxies, shots, n_test, seed=seed)
    where = {i: n for n, i in enumerate(ids)}
    if not test:
        raise LabelError(f"savlens transfer: no test examples left after {shots} shots per class; lower --shots.")
    return feats.subset([where[e.id] for e in train]), feats.subset([where[e.id] for e in test])


def cmd_transfer(args: argparse.Namespace) -> int:
    from savlens.transfer import TaskSplit, transfer_matrix

    tasks: dict[str, str] = {}
    for spec in args.task:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--task {spec!r}: write it as NAME=PATH (a feature store or examples file).")
        if name in tasks:
            raise UsageError(f"--task: the name {name!r} is given twice.")
        tasks[name] = path
    if len(tasks) < 2:
        raise UsageError("savlens transfer needs at least two --task NAME=PATH.")
    model = None
    splits = {}
    for name, path in tasks.items():
        if not is_store(_need_path(path, f"task {name!r}")) and model is None:
            model = _model(args, path)
        feats = read_features(args, path, model=model)
        splits[name] = TaskSplit(*split_features(feats, args.shots, args.test, args.seed))
    matrix = transfer_matrix(splits, k=args.k, seed=args.seed)
    overlap = matrix.overlap()
    payload = {
        **matrix.to_dict(),
        "jaccard": overlap.jaccard.tolist(),
        "spearman": overlap.spearman.tolist(),
        "n_train": {t: s.train.n_examples for t, s in splits.items()},
        "n_test": {t: s.test.n_examples for t, s in splits.items()},
    }
    if args.plot or args.overlay:
        from savlens import plot

        if args.plot:
            payload["plot"] = _save_figure(plot.transfer_heatmap(matrix), args.plot)
        if args.overlay:
            first = next(iter(splits.values())).train
            fig = plot.head_overlay(matrix.heads, n_layers=max(first.layers or (0,)) + 1, n_heads=first.n_heads)
            payload["overlay"] = _save_figure(fig, args.overlay)
    text = f"{matrix}\n\n{overlap}" + "".join(f"\n{k}: {payload[k]}" for k in ("plot", "overlay") if k in payload)
    _emit(args, payload, text)
    return EXIT_OK


# ---- the parser -----------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text with each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _model_options(p: argparse.ArgumentParser, required: bool = False, default: str | None = None) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        required=required,
        default=default,
        help="a savlens.load name ('smollm2-135m', 'tiny-vlm'), an HF hub id or local folder, or "
        "'tiny:<family>' (a tiny random model, for trying commands out)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype ('auto': the checkpoint's)",
    )
    g.add_argument(
        "--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"], help="attention implementation"
    )
    g.add_argument("--device", default=None, help="move the model here after loading (e.g. 'cuda')")


def _example_options(p: argparse.ArgumentParser, prompts: bool = True) -> None:
    g = p.add_argument_group("examples files (when DATA is not a feature store)")
    g.add_argument("--text-key", default="text", help="field holding the text")
    g.add_argument("--label-key", default="label", help="field holding the label")
    g.add_argument("--image-key", nargs="+", default=["image", "images"], help="fields holding image paths")
    g.add_argument("--id-key", default="id", help="field holding a unique id (default: file:index)")
    g.add_argument("--root", default=None, help="folder image paths are relative to (default: the file's folder)")
    g.add_argument(
        "--format",
        default=None,
        choices=["jsonl", "json", "csv", "tsv", "folder"],
        help="file format (default: from the suffix)",
    )
    g.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    if prompts:
        g.add_argument(
            "--template",
            default=None,
            help="prompt template applied to each text, with {text} (e.g. 'Quote: {text}\\nTopic:')",
        )
        g.add_argument("--no-chat", action="store_true", help="feed raw text instead of the chat template")
        g.add_argument("--system-prompt", default=None, help="a system message (default: the chat template's)")
        g.add_argument(
            "--positions",
            default="last",
            help="token read per example: 'last' or an index in the example's own tokens (e.g. -2)",
        )


def build_parser(prog: str = "savlens") -> argparse.ArgumentParser:
    """Return the ``savlens`` argument parser."""
    from savlens import __version__

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sparse Attention Vectors and per-head interpretability for (multimodal) LMs.",
        epilog="Exit codes: 0 ok; 2 bad arguments or input files; 1 other errors. Docs: docs/cli.md",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"savlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)

    p = add(
        "demo",
        "the SAV method end to end on real weights, offline",
        "Few-shot head selection and voting on a real model, offline, against the model's zero-shot answer and "
        "chance; prints a results table and writes figures. Default: the tiny VLM (real EfficientNet-Lite0 and "
        "SmolLM2-135M-Instruct weights, a projector trained by savlens) on easy-VQA colour questions, 20 shots "
        "per class, 20 test examples per class, against its untrained-projector control and the vision tower "
        "alone, with a figure of the best head's attention over the image. A text model (--model smollm2-135m) "
        "gets five fortunes topics, 40 test examples per class.",
    )
    _model_options(p, default=DEFAULT_DEMO_MODEL)
    p.add_argument(
        "--task",
        choices=list(DEMO_TASKS),
        default=None,
        help="the task (default: easy-vqa-color for VLMs, fortunes for text models)",
    )
    p.add_argument("--no-control", action="store_true", help="skip the control model (tiny-vlm: tiny-vlm-random)")
    p.add_argument("--categories", default=None, help="comma-separated fortunes categories (default: 5 topics)")
    p.add_argument("--shots", type=int, default=20, help="training examples per class")
    p.add_argument("--test", type=int, default=None, help="test examples per class (default 40; easy-VQA 20)")
    p.add_argument("--k", type=int, default=20, help="heads kept")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, folds and tie-breaks")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")
    p.add_argument("--out", default="savlens-demo", help="folder for the figures and results.json")
    p.add_argument("--no-figures", action="store_true", help="write no figures")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = add(
        "check",
        "per-family activation-API check on tiny models",
        "Trace a padded mixed batch on a tiny random model of each family: logits under the trace vs a plain "
        "HF forward, batched vs one-by-one hook_z, trace overhead. Exit 1 if any logits differ.",
    )
    from savlens.models.tiny import FAMILIES

    p.add_argument("--families", nargs="+", default=list(FAMILIES), help="families to check")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per family (median reported)")
    _common(p)
    p.set_defaults(func=cmd_check)

    p = add(
        "extract",
        "examples file -> feature store",
        "Run --model once per example and write every head's features (hook_z at the last token by default) "
        "to a feature store folder: safetensors shards + manifest, resumable after an interruption.",
    )
    p.add_argument("examples", help="examples file (JSONL/JSON/CSV/TSV) or folder of class-named image folders")
    p.add_argument("--out", required=True, help="the feature store folder to write (or resume)")
    p.add_argument("--hook", default="blocks.*.attn.hook_z", help="the per-layer hook to read (a glob)")
    p.add_argument(
        "--feature-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype the features are stored in",
    )
    _model_options(p, required=True)
    _example_options(p)
    _common(p)
    p.set_defaults(func=cmd_extract)

    p = add(
        "fit",
        "feature store or examples -> saved SAV",
        "Score every head on labelled examples, keep the k best and save the SAV (safetensors + JSON).",
    )
    p.add_argument("data", help="a feature store folder, or an examples file with --model")
    p.add_argument("--out", required=True, help="folder to save the SAV to")
    p.add_argument("--k", type=int, default=20, help="heads kept")
    from savlens.scoring import available_scorers

    p.add_argument("--scorer", default="centroid", choices=list(available_scorers()), help="head-selection criterion")
    p.add_argument(
        "--mode",
        default=None,
        choices=["loo", "kfold", "in_sample"],
        help="how the criterion holds examples out (default: the criterion's; centroid: loo)",
    )
    p.add_argument("--seed", type=int, default=0, help="fold and tie-break seed")
    p.add_argument("--reference", action="store_true", help="reproduce the reference code exactly (in-sample scores)")
    p.add_argument("--plot", default=None, help="also write the head-score heatmap to this PNG")
    _model_options(p)
    _example_options(p)
    _common(p)
    p.set_defaults(func=cmd_fit)

    for name, help, func in (
        ("predict", "label examples with a saved SAV", cmd_predict),
        ("eval", "accuracy, per-class report and confusion matrix of a saved SAV", cmd_eval),
    ):
        p = add(
            name,
            help,
            help[0].upper() + help[1:] + ". DATA is a feature store from the SAV's model, or an "
            "examples file run through --model with the SAV's prompt settings (only the selected heads' "
            "layers are read).",
        )
        p.add_argument("sav", help="a folder written by `savlens fit`")
        p.add_argument("data", help="a feature store folder, or an examples file with --model")
        if name == "predict":
            p.add_argument("--out", default=None, help="write every prediction to this JSONL file")
            p.add_argument("--show", type=int, default=20, help="predictions printed (text output)")
        else:
            p.add_argument("--plot", default=None, help="also write the confusion matrix to this PNG")
        _model_options(p)
        _example_options(p, prompts=False)
        _common(p)
        p.set_defaults(func=func)

    p = add(
        "heads",
        "show (and plot) a saved SAV's heads",
        "List a saved SAV's heads in rank order with their scores and where they sit.",
    )
    p.add_argument("sav", help="a folder written by `savlens fit`")
    p.add_argument("--plot", default=None, help="write the head-score heatmap (selected heads marked) to this PNG")
    _common(p)
    p.set_defaults(func=cmd_heads)

    p = add(
        "transfer",
        "task x task head-transfer matrix",
        "For each task: split into --shots per class (train) and the rest (test), select heads on train. "
        "Cell (a, b): task a's heads with task b's training centroids, scored on task b's test set. Also prints "
        "the Jaccard overlap of the tasks' heads and the Spearman correlation of their head scores.",
    )
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME=PATH",
        required=True,
        help="a task: a name and a feature store or examples file (repeat, at least twice)",
    )
    p.add_argument("--shots", type=int, default=20, help="training examples per class of each task")
    p.add_argument("--test", type=int, default=None, help="test examples per class (default: all the rest)")
    p.add_argument("--k", type=int, default=20, help="heads per task")
    p.add_argument("--seed", type=int, default=0, help="split and tie-break seed")
    p.add_argument("--plot", default=None, help="write the transfer matrix to this PNG")
    p.add_argument("--overlay", default=None, help="write the tasks' head locations, overlaid, to this PNG")
    _model_options(p)
    _example_options(p)
    _common(p)
    p.set_defaults(func=cmd_transfer)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "savlens") -> int:
    """Run the ``savlens`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or bad arguments (2)
        return int(e.code or 0)
    command = f"{prog} {args.command}" if prog == "savlens" else prog
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1; got {args.threads}.")
            import torch

            torch.set_num_threads(args.threads)
        for name in ("k", "shots", "batch_size", "show", "repeats"):
            value = getattr(args, name, None)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1; got {value}.")
        if getattr(args, "test", None) is not None and args.test < 1:
            raise UsageError(f"--test must be >= 1; got {args.test}.")
        return int(args.func(args))
    except UsageError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SavlensError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, INPUT_ERRORS) else EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
