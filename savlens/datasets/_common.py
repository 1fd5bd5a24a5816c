"""Shared checks of the data loaders: image paths under a root, labels, text length, unique ids."""

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from savlens.errors import InputError, LabelError
from savlens.example import Example

DEFAULT_MAX_TEXT_CHARS = 20_000
"""Texts longer than this many characters are refused (never truncated); pass ``None`` for no limit."""


def resolve_image(value: Any, root: Path, where: str, check_exists: bool = True) -> str:
    """Return the absolute path of an image reference, refusing paths that leave ``root``.

    The check is lexical (``..`` and absolute paths outside ``root``); symlinks inside ``root`` are
    followed when the image is opened, as the user placed them there.

    Args:
        value: the path as written in the data file, relative to ``root`` or absolute.
        root: the folder image paths are resolved against.
        where: the record, for messages (e.g. ``"data.jsonl line 3"``).
        check_exists: raise when no file is there.

    Raises:
        InputError: an empty or non-string path, a path outside ``root``, or a missing file.
    """
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InputError(f"{where}: image path must be a non-empty string; got {value!r}.")
    root_abs = os.path.abspath(root)
    path = os.path.abspath(os.path.join(root_abs, os.fspath(value)))
    if os.path.commonpath([root_abs, path]) != root_abs:
        raise InputError(
            f"{where}: image path {str(value)!r} resolves to {path!r}, outside the root {root_abs!r}; "
            f"paths that escape the root are refused. Pass root= a folder that contains the images."
        )
    if check_exists and not os.path.isfile(path):
        raise InputError(f"{where}: image {str(value)!r} not found: no file at {path!r}.")
    return path


def check_text(text: Any, where: str, max_chars: int | None) -> str:
    """Return ``text`` if it is a string within ``max_chars`` characters; never truncate.

    Raises:
        InputError: not a string, or longer than ``max_chars``.
    """
    if not isinstance(text, str):
        raise InputError(f"{where}: text must be a string; got {type(text).__name__} {text!r}.")
    if max_chars is not None and len(text) > max_chars:
        raise InputError(
            f"{where}: text has {len(text):,} characters, over max_text_chars={max_chars:,}. savlens "
            f"never truncates text; shorten it, or pass a larger max_text_chars (None for no limit)."
        )
    return text


def check_label(label: Any, where: str) -> Hashable:
    """Return ``label`` if it is a usable class label (str, int or bool).

    Raises:
        LabelError: any other type (floats, lists, dicts, null).
    """
    if isinstance(label, (str, int)):  # bool is an int
        return label
    raise LabelError(f"{where}: label must be a string or an integer; got {type(label).__name__} {label!r}.")


def pick_key(record: dict[str, Any], keys: Sequence[str], allow_empty: bool = True) -> str | None:
    """Return the first of ``keys`` present in ``record`` with a non-null (and, unless allowed, non-empty
    string) value, or None."""
    for key in keys:
        value = record.get(key)
        if value is not None and (allow_empty or value != ""):
            return key
    return None


def as_keys(keys: str | Sequence[str]) -> tuple[str, ...]:
    """Return ``keys`` as a tuple of names (a single string is one name)."""
    return (keys,) if isinstance(keys, str) else tuple(keys)


def check_examples(examples: list[Example], source: str) -> list[Example]:
    """Check that ids are unique and label types are not mixed; return ``examples``.

    Raises:
        InputError: two examples share an id.
        LabelError: labels of more than one type (e.g. ``1`` and ``"1"``).
    """
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id is None:
            raise InputError(f"{source}: example {i} has no id.")
        if ex.id in seen:
            raise InputError(
                f"{source}: id {ex.id!r} is used by examples {seen[ex.id]} and {i}; ids must be unique. Fix the ids, "
                "or pass id_key=None to number the records."
            )
        seen[ex.id] = i
    types = sorted({type(ex.label).__name__ for ex in examples if ex.label is not None})
    if len(types) > 1:
        raise LabelError(f"{source}: labels mix the types {', '.join(types)}; use one type (e.g. all strings).")
    return examples
