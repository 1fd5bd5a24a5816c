"""The ``savlens`` commands: one ``cmd_<name>(args) -> exit code`` per subcommand, plus what only they use."""

import argparse
import json
import sys
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from savlens.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    UsageError,
    emit,
    extract_options,
    features_for_sav,
    is_store,
    load_model,
    load_sav,
    need_path,
    read_examples,
    read_features,
    require_model,
    save_figure,
)
from savlens.errors import LabelError
from savlens.stats import classification_report


def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``savlens demo``: few-shot head selection and voting on a model, against its baselines."""
    from savlens import demo

    if args.model is None:  # the parser does not import the demo (an entry point imports libraries, not back)
        args.model = demo.DEFAULT_MODEL
    t0 = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype, attn=args.attn, device=args.device)
    load_s = time.perf_counter() - t0
    n_units = model.n_layers * model.n_heads
    if args.k > n_units:
        raise UsageError(f"--k {args.k} is more than the {n_units} heads of {model.model_id!r}.")
    categories = args.categories.split(",") if args.categories else None
    task = demo.task_for(model, args.task, shots=args.shots, n_test=args.test, seed=args.seed, categories=categories)
    trained = None
    held_out = demo.HELD_OUT.get(args.model, {}).get(task.name)
    if held_out is not None and not getattr(args, "no_held_out", False):
        # the held-out-skill comparison: the headline model was never taught this task's answers; the loaded
        # model (trained on them) is the trained-skill comparison
        trained = model
        t1 = time.perf_counter()
        model = load_model(held_out, dtype=args.dtype, attn=args.attn, device=args.device)
        load_s += time.perf_counter() - t1
        task.other_prompts = {}
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
        trained=trained,
        trained_note="trained on colour questions" if trained is not None else "",
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
            *demo.paired_lines(result.extra.get("paired", {})),
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
    emit(args, payload, text)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Run ``savlens check``: the activation-API check on a tiny model of each family; exit 1 on a mismatch."""
    from savlens.demo import check_family, check_table
    from savlens.testing.tiny import ALL_FAMILIES

    if args.model is not None:
        from savlens.loading import load

        report = load(args.model).spec_report()
        emit(args, report.to_dict(), str(report))
        return EXIT_OK
    unknown = [f for f in args.families if f not in ALL_FAMILIES]
    if unknown:
        raise UsageError(f"--families: unknown {unknown}; choose from {list(ALL_FAMILIES)}.")
    rows = [check_family(f, args.repeats) for f in args.families]
    emit(args, {"families": rows}, check_table(rows))
    return EXIT_OK if all(r["logits_equal"] for r in rows) else EXIT_ERROR


def cmd_extract(args: argparse.Namespace) -> int:
    """Run ``savlens extract``: write every head's features of an examples file to a feature store."""
    from savlens import extract

    examples = read_examples(args, args.examples)
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
        **extract_options(args),
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
    emit(args, payload, text)
    return EXIT_OK


def _label_counts(labels: Sequence[Hashable] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for lab in labels or []:
        if lab is not None:
            out[str(lab)] = out.get(str(lab), 0) + 1
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    """Run ``savlens fit``: score the heads on labelled features, keep the k best and save the SAV."""
    from savlens import SAV

    feats = read_features(args, args.data)  # they record how they were made; the saved SAV keeps that record
    sav = SAV(
        k=args.k, criterion=args.criterion, mode=args.mode, seed=args.seed, reference=args.reference, voting=args.voting
    ).fit(feats)
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
        "voting": args.voting,
    }
    if args.plot and scores is not None:
        from savlens import plot

        payload["plot"] = save_figure(plot.score_heatmap(scores, heads=sav.heads_), args.plot)
    shown = ", ".join(f"{t['head']} ({t['score']:.2f})" if t["score"] is not None else t["head"] for t in top[:10])
    more = f" ... ({len(top) - 10} more)" if len(top) > 10 else ""
    how = "none" if criterion is None else f"{criterion['name']}, {criterion['mode']}"
    text = (
        f"fitted an SAV on {feats.n_examples} examples of {len(sav.classes_)} classes "
        f"({', '.join(map(str, sav.classes_))}); saved to {args.out}\n"
        f"{len(top)} heads (score: {how}): {shown}{more}" + (f"\nplot: {args.plot}" if args.plot else "")
    )
    emit(args, payload, text)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``savlens predict``: label examples with a saved SAV."""
    sav = load_sav(args.sav)
    feats = features_for_sav(args, sav, args.data)
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
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``savlens eval``: accuracy, per-class report and confusion matrix of a saved SAV."""
    from savlens.labels import normalize_label

    sav = load_sav(args.sav)
    feats = features_for_sav(args, sav, args.data)
    if feats.labels is None or any(lab is None for lab in feats.labels):
        raise LabelError(f"savlens eval: {args.data!r} has unlabelled examples; eval needs a label for every one.")
    truth = [normalize_label(v) for v in feats.labels]
    predicted = sav.predict(feats)
    report = classification_report(truth, predicted, sav.classes_)
    if args.plot:
        from savlens import plot

        names = report["classes"]
        fig = plot.confusion_heatmap([str(t) for t in truth], [str(p) for p in predicted], names)
        report["plot"] = save_figure(fig, args.plot)
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
    emit(args, report, "\n".join(lines))
    return EXIT_OK


