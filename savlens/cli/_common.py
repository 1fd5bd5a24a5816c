"""What the ``savlens`` commands share: exit codes, the error classes that mean exit 2, model and data loading."""

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from savlens.errors import (
    ArgumentError,
    FeatureError,
    HookNameError,
    InputError,
    LabelError,
    LoadError,
    PositionError,
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
    ArgumentError,
)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TINY_PREFIX = "tiny:"


class UsageError(Exception):
    """Bad command-line arguments found after parsing (exit code 2)."""


def load_model(name: str, *, dtype: str = "auto", attn: str = "sdpa", device: str | None = None) -> Any:
    """Load ``name`` for the CLI: a :func:`savlens.load` name or path, or ``tiny:<family>``.

    ``tiny:<family>`` (``tiny:llama``, ``tiny:qwen2_vl``, ...) builds a tiny random-weight model in memory
    (:func:`savlens.testing.tiny.build_tiny`, seed 0): no signal, but every step runs in seconds.
    """
    import torch

    import savlens

    if name.startswith(TINY_PREFIX):
        from savlens.testing.tiny import FAMILIES, build_tiny

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


def need_path(path: str, what: str) -> Path:
    """Return ``path`` as a Path; raise UsageError naming it as ``what`` when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {path!r} does not exist.")
    return p


def read_examples(args: argparse.Namespace, path: str) -> list[Any]:
    """Read the examples file ``path`` with the command's ``--text-key``, ``--label-key``, ... options."""
    from savlens.datasets import load_examples

    need_path(path, "examples file")
    return load_examples(
        path,
        root=args.root,
        text_key=args.text_key,
        label_key=args.label_key,
        image_key=args.image_key,
        id_key=args.id_key,
        format=args.format,
    )


def require_model(args: argparse.Namespace, data: str) -> Any:
    """Load ``--model`` to extract the examples file ``data``; raise UsageError when none was given."""
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

    path = need_path(data, "data")
    if is_store(path):
        given = [flag for flag, set_ in _prompt_flags(args).items() if set_]
        if given:
            raise UsageError(
                f"{' '.join(given)} set how examples files are extracted; {data!r} is a feature store, whose "
                "features were extracted already (with the settings in its manifest). Drop them."
            )
        return open_store(path)
    examples = read_examples(args, data)
    model = model if model is not None else require_model(args, data)
    opts = dict(options if options is not None else extract_options(args))
    names = "blocks.*.attn.hook_z" if layers is None else "blocks.{" + ",".join(map(str, layers)) + "}.attn.hook_z"
    return extract(model, examples, names, batch_size=args.batch_size, progress=not args.quiet, **opts)


def extract_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the :func:`savlens.extract` prompt options (positions, template, chat, system prompt) of ``args``."""
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


def _prompt_flags(args: argparse.Namespace) -> dict[str, bool]:
    """Which prompt options (``--template``, ``--no-chat``, ...) ``args`` sets to other than their defaults."""
    return {
        "--template": getattr(args, "template", None) is not None,
        "--no-chat": bool(getattr(args, "no_chat", False)),
        "--system-prompt": getattr(args, "system_prompt", None) is not None,
        "--positions": getattr(args, "positions", "last") != "last",
    }


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as one JSON object with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(text)


def save_figure(fig: Any, path: str) -> str:
    """Save ``fig`` to ``path`` (making its folder) and return ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def load_sav(path: str) -> Any:
    """Load the SAV saved in the folder ``path``; raise UsageError when it is missing or not a saved SAV."""
    from savlens import SAV

    p = need_path(path, "saved SAV")
    if not (p / "manifest.json").is_file():
        raise UsageError(f"{path!r} is not a saved SAV (no manifest.json); write one with `savlens fit ... --out`.")
    return SAV.load(p)


def features_for_sav(args: argparse.Namespace, sav: Any, data: str) -> Any:
    """Features of ``data`` for a fitted SAV: a store as it is (:meth:`SAV.predict` refuses one made otherwise
    than the SAV's training features), or an examples file run through ``--model`` by :meth:`SAV.extract` (the
    SAV's own extraction options, its layers only)."""
    path = need_path(data, "data")
    if is_store(path):
        from savlens import open_store

        return open_store(path)
    examples = read_examples(args, data)
    model = require_model(args, data)
    return sav.extract(model, examples, batch_size=args.batch_size, progress=not args.quiet)
