"""A fitted SAV on disk: a folder with ``manifest.json`` and the safetensors file it names (no pickle).

:meth:`savlens.SAV.save` and :meth:`savlens.SAV.load` are the entry points; this module owns the format: the
manifest records the parameters, classes and their type, heads, the training features' provenance (the one
record of how they were made: :meth:`HeadFeatures.describe` plus the template hash and extraction meta),
library versions and the tensor file's name and SHA-256.
"""

import hashlib
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from savlens.cache import PROVENANCE, HeadFeatures
from savlens.errors import SavlensError, StoreError
from savlens.heads import HeadScores, HeadSet
from savlens.io import json_safe, read_json, read_tensors, sha256_bytes, tensors_to_bytes, write_bytes, write_json
from savlens.scoring import criterion_name
from savlens.voting import voting_name

if TYPE_CHECKING:
    from savlens.sav import SAV

FORMAT = "savlens.sav"
FORMAT_VERSION = 1
#: provenance fields compared as they are (the template is compared by hash, layers as a superset)
COMPARED = tuple(k for k in PROVENANCE if k not in ("prompt_template", "layers"))


def template_hash(template: str | None) -> str | None:
    """Return the SHA-256 of a prompt template (None stays None)."""
    return None if template is None else hashlib.sha256(template.encode("utf-8")).hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of savlens and the libraries its artefacts depend on."""
    out = {"python": platform.python_version()}
    for name in ("savlens", "torch", "numpy", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def save_sav(sav: "SAV", path: str | Path) -> Path:
    """Write a fitted ``sav`` to the folder ``path`` (see :meth:`savlens.SAV.save`)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"SAV.save: {str(folder)!r} exists and is not a folder; give a new or existing folder path.")
    tensors = {"centroids": sav.centroids_}
    weights = sav.vote_weights_
    if not bool((weights == 1).all()):
        tensors["vote_weights"] = weights
    if sav.scores_ is not None:
        tensors["scores"] = sav.scores_.scores
    data = tensors_to_bytes(tensors, {"format": FORMAT})
    digest = sha256_bytes(data)
    tensor_file = f"tensors-{digest[:16]}.safetensors"
    write_bytes(folder / tensor_file, data)
    params = sav.get_params(deep=False)
    params["criterion"] = criterion_name(sav.criterion)
    params["criterion_params"] = json_safe(dict(sav.criterion_params or {}))
    params["voting"] = voting_name(sav.voting)
    params["voting_params"] = json_safe(dict(sav.voting_params or {}))
    scores = sav.scores_
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": params,
        "classes": list(sav.classes_),
        "class_type": sav.class_type_,
        "heads": sav.heads_.to_list(),
        "scores": None
        if scores is None
        else {
            "criterion": scores.criterion,
            "mode": scores.mode,
            "params": json_safe(scores.params),
            "layers": list(scores.layers or ()),
        },
        "features": sav.source_,
        "versions": library_versions(),
        "tensors": {
            "file": tensor_file,
            "sha256": digest,
            "centroids": list(sav.centroids_.shape),
            "dtype": str(sav.centroids_.dtype).removeprefix("torch."),
        },
    }
    write_json(folder / "manifest.json", manifest)
    for old in folder.glob("tensors*.safetensors"):  # earlier saves' tensors, no longer named by the manifest
        if old.name != tensor_file:
            old.unlink(missing_ok=True)
    return folder


def _read_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        there = "it is a file" if folder.exists() else "it does not exist"
        raise StoreError(
            f"SAV.load: {str(folder)!r} is not a saved SAV ({there}); SAV.save writes a folder holding "
            "manifest.json and the tensor file it names. Give the path of that folder."
        )
    manifest = read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"SAV.load: {str(folder)!r} does not hold a saved SAV (format != {FORMAT!r}).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"SAV.load: format version {manifest.get('format_version')!r} is not supported "
            f"(this savlens reads {FORMAT_VERSION})."
        )
    return manifest


def _source(manifest: dict[str, Any]) -> dict[str, Any]:
    """The saved provenance, completed for saves written before ``chat`` / ``system_prompt`` were part of it."""
    source = dict(manifest["features"])
    meta = source.get("meta") or {}
    older = {**(manifest.get("extract_options") or {}), **(meta.get("extract") or {}), **meta}
    for key in ("chat", "system_prompt"):
        if key not in source:
            source[key] = older.get(key)
    source["positions"] = str(source["positions"])
    return source