def cmd_heads(args: argparse.Namespace) -> int:
    """Run ``savlens heads``: list (and plot) a saved SAV's heads."""
    sav = load_sav(args.sav)
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
        payload["plot"] = save_figure(fig, args.plot)
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
    emit(args, payload, "\n".join(lines))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``savlens report``: write the interactive HTML view of a saved SAV on DATA."""
    from savlens.io import write_bytes
    from savlens.report import render, report_data

    sav = load_sav(args.sav)
    examples = model = features = None
    if is_store(need_path(args.data, "data")):
        features = features_for_sav(args, sav, args.data)
    else:
        examples = read_examples(args, args.data)
        model = require_model(args, args.data)
    data = report_data(
        sav,
        examples,
        model=model,
        features=features,
        attention=not args.no_attention,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        progress=not args.quiet,
        title=args.title,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, render(data).encode("utf-8"))
    summary = {k: data.get(k) for k in ("n_examples", "accuracy", "n_wrong", "attention")}
    payload = {"out": str(out), "heads": [s["name"] for s in data["selected"]], **summary}
    accuracy = "" if data["accuracy"] is None else f", accuracy {data['accuracy']:.3f} ({data['n_wrong']} wrong)"
    emit(args, payload, f"wrote {out}: {len(data['selected'])} heads, {data['n_examples']} examples{accuracy}")
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
    """Run ``savlens transfer``: the task x task head-transfer matrix."""
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
        if not is_store(need_path(path, f"task {name!r}")) and model is None:
            model = require_model(args, path)
        feats = read_features(args, path, model=model)
        splits[name] = TaskSplit(*split_features(feats, args.shots, args.test, args.seed))
    baselines = () if args.no_baselines else ("random", "all")
    matrix = transfer_matrix(splits, k=args.k, seed=args.seed, baselines=baselines)
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
            payload["plot"] = save_figure(plot.transfer_heatmap(matrix), args.plot)
        if args.overlay:
            first = next(iter(splits.values())).train
            fig = plot.head_overlay(matrix.heads, n_layers=max(first.layers or (0,)) + 1, n_heads=first.n_heads)
            payload["overlay"] = save_figure(fig, args.overlay)
    text = f"{matrix}\n\n{overlap}" + "".join(f"\n{k}: {payload[k]}" for k in ("plot", "overlay") if k in payload)
    emit(args, payload, text)
    return EXIT_OK


def cmd_study(args: argparse.Namespace) -> int:
    """Run ``savlens study``: a study config file -> the result table (CSV, JSON) and the standard figures."""
    from savlens.study import run_study, write_figures
    from savlens.study.files import load_study_file, task_features

    spec = load_study_file(need_path(args.config, "study config"))
    out_dir = Path(args.out) if args.out else spec.out_dir
    model: Any = None

    def get_model() -> Any:
        nonlocal model
        if model is None:
            m = spec.model
            if "name" not in m:
                raise UsageError(
                    f"{args.config}: a task's store lacks examples that must be extracted; add [model] name = ..."
                )
            model = load_model(
                m["name"], dtype=m.get("dtype", "auto"), attn=m.get("attn", "sdpa"), device=m.get("device")
            )
        return model

    t0 = time.perf_counter()
    tasks, groups = {}, {}
    for name, task in spec.tasks.items():
        feats, group = task_features(
            task, get_model, batch_size=int(spec.model.get("batch_size", 8)), progress=not args.quiet
        )
        tasks[name] = feats
        if group is not None:
            groups[name] = group
    features_s = time.perf_counter() - t0
    table = run_study(tasks, spec.grid, groups=groups or None, progress=not args.quiet)
    files = {"csv": str(table.to_csv(out_dir / "study.csv")), "json": str(table.to_json(out_dir / "study.json"))}
    if spec.figures and not args.no_figures:
        files |= write_figures(table, out_dir)
    payload = {
        "config": str(args.config),
        "out": str(out_dir),
        "files": files,
        "n_rows": len(table),
        "seconds_features": round(features_s, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "summary": table.to_dict()["summary"],
    }
    text = f"{table}\n\n{len(table)} rows; wrote " + ", ".join(files.values())
    emit(args, payload, text)
    return EXIT_OK
