"""Study config files (TOML): tasks as feature stores or data files, the grid, the output.

A study file has four tables (docs/studies.md has a full example)::

    [model]                 # only to extract a task whose store is missing or incomplete
    name = "tiny-vlm"       # any savlens.load name, hub id or folder; also dtype, attn, device, batch_size

    [tasks.colour]          # one table per task
    store = "stores/colour"             # its feature store (written here when examples are given)
    examples = "data/colour.jsonl"      # optional: the data, extracted into store where it lacks examples
    loader = "examples"                 # examples (JSONL/JSON/CSV/TSV/parquet), vlguard, mhalu, hf
    group = "image"                     # optional: "image", or a regex on example ids

    [grid]                  # StudyConfig fields: shots, k, seeds, criteria, modes, voting, transfer, ...
    [output]                # dir (default: the config's name next to it), figures (default true)

Relative paths are relative to the config file's folder.
"""

import os
import tomllib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from savlens.errors import StudyConfigError
from savlens.example import Example

LOADERS = ("examples", "vlguard", "mhalu", "hf")
_TASK_KEYS = {
    "store",
    "examples",
    "loader",
    "group",
    "root",
    "split",
    "template",
    "text_key",
    "label_key",
    "image_key",
    "id_key",
    "chat",
    "system_prompt",
}
_MODEL_KEYS = {"name", "dtype", "attn", "device", "batch_size"}
_OUTPUT_KEYS = {"dir", "figures"}


@dataclass
class TaskSpec:
    """One task of a study file: where its features are and, optionally, the data to extract them from."""

    name: str
    store: Path | None = None
    examples: Path | None = None
    loader: str = "examples"
    group: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyFile:
    """A parsed study file: tasks, the grid (:class:`~savlens.study.StudyConfig` fields), model and output."""

    path: Path
    tasks: dict[str, TaskSpec]
    grid: dict[str, Any]
    model: dict[str, Any]
    out_dir: Path
    figures: bool = True