def load_sav(cls: "type[SAV]", path: str | Path, expect: "HeadFeatures | Mapping[str, Any] | None") -> "SAV":
    """Read the SAV saved in the folder ``path`` (see :meth:`savlens.SAV.load`)."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    try:
        source = _source(manifest)
        heads = HeadSet(manifest["heads"])
        classes = tuple(manifest["classes"])
        class_type = manifest["class_type"]
        info = manifest["tensors"]
        params = manifest["params"]
        file, digest, d_head = info["file"], info["sha256"], source["d_head"]
        if not (isinstance(params, dict) and isinstance(file, str) and isinstance(digest, str)):
            raise TypeError("params, tensors.file and tensors.sha256 must be an object and strings")
        params = dict(params)
        meta = manifest.get("scores")
        if meta is not None:
            score_args = (meta["criterion"], meta["mode"], meta["params"], tuple(meta["layers"]))
    except (KeyError, TypeError, ValueError, SavlensError) as e:
        raise StoreError(
            f"SAV.load: the manifest in {str(folder)!r} is incomplete or invalid ({type(e).__name__}: {e}); "
            "it was edited or not written by SAV.save. Re-fit and save the SAV."
        ) from None
    if not file or Path(file).name != file or file.startswith("."):
        raise StoreError(
            f"SAV.load: the manifest in {str(folder)!r} names a tensor file {file!r} outside its folder; it was "
            "edited, and savlens reads only files inside the SAV's folder. Re-save the SAV."
        )
    if expect is not None:
        check_expect(source, heads, expect)
    tensors = read_tensors(folder / file, sha256=digest)
    centroids = tensors.get("centroids")
    if centroids is None or list(centroids.shape) != [len(heads), len(classes), d_head]:
        raise StoreError(f"SAV.load: the centroids in {str(folder)!r} do not match the manifest.")
    if {type(c).__name__ for c in classes} != {class_type}:
        raise StoreError(f"SAV.load: the classes {classes!r} are not all of type {class_type!r}.")
    for old, new in (("scorer", "criterion"), ("scorer_params", "criterion_params")):  # saves before the rename
        if old in params:
            params.setdefault(new, params.pop(old))
    known = cls._param_names()
    sav = cls(**{key: value for key, value in params.items() if key in known})
    sav.heads_, sav.centroids_, sav.classes_ = heads, centroids, classes
    sav.class_type_, sav.source_ = class_type, source
    sav.vote_weights_ = torch.ones(len(heads), len(classes), dtype=torch.float64)
    if "vote_weights" in tensors:
        weights = tensors["vote_weights"]
        if list(weights.shape) != [len(heads), len(classes)] or not torch.isfinite(weights).all():
            raise StoreError(f"SAV.load: the vote weights in {str(folder)!r} do not match the manifest.")
        sav.vote_weights_ = weights.double()
    sav.scores_ = None
    if meta is not None and "scores" in tensors:
        try:
            sav.scores_ = HeadScores(tensors["scores"], *score_args)
        except SavlensError as e:
            raise StoreError(
                f"SAV.load: the head scores in {str(folder)!r} do not match the manifest ({e.detail}). "
                "Re-save the SAV."
            ) from None
    return sav


def check_expect(source: Mapping[str, Any], heads: HeadSet, expect: "HeadFeatures | Mapping[str, Any]") -> None:
    """Raise :class:`StoreError` unless ``expect`` matches the provenance a saved SAV was fitted on."""
    allowed = {*PROVENANCE, "prompt_template_sha256"}
    if isinstance(expect, HeadFeatures):
        want: dict[str, Any] = expect.describe()
    else:
        want = dict(expect)
        unknown = sorted(set(want) - allowed)
        if unknown:
            raise StoreError(f"SAV.load: expect has unknown keys {unknown}; use {sorted(allowed)}.")
        if "positions" in want:
            want["positions"] = str(want["positions"])
    if "prompt_template" in want:
        want["prompt_template_sha256"] = template_hash(want.pop("prompt_template"))
    diffs = [
        f"{key}: saved {source.get(key)!r}, expected {want[key]!r}"
        for key in (*COMPARED, "prompt_template_sha256")
        if key in want and json_safe(source.get(key)) != json_safe(want[key])
    ]
    if "layers" in want:
        missing = [layer for layer in heads.layers if layer not in set(want["layers"])]
        if missing:
            diffs.append(f"the saved heads need layers {missing}, which the expected features do not hold")
    if diffs:
        raise StoreError(
            f"SAV.load: the saved SAV was fitted on other features ({'; '.join(diffs)}). Use it with features of "
            "the model, hook, positions, prompt template and chat settings it was fitted on, or re-fit it on these."
        )
