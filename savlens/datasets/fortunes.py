"""Load short texts of Debian's ``fortunes`` package as a text classification task, labelled by category."""

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from savlens.datasets._common import check_examples
from savlens.errors import InputError, LoadError
from savlens.example import Example

__all__ = [
    "APT_INSTALL_FORTUNES",
    "FORTUNES_CATEGORIES",
    "FORTUNES_DIR",
    "FORTUNES_PROMPT",
    "load_fortunes",
    "read_fortune_file",
]

APT_INSTALL_FORTUNES = "apt-get install -y fortunes"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_CATEGORIES = ("science", "politics", "food", "love", "sports")
"""Five topical categories with 92-581 records of at most 200 characters each."""
FORTUNES_PROMPT = "Quote: {text}\nThe topic of this quote is"
"""The prompt of the first SmolLM2 SAV run (0.67 accuracy on these five categories, chance 0.20)."""


def read_fortune_file(path: str | os.PathLike[str]) -> list[str]:
    """Return the records of one fortune file: text between lines holding a single ``%``.

    Records are stripped of surrounding blank lines; empty records are dropped. The file is decoded as
    UTF-8 (Debian's files are), falling back to latin-1 for files that are not valid UTF-8.

    Raises:
        LoadError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f"
        >>> _ = p.write_bytes(b"one\\n%\\ntwo\\nlines\\n%\\n")
        >>> read_fortune_file(p)
        ['one', 'two\\nlines']
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise LoadError(f"read_fortune_file(): cannot read {str(path)!r} ({e}).") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    records: list[str] = []
    current: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "%":
            records.append("\n".join(current))
            current = []
        else:
            current.append(line)
    records.append("\n".join(current))
    return [r.strip("\n") for r in records if r.strip()]


def load_fortunes(
    categories: Sequence[str] = FORTUNES_CATEGORIES,
    max_chars: int | None = 200,
    template: str = FORTUNES_PROMPT,
    root: str | os.PathLike[str] = FORTUNES_DIR,
) -> list[Example]:
    """Load the short records of some fortune categories as examples labelled by category.

    Records longer than ``max_chars`` are left out (selected, never truncated). A record that appears in
    more than one of the chosen categories has no single label and is left out too, with a warning; a
    record repeated inside one category is kept once.

    Args:
        categories: file names under ``root`` (see ``ls /usr/share/games/fortunes``); each is a class.
        max_chars: keep records of at most this many characters (None: all).
        template: a ``str.format`` template for the text, given ``{text}`` (the record).
        root: the fortunes folder.

    Returns:
        Examples by category then file order; label the category, id ``"fortunes/<category>/<index>"``
        (index among the file's records, so ids do not move when ``max_chars`` changes),
        ``meta["record"]`` the raw record.

    Raises:
        LoadError: the fortunes are not installed (names the apt-get command).
        InputError: an unknown category, or a category left with no records.
    """
    root = Path(root)
    if not root.is_dir():
        raise LoadError(f"load_fortunes(): no fortunes in {str(root)!r}; install them with\n    {APT_INSTALL_FORTUNES}")
    if isinstance(categories, str):
        categories = [categories]
    if len(set(categories)) != len(categories):
        raise InputError(f"load_fortunes(categories={list(categories)!r}): a category is listed twice.")
    chosen: dict[str, list[tuple[int, str]]] = {}
    for cat in categories:
        if not cat or os.sep in cat or cat.startswith(".") or not (root / cat).is_file():
            available = sorted(p.name for p in root.iterdir() if p.is_file() and not p.suffix)
            raise InputError(f"load_fortunes(): no category {cat!r} in {str(root)!r}; available: {available}.")
        seen: set[str] = set()
        kept = []
        for i, record in enumerate(read_fortune_file(root / cat)):
            if (max_chars is None or len(record) <= max_chars) and record not in seen:
                seen.add(record)
                kept.append((i, record))
        chosen[cat] = kept
    owners: dict[str, set[str]] = defaultdict(set)
    for cat, kept in chosen.items():
        for _, record in kept:
            owners[record].add(cat)
    ambiguous = {r for r, cats in owners.items() if len(cats) > 1}
    if ambiguous:
        warnings.warn(
            f"load_fortunes(): left out {len(ambiguous)} record(s) found in more than one of {list(categories)}.",
            stacklevel=2,
        )
    examples = []
    for cat, kept in chosen.items():
        n = 0
        for i, record in kept:
            if record in ambiguous:
                continue
            n += 1
            examples.append(
                Example(
                    text=template.format(text=record),
                    label=cat,
                    id=f"fortunes/{cat}/{i}",
                    meta={"category": cat, "record": record, "index": i},
                )
            )
        if n == 0:
            raise InputError(f"load_fortunes(): category {cat!r} has no records of at most {max_chars} characters.")
    return check_examples(examples, "fortunes")
