"""The ``savlens`` argument parser: one function per command, one per option group the commands share."""

import argparse
from collections.abc import Callable

from savlens.cli.commands import (
    cmd_check,
    cmd_demo,
    cmd_eval,
    cmd_extract,
    cmd_fit,
    cmd_heads,
    cmd_predict,
    cmd_report,
    cmd_study,
    cmd_transfer,
)

#: ``add(name, help, description)``: a new subcommand parser.
_Add = Callable[[str, str, str], argparse.ArgumentParser]

#: What predict and eval read, appended to their descriptions.
_SAV_DATA = (
    "DATA is a feature store from the SAV's model, or an examples file run through --model with the SAV's "
    "prompt settings (only the selected heads' layers are read)."
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text with each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


# ---- option groups shared between commands --------------------------------------------------------------


def _output_options(p: argparse.ArgumentParser) -> None:
    """Add the ``output`` group every command has: --json, --quiet, --threads."""
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _model_options(p: argparse.ArgumentParser, required: bool = False, default: str | None = None) -> None:
    """Add the ``model`` group: --model, --dtype, --attn, --device (the arguments of ``load_model``)."""
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


def _batch_size(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add --batch-size (examples per forward pass) to ``g``."""
    g.add_argument("--batch-size", type=int, default=8, help="examples per forward pass")


def _prompt_options(g: argparse._ArgumentGroup) -> None:
    """Add how each example becomes a prompt and which token is read: --template, --no-chat, --system-prompt,
    --positions."""
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


def _example_options(p: argparse.ArgumentParser, prompts: bool = True) -> None:
    """Add the ``examples files`` group: the fields read (``load_examples``), --batch-size and, with ``prompts``,
    the prompt options."""
    g = p.add_argument_group("examples files (when DATA is not a feature store)")
    g.add_argument("--text-key", default="text", help="field holding the text")
    g.add_argument("--label-key", default="label", help="field holding the label")
    g.add_argument("--image-key", nargs="+", default=["image", "images"], help="fields holding image paths")
    g.add_argument("--id-key", default="id", help="field holding a unique id (default: file:index)")
    g.add_argument("--root", default=None, help="folder image paths are relative to (default: the file's folder)")
    g.add_argument(
        "--format",
        default=None,
        choices=["jsonl", "json", "csv", "tsv", "parquet", "folder"],
        help="file format (default: from the suffix)",
    )
    _batch_size(g)
    if prompts:
        _prompt_options(g)


def _data_options(p: argparse.ArgumentParser, *, model_required: bool = False, prompts: bool = True) -> None:
    """Add the groups of a command that reads examples through a model: model, examples files, output."""
    _model_options(p, required=model_required)
    _example_options(p, prompts=prompts)
    _output_options(p)


def _sav_argument(p: argparse.ArgumentParser) -> None:
    """Add the positional SAV: a folder written by ``savlens fit``."""
    p.add_argument("sav", help="a folder written by `savlens fit`")


def _data_argument(p: argparse.ArgumentParser) -> None:
    """Add the positional DATA: a feature store folder, or an examples file with --model."""
    p.add_argument("data", help="a feature store folder, or an examples file with --model")


# ---- the commands ---------------------------------------------------------------------------------------


def _demo(add: _Add) -> None:
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
    _model_options(p, default=None)
    p.add_argument(
        "--task",
        default=None,
        help="the task: easy-vqa-color, easy-vqa-shape, easy-vqa-yes-no or fortunes (default: easy-vqa-color for "
        "VLMs, fortunes for text models)",
    )
    p.add_argument("--no-control", action="store_true", help="skip the control model (tiny-vlm: tiny-vlm-random)")
    p.add_argument(
        "--no-held-out",
        action="store_true",
        help="tiny-vlm on colours: run SAV on tiny-vlm itself (trained on colours) instead of the held-out-skill "
        "comparison (tiny-vlm-heldout-color, never taught to say a colour, as the headline beside tiny-vlm), and "
        "add the prompt that lists the labels",
    )
    p.add_argument("--categories", default=None, help="comma-separated fortunes categories (default: 5 topics)")
    p.add_argument("--shots", type=int, default=20, help="training examples per class")
    p.add_argument("--test", type=int, default=None, help="test examples per class (default 40; easy-VQA 20)")
    p.add_argument("--k", type=int, default=20, help="heads kept")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, folds and tie-breaks")
    _batch_size(p)
    p.add_argument("--out", default="savlens-demo", help="folder for the figures and results.json")
    p.add_argument("--no-figures", action="store_true", help="write no figures")
    _output_options(p)
    p.set_defaults(func=cmd_demo)


def _check(add: _Add) -> None:
    from savlens.testing.tiny import FAMILIES

    p = add(
        "check",
        "per-family activation-API check on tiny models",
        "Trace a padded mixed batch on a tiny random model of each family: logits under the trace vs a plain "
        "HF forward, batched vs one-by-one hook_z, trace overhead. Exit 1 if any logits differ. With --model, "
        "print what savlens inferred about that model instead (paths by role, sizes, positions, image token).",
    )
    p.add_argument(
        "--families", nargs="+", default=list(FAMILIES), help="families to check (any of savlens.testing.tiny)"
    )
    p.add_argument("--model", default=None, help="a checkpoint (hub id, local folder, zoo name): show its spec report")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per family (median reported)")
    _output_options(p)
    p.set_defaults(func=cmd_check)


def _extract(add: _Add) -> None:
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
    _data_options(p, model_required=True)
    p.set_defaults(func=cmd_extract)


def _fit(add: _Add) -> None:
    from savlens.scoring import available_criteria
    from savlens.voting import available_votings

    p = add(
        "fit",
        "feature store or examples -> saved SAV",
        "Score every head on labelled examples, keep the k best and save the SAV (safetensors + JSON).",
    )
    _data_argument(p)
    p.add_argument("--out", required=True, help="folder to save the SAV to")
    p.add_argument("--k", type=int, default=20, help="heads kept")
    p.add_argument(
        "--criterion", default="centroid", choices=list(available_criteria()), help="head-selection criterion"
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=["loo", "kfold", "in_sample"],
        help="how the criterion holds examples out (default: the criterion's; centroid: loo)",
    )
    p.add_argument("--seed", type=int, default=0, help="fold and tie-break seed")
    p.add_argument(
        "--voting",
        default="majority",
        choices=list(available_votings()),
        help="how the heads' votes are counted (weights learned on these examples; docs/voting.md)",
    )
    p.add_argument("--reference", action="store_true", help="reproduce the reference code exactly (in-sample scores)")
    p.add_argument("--plot", default=None, help="also write the head-score heatmap to this PNG")
    _data_options(p)
    p.set_defaults(func=cmd_fit)


def _predict(add: _Add) -> None:
    p = add("predict", "label examples with a saved SAV", f"Label examples with a saved SAV. {_SAV_DATA}")
    _sav_argument(p)
    _data_argument(p)
    p.add_argument("--out", default=None, help="write every prediction to this JSONL file")
    p.add_argument("--show", type=int, default=20, help="predictions printed (text output)")
    _data_options(p, prompts=False)
    p.set_defaults(func=cmd_predict)


def _eval(add: _Add) -> None:
    p = add(
        "eval",
        "accuracy, per-class report and confusion matrix of a saved SAV",
        f"Accuracy, per-class report and confusion matrix of a saved SAV. {_SAV_DATA}",
    )
    _sav_argument(p)
    _data_argument(p)
    p.add_argument("--plot", default=None, help="also write the confusion matrix to this PNG")
    _data_options(p, prompts=False)
    p.set_defaults(func=cmd_eval)


def _heads(add: _Add) -> None:
    p = add(
        "heads",
        "show (and plot) a saved SAV's heads",
        "List a saved SAV's heads in rank order with their scores and where they sit.",
    )
    _sav_argument(p)
    p.add_argument("--plot", default=None, help="write the head-score heatmap (selected heads marked) to this PNG")
    _output_options(p)
    p.set_defaults(func=cmd_heads)


def _report(add: _Add) -> None:
    p = add(
        "report",
        "a saved SAV on examples -> one interactive HTML file",
        "Write one self-contained HTML file (no server, no network; open it in any browser): the layer x head score "
        "map with the selected heads marked; click a head to see, per example, its vote, its cosine similarity to "
        "each class centroid and, with --model and images, its attention over the image; the examples the SAV gets "
        "wrong come first. An examples file shows the text and images; a feature store shows the votes only. "
        + _SAV_DATA,
    )
    _sav_argument(p)
    _data_argument(p)
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--max-examples", type=int, default=200, help="examples listed on the page, wrong ones first")
    p.add_argument(
        "--no-attention", action="store_true", help="skip the heads' attention over the images (one more pass)"
    )
    p.add_argument("--title", default=None, help="the page's title")
    _data_options(p, prompts=False)
    p.set_defaults(func=cmd_report)


def _transfer(add: _Add) -> None:
    p = add(
        "transfer",
        "task x task head-transfer matrix",
        "For each task: split into --shots per class (train) and the rest (test), select heads on train. "
        "Cell (a, b): task a's heads with task b's training centroids, scored on task b's test set. Also prints "
        "the Jaccard overlap of the tasks' heads and the Spearman correlation of their head scores. Two baseline "
        "rows show what any heads would do on each column's task: k random heads (mean of 10 seeded draws) and all "
        "heads voting.",
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
    p.add_argument("--no-baselines", action="store_true", help="skip the random-heads and all-heads rows")
    p.add_argument("--plot", default=None, help="write the transfer matrix to this PNG")
    p.add_argument("--overlay", default=None, help="write the tasks' head locations, overlaid, to this PNG")
    _data_options(p)
    p.set_defaults(func=cmd_transfer)


def _study(add: _Add) -> None:
    p = add(
        "study",
        "a study config file -> result table and figures",
        "Run a generalisation study from a TOML file: tasks (feature stores, or data files extracted into stores "
        "with [model]), a grid of shots, k, seeds, criteria, modes, voting rules and transfer pairs. Splits are "
        "stratified, seeded and disjoint by an optional group key (such as the image). Writes study.csv and "
        "study.json (one row per setting and seed: accuracy, macro-F1, per-class recall, heads, time; summaries "
        "over seeds) and the figures: accuracy vs shots and vs k per task, the transfer matrix with its baselines. "
        "The same config gives the same table. See docs/studies.md.",
    )
    p.add_argument("config", help="the study's TOML file")
    p.add_argument("--out", default=None, help="output folder (default: the config's [output] dir)")
    p.add_argument("--no-figures", action="store_true", help="write no figures")
    _output_options(p)
    p.set_defaults(func=cmd_study)


#: The subcommands, in the order ``savlens --help`` lists them.
_COMMANDS = (_demo, _check, _extract, _fit, _predict, _eval, _heads, _report, _transfer, _study)


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

    for add_command in _COMMANDS:
        add_command(add)
    return parser
