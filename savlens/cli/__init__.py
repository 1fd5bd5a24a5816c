"""The ``savlens`` command line: the demo, extraction, fitting, prediction, evaluation, heads, transfer, studies.

Run ``savlens --help`` or ``savlens COMMAND --help``; docs/cli.md has worked examples. Commands that read
data take either a **feature store** (a folder written by ``savlens extract`` or ``savlens.extract(...,
store=...)``) or an **examples file** (JSONL / JSON / CSV / TSV, or a folder of class-named image folders,
read with :func:`savlens.datasets.load_examples`) together with ``--model``.

Exit codes: 0 success; 2 bad arguments or input (a missing or malformed file, an unknown model name, a
store or saved SAV from another model, unusable labels); 1 any other failure; 130 interrupted.

The parser is built in ``savlens.cli.parser``, the commands run in ``savlens.cli.commands``, and what they
share (exit codes, model and data loading) is in ``savlens.cli._common``.
"""

import sys
from collections.abc import Sequence

from savlens.cli._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    INPUT_ERRORS,
    TINY_PREFIX,
    UsageError,
    is_store,
    load_model,
    read_features,
)
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
    split_features,
)
from savlens.cli.parser import build_parser
from savlens.errors import SavlensError


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


__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "INPUT_ERRORS",
    "TINY_PREFIX",
    "UsageError",
    "build_parser",
    "cmd_check",
    "cmd_demo",
    "cmd_eval",
    "cmd_extract",
    "cmd_fit",
    "cmd_heads",
    "cmd_predict",
    "cmd_report",
    "cmd_study",
    "cmd_transfer",
    "is_store",
    "load_model",
    "main",
    "read_features",
    "split_features",
]
