"""Examples from tables as the ecosystem has them: a Hugging Face ``datasets`` object, a parquet file, rows.

Named image, text and label columns become :class:`~savlens.example.Example` objects with the checks of
:func:`savlens.datasets.load_examples` (text length, label type, unique ids, image paths inside a root). Images
may be what ``datasets`` gives: decoded PIL images (its ``Image`` feature), ``{"bytes": ..., "path": ...}`` dicts
(``Image(decode=False)`` and parquet exports), raw bytes, arrays, or paths. A ``ClassLabel`` column gives its class
names. Neither ``datasets`` nor a parquet reader is a dependency: ``pip install 'savlens[datasets]'``.
"""

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from savlens.datasets._common import DEFAULT_MAX_TEXT_CHARS, as_keys, check_examples, resolve_image
from savlens.datasets.files import example_from_record
from savlens.errors import InputError, LoadError
from savlens.example import Example

__all__ = ["load_table", "read_parquet"]


def read_parquet(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the rows of a parquet file as dicts (with pyarrow, else pandas).

    Raises:
        InputError: no file at ``path``, or a file the reader refuses.
        LoadError: neither pyarrow nor pandas is installed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no parquet file at {str(path)!r}.")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    try:
        if pq is not None:
            return list(pq.read_table(path).to_pylist())
        try:
            import pandas as pd
        except ImportError:
            raise LoadError(
                f"reading {path.name} needs pyarrow (or pandas with a parquet engine), which is not installed: "
                "pip install 'savlens[datasets]' (or pip install pyarrow)."
            ) from None
        return list(pd.read_parquet(path).to_dict("records"))
    except (LoadError, InputError):
        raise
    except Exception as e:  # the readers raise their own types on a corrupt or foreign file
        raise InputError(f"{path.name}: not a readable parquet file ({type(e).__name__}: {e}).") from e


def _image(value: Any, root: Path, where: str, check_images: bool) -> Any:
    """Return one image as :class:`Example` takes it (a PIL image, an array or a path), decoding bytes."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return _image(data, root, where, check_images)
        if path:
            return resolve_image(path, root, where, check_images)
        raise InputError(f"{where}: image {sorted(value)} has neither bytes nor a path.")
    if isinstance(value, bytes | bytearray):
        try:
            with Image.open(io.BytesIO(value)) as im:
                im.load()
                return im.copy()
        except Exception as e:  # PIL raises many types on corrupt data
            raise InputError(f"{where}: the image bytes cannot be decoded ({e}).") from e
    if isinstance(value, str | os.PathLike):
        return resolve_image(value, root, where, check_images)
    return value  # a PIL image or an array: Example checks it


def _rows(source: Any, split: str | None) -> tuple[Iterable[Mapping[str, Any]], Any, str]:
    """Return (rows, features or None, a name for messages) of a dataset, a dataset dict, a file or rows."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.suffix.lower() != ".parquet":
            raise InputError(f"load_table reads parquet files; {path.name} is not one (use load_examples for it).")
        return read_parquet(path), None, path.name
    if isinstance(source, Mapping) and not hasattr(source, "column_names"):  # a DatasetDict
        if split is None:
            raise InputError(f"load_table: this dataset has the splits {sorted(source)}; pass split=... to pick one.")
        if split not in source:
            raise InputError(f"load_table: no split {split!r}; the dataset has {sorted(source)}.")
        source = source[split]
    name = str(getattr(getattr(source, "info", None), "dataset_name", None) or split or "table")
    if hasattr(source, "column_names"):
        return source, getattr(source, "features", None), name
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return source, None, name
    raise InputError(
        f"load_table: expected a datasets.Dataset, a DatasetDict with split=, a parquet path or a list of dicts; "
        f"got {type(source).__name__}."
    )


def load_table(
    source: Any,
    *,
    split: str | None = None,
    text_key: str | Sequence[str] = "text",
    label_key: str | Sequence[str] = "label",
    image_key: str | Sequence[str] = ("image", "images"),
    id_key: str | None = "id",
    template: str | None = None,
    root: str | os.PathLike[str] | None = None,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    check_images: bool = True,
    require_label: bool = False,
    class_names: bool = True,
) -> list[Example]:
    """Load labelled examples from a Hugging Face ``datasets`` object, a parquet file or a list of row dicts.

    The columns are named as in :func:`savlens.datasets.load_examples` (``text_key``, ``label_key``,
    ``image_key``, ``id_key``, ``template``): one example per row, in row order, with the row's other columns in
    ``Example.meta["record"]``. An image column may hold one image or a list; see the module docstring for what an
    image may be. Ids: the ``id_key`` column, else ``"<name>:<row>"``.

    Args:
        source: a ``datasets.Dataset`` (or any object with ``column_names`` whose iteration yields row dicts), a
            ``DatasetDict`` (with ``split``), a ``.parquet`` path, or a list of dicts.
        split: the split of a ``DatasetDict``.
        text_key: the text column, or several names tried in order.
        label_key: the label column(s) (a missing label gives ``None``).
        image_key: the image column(s); all present are used, in order.
        id_key: the id column (None: number the rows).
        template: a ``str.format`` template for the text, given the row's columns (labels withheld).
        root: the folder relative image paths are resolved against (default: the parquet file's folder, or the
            current folder); paths outside it are refused.
        max_text_chars: refuse longer texts (None: no limit); text is never truncated.
        check_images: check that each image file given by path exists.
        require_label: raise :class:`~savlens.errors.LabelError` on a row without a label.
        class_names: give a ``ClassLabel`` column's class names rather than its integers.

    Example:
        >>> rows = [{"question": "2+2=4?", "label": 1, "image": None}, {"question": "2+2=5?", "label": 0}]
        >>> [(e.id, e.text, e.label) for e in load_table(rows, text_key="question")]
        [('table:0', '2+2=4?', 1), ('table:1', '2+2=5?', 0)]
    """
    rows, features, name = _rows(source, split)
    if root is not None:
        base = Path(root)
    elif isinstance(source, str | os.PathLike):
        base = Path(source).parent
    else:
        base = Path.cwd()
    label_keys, image_keys = as_keys(label_key), as_keys(image_key)
    names: dict[str, Sequence[str]] = {}
    if class_names and features is not None:
        for key in label_keys:
            feature = features.get(key) if hasattr(features, "get") else None
            if feature is not None and isinstance(getattr(feature, "names", None), list | tuple):
                names[key] = feature.names
    examples = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: expected a row of named columns; got {type(row).__name__}.")
        record = {k: v for k, v in row.items() if k not in image_keys}
        for key, classes in names.items():
            value = record.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
                record[key] = classes[value]
        ex = example_from_record(
            record,
            where,
            f"{name}:{i}",
            base,
            text_keys=as_keys(text_key),
            label_keys=label_keys,
            image_keys=(),
            id_key=id_key,
            template=template,
            max_text_chars=max_text_chars,
            check_images=check_images,
            require_label=require_label,
            meta={"source": name, "index": i},
        )
        images: list[Any] = []
        for key in image_keys:
            value = row.get(key)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            images += [_image(v, base, where, check_images) for v in values if v is not None]
        if images:
            ex = Example(text=ex.text, images=images, label=ex.label, id=ex.id, meta=ex.meta)
        examples.append(ex)
    if not examples:
        raise InputError(f"load_table: {name} has no rows.")
    return check_examples(examples, name)
