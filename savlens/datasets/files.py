"""Load labelled examples from JSONL, JSON, CSV / TSV files or a folder of class-named image folders."""

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from savlens.datasets._common import (
    DEFAULT_MAX_TEXT_CHARS,
    as_keys,
    check_examples,
    check_label,
    check_text,
    pick_key,
    resolve_image,
)
from savlens.errors import InputError, LabelError
from savlens.example import Example

__all__ = ["IMAGE_EXTENSIONS", "load_examples", "read_records"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in {"jsonl", "json", "csv", "tsv", "parquet", "folder"}:
            raise InputError(f"format={fmt!r}: expected one of 'jsonl', 'json', 'csv', 'tsv', 'parquet', 'folder'.")
        return fmt
    if path.is_dir():
        return "folder"
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise InputError(
            f"cannot tell the format of {str(path)!r} from its suffix; expected .jsonl, .json, .csv, .tsv, "
            f".parquet or a folder, or pass format=."
        ) from None


def read_records(path: str | os.PathLike[str], format: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for each record of a JSONL, JSON (a list of objects), CSV or TSV file.

    ``where`` names the record for messages (``"data.jsonl line 3"``, ``"data.json record 0"``,
    ``"data.csv row 2"``, counting the header as row 1). Blank JSONL lines are skipped.

    Raises:
        InputError: a missing file, unparsable JSON, or a record that is not an object.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if not path.is_file():
        raise InputError(f"no data file at {str(path)!r}.")
    try:
        yield from _records(path, fmt)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8."
        ) from None
    except csv.Error as e:
        raise InputError(f"{path.name}: not a readable {fmt.upper()} file ({e}).") from None


def _records(path: Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    name = path.name
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{name} line {lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg}); fix or remove that line.") from e
                except (ValueError, RecursionError) as e:  # too deeply nested, integers too long
                    raise InputError(f"{where}: not valid JSON for savlens ({type(e).__name__}: {e}).") from None
                if not isinstance(record, dict):
                    raise InputError(
                        f"{where}: expected a JSON object; got {type(record).__name__}. Write one object per line."
                    )
                yield where, record
    elif fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{name}: not valid JSON ({e.msg}, line {e.lineno}).") from e
        except (ValueError, RecursionError) as e:  # too deeply nested, integers too long (not UnicodeDecodeError)
            if isinstance(e, UnicodeDecodeError):
                raise
            raise InputError(f"{name}: not valid JSON for savlens ({type(e).__name__}: {e}).") from None
        if not isinstance(data, list):
            raise InputError(f"{name}: expected a JSON list of objects; got {type(data).__name__}.")
        for i, record in enumerate(data):
            where = f"{name} record {i}"
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object; got {type(record).__name__}.")
            yield where, record
    elif fmt == "parquet":
        from savlens.datasets.tables import read_parquet

        for i, record in enumerate(read_parquet(path)):
            yield f"{name} row {i}", record
    elif fmt in {"csv", "tsv"}:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            for row, record in enumerate(reader, start=2):
                yield f"{name} row {row}", {k: v for k, v in record.items() if k is not None}
    else:
        raise InputError(f"{str(path)!r} is a folder; read_records() reads files.")


def _image_values(value: Any, where: str) -> list[Any]:
    """Return the image references of one field: a path, a list, or (CSV) a JSON list or ``;``-list."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: images field {value!r} is not a JSON list ({e.msg}).") from e
            except (ValueError, RecursionError) as e:
                raise InputError(f"{where}: images field {value[:80]!r} is not a JSON list ({e}).") from None
            if isinstance(parsed, list):
                return parsed
        return [p.strip() for p in text.split(";") if p.strip()]
    return [value]


def example_from_record(
    record: dict[str, Any],
    where: str,
    default_id: str,
    root: Path,
    *,
    text_keys: Sequence[str],
    label_keys: Sequence[str],
    image_keys: Sequence[str],
    id_key: str | None,
    template: str | None,
    max_text_chars: int | None,
    check_images: bool,
    require_label: bool,
    meta: dict[str, Any],
) -> Example:
    """Build one :class:`Example` from a record; see :func:`load_examples` for the rules."""
    text_key = pick_key(record, text_keys)
    label_key = pick_key(record, label_keys, allow_empty=False)
    used = {k for k in (text_key, label_key, id_key) if k is not None}
    if template is not None:
        fields = {k: v for k, v in record.items() if k not in label_keys}
        if text_key is not None:
            fields["text"] = record[text_key]
        try:
            text = template.format_map(fields)
        except (KeyError, IndexError) as e:
            raise InputError(
                f"{where}: template {template!r} needs the field {e}; the record has "
                f"{sorted(fields)} (label fields are not available to templates)."
            ) from e
        except (ValueError, AttributeError, TypeError) as e:
            raise InputError(
                f"{where}: template {template!r} cannot be filled ({e}); use named fields such as {{text}}, and "
                "double literal braces ({{ }})."
            ) from None
    elif text_key is None:
        raise InputError(f"{where}: no text field; looked for {list(text_keys)}, the record has {sorted(record)}.")
    else:
        text = record[text_key]
    text = check_text(text, where, max_text_chars)

    images: list[str] = []
    for key in image_keys:
        if key in record:
            used.add(key)
            images += [resolve_image(v, root, where, check_images) for v in _image_values(record[key], where)]

    label = None
    if label_key is not None:
        label = check_label(record[label_key], where)
    elif require_label:
        raise LabelError(f"{where}: no label; looked for the keys {list(label_keys)}.")

    has_id = id_key is not None and record.get(id_key) not in (None, "")
    ex_id = str(record[id_key]) if has_id and id_key is not None else default_id
    extra = {k: v for k, v in record.items() if k not in used}
    meta = {**meta, "record": extra}
    if label_key is not None:
        meta["label_key"] = label_key
    return Example(text=text, images=images, label=label, id=ex_id, meta=meta)


def _load_folder(folder: Path, root: Path, template: str | None, max_text_chars: int | None) -> list[Example]:
    """Load ``folder/<class>/**/<image>`` as one single-image example per file, labelled by class."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{str(folder)!r}: no class folders; expected <folder>/<class name>/<image files>.")
    examples = []
    for cls in classes:
        files = sorted(
            p
            for p in cls.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(cls).parts)
        )
        if not files:
            raise LabelError(
                f"{str(folder)!r}: class folder {cls.name!r} has no image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add images."
            )
        for f in files:
            rel = f.relative_to(folder).as_posix()
            where = f"{folder.name}/{rel}"
            path = resolve_image(os.fspath(f), root, where)
            try:
                text = "" if template is None else template.format_map({"text": "", "image": rel})
            except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
                raise InputError(
                    f"{where}: template {template!r} needs the field {e}; folder examples offer only "
                    f"'text' (empty) and 'image' (the path relative to the folder)."
                ) from e
            examples.append(
                Example(
                    text=check_text(text, where, max_text_chars),
                    images=[path],
                    label=cls.name,
                    id=rel,
                    meta={"source": str(folder), "image": rel},
                )
            )
    return examples