def _table(data: dict[str, Any], key: str, allowed: set[str] | None, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StudyConfigError(f"{where}: [{key}] must be a table; got {type(value).__name__}.")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise StudyConfigError(f"{where}: unknown keys {unknown} in [{key}]; allowed: {sorted(allowed)}.")
    return value


def load_study_file(path: str | os.PathLike[str]) -> StudyFile:
    """Read and check a study TOML file (no data is read and no model loaded yet).

    Raises:
        StudyConfigError: unreadable TOML, an unknown table or key, a task with neither ``store`` nor
            ``examples``, an unknown loader, a group ``"image"`` without examples, a grid setting that
            :func:`~savlens.study.make_config` refuses.
    """
    from savlens.study.runner import make_config

    p = Path(path)
    where = p.name
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyConfigError(f"no study config at {str(p)!r}.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StudyConfigError(f"{where}: not valid TOML ({e}).") from None
    unknown = sorted(set(data) - {"model", "tasks", "grid", "output"})
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown tables {unknown}; a study file has [model], [tasks.*], [grid], [output]."
        )
    base = p.parent
    tasks: dict[str, TaskSpec] = {}
    for name, spec in _table(data, "tasks", None, where).items():
        if not isinstance(spec, dict):
            raise StudyConfigError(f"{where}: [tasks.{name}] must be a table with store and/or examples.")
        bad = sorted(set(spec) - _TASK_KEYS)
        if bad:
            raise StudyConfigError(f"{where}: unknown keys {bad} in [tasks.{name}]; allowed: {sorted(_TASK_KEYS)}.")
        if "store" not in spec and "examples" not in spec:
            raise StudyConfigError(f"{where}: task {name!r} has neither store nor examples.")
        loader = spec.get("loader", "examples")
        if loader not in LOADERS:
            raise StudyConfigError(f"{where}: task {name!r}: unknown loader {loader!r}; use one of {list(LOADERS)}.")
        if spec.get("group") == "image" and "examples" not in spec:
            raise StudyConfigError(
                f"{where}: task {name!r}: group = 'image' needs examples (a store keeps no images); give examples, "
                "or a regular expression on the example ids."
            )
        options = {k: v for k, v in spec.items() if k not in {"store", "examples", "loader", "group"}}
        if "root" in options:
            options["root"] = base / options["root"]
        tasks[str(name)] = TaskSpec(
            str(name),
            base / spec["store"] if "store" in spec else None,
            base / spec["examples"] if "examples" in spec else None,
            loader,
            spec.get("group"),
            options,
        )
    if not tasks:
        raise StudyConfigError(f"{where}: no tasks; add a [tasks.NAME] table with a store or examples.")
    grid = _table(data, "grid", None, where)
    grid = {k: (tuple(tuple(p) for p in v) if k == "transfer" and isinstance(v, list) else v) for k, v in grid.items()}
    make_config(**grid)  # refuse a bad grid now
    model = _table(data, "model", _MODEL_KEYS, where)
    output = _table(data, "output", _OUTPUT_KEYS, where)
    out_dir = base / output.get("dir", p.stem)
    return StudyFile(p, tasks, grid, model, out_dir, bool(output.get("figures", True)))


def read_task_examples(spec: TaskSpec) -> list[Example]:
    """Return a task's examples with its loader and options."""
    from savlens import datasets

    assert spec.examples is not None
    o = spec.options
    keys = {k: o[k] for k in ("text_key", "label_key", "image_key", "id_key") if k in o}
    if spec.loader == "vlguard":
        return datasets.load_vlguard(spec.examples, o.get("root"))
    if spec.loader == "mhalu":
        return datasets.load_mhalu(spec.examples, o.get("root"))
    if spec.loader == "hf":
        try:
            from datasets import load_from_disk
        except ImportError:
            raise StudyConfigError(
                f"task {spec.name!r}: loader = 'hf' reads a dataset saved with save_to_disk and needs the datasets "
                "package: pip install 'savlens[datasets]'."
            ) from None
        return datasets.load_table(load_from_disk(str(spec.examples)), split=o.get("split"), root=o.get("root"), **keys)
    return datasets.load_examples(spec.examples, o.get("root"), **keys)


def image_groups(examples: list[Example]) -> dict[str, Hashable]:
    """Return example id -> its first image (a path, or the image's bytes digest), the ``group = "image"`` key."""
    import hashlib

    from PIL import Image

    out: dict[str, Hashable] = {}
    for ex in examples:
        first: Any = ex.images[0] if ex.images else None
        if isinstance(first, Image.Image):
            first = hashlib.sha256(first.tobytes()).hexdigest()
        elif first is not None and not isinstance(first, str):
            first = str(first)
        out[str(ex.id)] = first if first is not None else f"no-image:{ex.id}"
    return out


def task_features(
    spec: TaskSpec, load_model: Callable[[], Any], *, batch_size: int = 8, progress: bool = False
) -> tuple[Any, Any]:
    """Return a task's features and its group key (None, a regex, or id -> group).

    A store that already holds every example is read without a model; otherwise the examples are extracted into
    the store (resuming it) with the model ``load_model()`` returns.
    """
    from savlens import extract, open_store

    if spec.examples is None:
        assert spec.store is not None
        if not (spec.store / "manifest.json").is_file():
            raise StudyConfigError(f"task {spec.name!r}: no feature store at {str(spec.store)!r} and no examples.")
        return open_store(spec.store), spec.group
    examples = read_task_examples(spec)
    groups = image_groups(examples) if spec.group == "image" else spec.group
    ids = [str(e.id) for e in examples]
    if spec.store is not None and (spec.store / "manifest.json").is_file():
        stored = open_store(spec.store)
        where = {i: n for n, i in enumerate(stored.example_ids or [])}
        if all(i in where for i in ids):
            return stored.subset([where[i] for i in ids]), groups
    o = spec.options
    feats = extract(
        load_model(),
        examples,
        batch_size=batch_size,
        store=spec.store,
        prompt_template=o.get("template"),
        chat=o.get("chat", True),
        system_prompt=o.get("system_prompt"),
        progress=progress,
    )
    return feats, groups