def load_examples(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    text_key: str | Sequence[str] = "text",
    label_key: str | Sequence[str] = "label",
    image_key: str | Sequence[str] = ("image", "images"),
    id_key: str | None = "id",
    template: str | None = None,
    format: str | None = None,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    check_images: bool = True,
    require_label: bool = False,
) -> list[Example]:
    """Load labelled examples from a JSONL / JSON / CSV / TSV / parquet file or a folder of class-named image folders.

    Files: one record per example with the fields ``text``, ``image`` (one path) or ``images`` (a list; in
    CSV a JSON list or ``;``-separated paths), ``label`` and an optional ``id``. Other fields are kept in
    ``Example.meta["record"]``. Folders: ``path/<class>/<image>`` gives one single-image example per file,
    labelled with the class folder's name, classes in sorted order, id ``"<class>/<file>"``.

    Image paths are resolved against ``root`` (default: the file's folder, or the folder itself); paths
    that leave ``root`` (``..``, absolute paths elsewhere) are refused. Every example gets a stable unique
    id: the record's ``id`` if present, else ``"<file name>:<record index>"``. Text is never truncated: a
    text over ``max_text_chars`` raises.

    Args:
        path: the data file or folder.
        root: the folder image paths are relative to.
        text_key: the text field, or several names tried in order.
        label_key: the label field, or several names tried in order (a missing label gives ``None``).
        image_key: the image field(s); all present are used, in order.
        id_key: the id field (None: always number the records).
        template: a ``str.format`` template for the text, given the record's fields (``{text}`` is the
            text field); label fields are withheld so a template cannot leak the answer.
        format: ``"jsonl"``, ``"json"``, ``"csv"``, ``"tsv"``, ``"parquet"`` or ``"folder"``; default from the
            suffix. Parquet needs pyarrow (``pip install 'savlens[datasets]'``); parquet image columns of
            bytes (as ``datasets`` exports them) are read by :func:`savlens.datasets.load_table`.
        max_text_chars: refuse longer texts (None: no limit).
        check_images: check that each image file exists (otherwise only that its path stays in root).
        require_label: raise :class:`LabelError` on a record without a label.

    Returns:
        The examples, in file order.

    Raises:
        InputError: unreadable file, a record without text, a missing image (named by path), an image path
            outside ``root``, a duplicate id, an over-long text.
        LabelError: a missing label with ``require_label``, a label that is not str / int, mixed label types,
            an empty class folder.

    Example:
        >>> import json, pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "t.jsonl").write_text(json.dumps({"text": "2+2=4?", "label": "yes"}) + "\\n")
        >>> [(e.id, e.text, e.label) for e in load_examples(d / "t.jsonl")]
        [('t.jsonl:0', '2+2=4?', 'yes')]
    """
    path = Path(path)
    fmt = _format_of(path, format)
    if fmt == "folder":
        if not path.is_dir():
            raise InputError(f"no folder at {str(path)!r}.")
        base = Path(root) if root is not None else path
        return check_examples(_load_folder(path, base, template, max_text_chars), str(path))
    base = Path(root) if root is not None else path.parent
    if fmt == "parquet":
        from savlens.datasets.tables import load_table

        return load_table(
            path,
            text_key=text_key,
            label_key=label_key,
            image_key=image_key,
            id_key=id_key,
            template=template,
            root=base,
            max_text_chars=max_text_chars,
            check_images=check_images,
            require_label=require_label,
        )
    examples = [
        example_from_record(
            record,
            where,
            f"{path.name}:{i}",
            base,
            text_keys=as_keys(text_key),
            label_keys=as_keys(label_key),
            image_keys=as_keys(image_key),
            id_key=id_key,
            template=template,
            max_text_chars=max_text_chars,
            check_images=check_images,
            require_label=require_label,
            meta={"source": str(path), "index": i},
        )
        for i, (where, record) in enumerate(read_records(path, fmt))
    ]
    return check_examples(examples, str(path))
