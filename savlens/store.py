"""The on-disk feature store: safetensors shards + a JSON manifest, written atomically, resumable.

Layout of a store folder::

    manifest.json            what the features are (model, hook, positions, template, grid, next-token output
                             kept) and which shards hold which example ids, with each shard's sha256
    shard-00000.safetensors  ``z``: ``example layer head_index d_head``; with ``logits: "last"`` in the manifest
                             also ``log_probs``: ``example d_vocab`` (float32; the columns of ``logit_tokens``,
                             or the whole vocabulary when that is ``"all"``) and ``top_token``: ``example`` (int64)

Every file is written to a temporary name in the same folder, flushed, then renamed, and the manifest is
rewritten (atomically) only after its shard is in place: a kill at any point leaves a store whose manifest
lists only complete shards. A shard file that the manifest does not list is ignored (and overwritten on
resume). Reopening memory-maps the shards.
"""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from safetensors.torch import save as st_save
from torch import Tensor

from savlens.cache import HeadFeatures
from savlens.errors import SavlensError, StoreError
from savlens.io import sha256_bytes as sha256
from savlens.io import write_bytes as atomic_write_bytes

FORMAT = "savlens-feature-store"
VERSION = 1
MANIFEST = "manifest.json"


class FeatureStore:
    """A feature store folder being written (see module docstring)."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], *, rank: int | None = None) -> None:
        self.path = Path(path)
        self.rank = rank
        self.manifest_name = MANIFEST if rank is None else f"manifest.rank{rank}.json"
        self.shard_prefix = "shard-" if rank is None else f"shard-r{rank}-"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the feature store folder {str(self.path)!r} ({e.strerror or e}); give a path where a "
                "folder can be created (a new one, or an existing store of this extraction)."
            ) from e
        if not os.access(self.path, os.W_OK):
            raise StoreError(
                f"the feature store folder {str(self.path)!r} is not writable; fix its permissions or give another "
                "folder."
            )
        mf = self.path / self.manifest_name
        if not mf.exists() and rank is not None and (self.path / MANIFEST).exists():
            read_manifest(self.path)  # a rank joining a store: check it is one
        if mf.exists():
            self.manifest = read_manifest(self.path, self.manifest_name)
            theirs = {k: self.manifest.get(k) for k in header}
            theirs["order"] = header.get("order")  # a store may be extended with more examples
            if theirs != header:
                diff = {k: (theirs[k], header[k]) for k in header if theirs[k] != header[k]}
                parts = "; ".join(f"{k}: store has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
                raise StoreError(
                    f"the feature store {str(self.path)!r} holds features of another extraction ({parts}). "
                    "Use a new store path, or delete this one to start over."
                )
        else:
            self.manifest = {"format": FORMAT, "version": VERSION, **header, "shards": []}
            self._write_manifest()

    @property
    def done_ids(self) -> set[str]:
        """Ids already in this store: in its manifest and, for a rank, in every other manifest of the folder."""
        done = {i for s in self.manifest["shards"] for i in s["ids"]}
        for other in sorted(self.path.glob("manifest*.json")):
            if other.name != self.manifest_name:
                done |= {i for s in read_manifest(self.path, other.name)["shards"] for i in s["ids"]}
        return done

    def set_order(self, ids: list[str]) -> None:
        """Record the example order that :func:`open_store` returns (when the store holds exactly these ids)."""
        self.manifest["order"] = ids
        self._write_manifest()

    def append(
        self,
        z: Float[Tensor, "example layer head_index d_head"],
        ids: list[str],
        labels: list[Any],
        log_probs: Float[Tensor, "example d_vocab"] | None = None,
        top_token: Int[Tensor, " example"] | None = None,
    ) -> None:
        """Write one shard of examples (with their next-token output, when kept) and record it in the manifest."""
        n = len(self.manifest["shards"])
        name = f"{self.shard_prefix}{n:05d}.safetensors"
        tensors = {"z": z.contiguous()}
        if log_probs is not None and top_token is not None:
            tensors |= {"log_probs": log_probs.contiguous(), "top_token": top_token.contiguous()}
        data = st_save(tensors)
        try:
            atomic_write_bytes(self.path / name, data)
            self.manifest["shards"].append({"file": name, "ids": ids, "labels": labels, "sha256": sha256(data)})
            self._write_manifest()
        except (OSError, StoreError) as e:
            if self.manifest["shards"] and self.manifest["shards"][-1]["file"] == name:
                self.manifest["shards"].pop()
            cause = e.__cause__ if isinstance(e, StoreError) and isinstance(e.__cause__, OSError) else e
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
            raise StoreError(
                f"cannot write to the feature store {str(self.path)!r} ({why}); the store keeps the "
                f"{n} shards written before, and the extraction resumes from there once there is space "
                "(free disk space or make the folder writable, then run the same extract again)."
            ) from e

    def _write_manifest(self) -> None:
        atomic_write_bytes(self.path / self.manifest_name, json.dumps(self.manifest, indent=1).encode())


def merge_ranks(path: str | os.PathLike[str], header: dict[str, Any], world_size: int, order: list[str]) -> None:
    """Merge the per-rank manifests of a data-parallel extraction into the store's one manifest (rank 0 only).

    The merged manifest lists the shards of the main manifest (an earlier run), then rank 0's, rank 1's, ...;
    :func:`open_store` returns the examples in ``order`` whatever the shard order.
    """
    root = Path(path)
    main = root / MANIFEST
    merged = read_manifest(root) if main.exists() else {"format": FORMAT, "version": VERSION, **header, "shards": []}
    for r in range(world_size):
        name = f"manifest.rank{r}.json"
        if (root / name).exists():
            merged["shards"].extend(read_manifest(root, name)["shards"])
    merged["order"] = order
    atomic_write_bytes(main, json.dumps(merged, indent=1).encode())
    for r in range(world_size):
        (root / f"manifest.rank{r}.json").unlink(missing_ok=True)


def read_manifest(path: str | os.PathLike[str], name: str = MANIFEST) -> dict[str, Any]:
    """Read and check a store's manifest."""
    mf = Path(path) / name
    if not mf.is_file():
        raise StoreError(f"{str(path)!r} is not a feature store: it has no {MANIFEST}.")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"the manifest of {str(path)!r} is not valid JSON ({e}).") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{str(mf)!r} is not a savlens feature-store manifest.")
    if manifest.get("version") != VERSION:
        raise StoreError(f"feature store version {manifest.get('version')} is not supported (this savlens: {VERSION}).")
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(
            f"the manifest {str(mf)!r} is incomplete or invalid ({problem}): it was edited or not written by "
            "savlens. Re-extract into a new store folder."
        )
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Return what is wrong with a manifest's fields (None when they have the types savlens writes)."""
    for key, kind in (("model_id", str), ("hook", str), ("layers", list), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in manifest["layers"]):
        return "'layers' must be a list of ints"
    for k, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            return f"shard {k} is not an object"
        for key, kind in (("file", str), ("ids", list), ("labels", list), ("sha256", str)):
            if not isinstance(shard.get(key), kind):
                return f"shard {k}: {key!r} is missing or not a {kind.__name__}"
        if not all(isinstance(i, str) for i in shard["ids"]):
            return f"shard {k}: ids must be strings"
    if manifest.get("logits") not in (None, "last"):
        return "'logits' must be null or \"last\""
    tokens = manifest.get("logit_tokens")
    if manifest.get("logits") == "last" and not (
        tokens == "all"
        or isinstance(tokens, list)
        and tokens
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens)
    ):
        return "'logit_tokens' must be \"all\" or a list of token ids when 'logits' is \"last\""
    order = manifest.get("order")
    if order is not None and not (isinstance(order, list) and all(isinstance(i, str) for i in order)):
        return "'order' must be a list of id strings"
    return None


def _shard_path(root: Path, name: Any) -> Path:
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise StoreError(
            f"the manifest of {str(root)!r} names a shard {name!r} outside the store folder; savlens reads only "
            "files inside it, so the manifest was edited. Re-extract into a new store folder."
        )
    return root / name


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None, "I64": np.int64}


def _mmap_tensor(path: Path, key: str = "z", ndim: int = 4) -> torch.Tensor:
    """Memory-map one ``ndim``-d tensor of a safetensors file (read-only, zero-copy for float32/16/64 and int64;
    ``top_token`` must be int64, every other tensor floating point)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > min(100_000_000, size - 8):
            raise StoreError(f"{str(path)!r} is not a safetensors file (bad header length); the shard is corrupt.")
        try:
            header = json.loads(f.read(n))
            info = header[key]
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
            np_dtype = _ST_DTYPES.get(info["dtype"], "missing")
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError) as e:
            raise StoreError(
                f"{str(path)!r} has no readable safetensors header for tensor {key!r} ({type(e).__name__}); "
                "the shard is corrupt."
            ) from None
    if np_dtype == "missing" or (info["dtype"] == "I64") != (key == "top_token"):
        raise StoreError(f"{str(path)!r}: unsupported dtype {info['dtype']} for tensor {key!r}; the shard is corrupt.")
    itemsize = 2 if np_dtype is None else np.dtype(np_dtype).itemsize
    if len(shape) != ndim or min(shape, default=0) < 0 or int(np.prod(shape)) * itemsize != end - start or start < 0:
        raise StoreError(f"{str(path)!r}: tensor {key!r} has {end - start} bytes, not {shape} {info['dtype']}.")
    if 8 + n + end > size:
        raise StoreError(
            f"{str(path)!r} is truncated ({size} bytes, its header promises {8 + n + end}); the shard is corrupt."
        )
    if np_dtype is None:  # bf16: map as int16 and reinterpret
        raw = np.memmap(path, dtype=np.int16, mode="c", offset=8 + n + start, shape=shape)
        return torch.from_numpy(np.asarray(raw)).view(torch.bfloat16)
    return torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="c", offset=8 + n + start, shape=shape))


def open_store(path: str | os.PathLike[str], *, verify: bool = True) -> HeadFeatures:
    """Reopen a feature store as :class:`HeadFeatures` (shards memory-mapped; one copy when several shards).

    A store extracted with ``logits="last"`` also fills ``log_probs``, ``logit_tokens`` and ``top_token``
    (rows in the same example order as ``z``).

    Args:
        path: the store folder.
        verify: check each shard's sha256 against the manifest (reads every byte once).

    Raises:
        StoreError: no manifest, a shard missing or corrupt, a manifest and shards that disagree.
    """
    root = Path(path)
    manifest = read_manifest(root)
    parts: list[torch.Tensor] = []
    lp_parts: list[torch.Tensor] = []
    top_parts: list[torch.Tensor] = []
    next_token = manifest.get("logits") == "last"
    ids: list[str] = []
    labels: list[Any] = []
    for shard in manifest["shards"]:
        file = _shard_path(root, shard.get("file"))
        if not file.is_file():
            raise StoreError(
                f"the manifest of {str(root)!r} lists {shard['file']!r}, which is missing. Re-extract into a new "
                "store folder (or restore the file)."
            )
        if verify and sha256(file.read_bytes()) != shard.get("sha256"):
            raise StoreError(
                f"{str(file)!r} does not match the sha256 in the manifest: the shard is corrupt. Re-extract into a "
                "new store folder."
            )
        z = _mmap_tensor(file)
        if z.shape[0] != len(shard["ids"]) or len(shard["labels"]) != len(shard["ids"]):
            raise StoreError(
                f"{str(file)!r} holds {z.shape[0]} examples but the manifest lists {len(shard['ids'])} ids and "
                f"{len(shard['labels'])} labels for it: the manifest and the shards disagree. Re-extract into a "
                "new store folder."
            )
        if z.shape[1] != len(manifest["layers"]) or (parts and z.shape[1:] != parts[0].shape[1:]):
            raise StoreError(
                f"{str(file)!r} holds features of shape {tuple(z.shape[1:])} per example, but the manifest lists "
                f"{len(manifest['layers'])} layers"
                + (f" and the first shard holds {tuple(parts[0].shape[1:])}" if parts else "")
                + ": the manifest and the shards disagree. Re-extract into a new store folder."
            )
        if next_token:
            lp, top = _mmap_tensor(file, "log_probs", 2), _mmap_tensor(file, "top_token", 1)
            tokens = manifest["logit_tokens"]
            width = lp_parts[0].shape[1] if lp_parts else len(tokens) if isinstance(tokens, list) else lp.shape[1]
            if lp.shape != (z.shape[0], width) or top.shape != (z.shape[0],):
                raise StoreError(
                    f"{str(file)!r} holds log_probs of shape {tuple(lp.shape)} and top_token of shape "
                    f"{tuple(top.shape)} for {z.shape[0]} examples, but the manifest asks for ({z.shape[0]}, {width}) "
                    f"(logit_tokens {tokens if tokens == 'all' else len(tokens)}): the manifest and the shards "
                    "disagree. Re-extract into a new store folder."
                )
            lp_parts.append(lp)
            top_parts.append(top)
        parts.append(z)
        ids.extend(shard["ids"])
        labels.extend(shard["labels"])
    if not parts:
        raise StoreError(f"the feature store {str(root)!r} holds no examples yet.")
    z = parts[0] if len(parts) == 1 else torch.cat(parts)
    lp_all = (lp_parts[0] if len(lp_parts) == 1 else torch.cat(lp_parts)) if next_token else None
    top_all = (top_parts[0] if len(top_parts) == 1 else torch.cat(top_parts)) if next_token else None
    order = manifest.get("order")
    if order is not None and sorted(order) == sorted(ids) and order != ids:
        pos = {i: k for k, i in enumerate(ids)}
        idx = torch.tensor([pos[i] for i in order])
        z, ids, labels = z[idx], [ids[k] for k in idx.tolist()], [labels[k] for k in idx.tolist()]
        lp_all = lp_all[idx] if lp_all is not None else None
        top_all = top_all[idx] if top_all is not None else None
    has_labels = any(lab is not None for lab in labels)
    try:
        return HeadFeatures(
            z=z,
            labels=labels if has_labels else None,
            example_ids=ids,
            model_id=manifest["model_id"],
            hook=manifest["hook"],
            positions=manifest.get("positions", "last"),
            prompt_template=manifest.get("prompt_template"),
            layers=tuple(manifest["layers"]),
            meta={
                "store": str(root),
                "fingerprint": manifest.get("fingerprint"),
                "dtype": manifest.get("dtype"),
                "chat": manifest.get("chat", True),
                "system_prompt": manifest.get("system_prompt"),
            },
            log_probs=lp_all,
            logit_tokens=tuple(manifest["logit_tokens"]) if next_token and manifest["logit_tokens"] != "all" else None,
            top_token=top_all,
        )
    except SavlensError as e:  # e.g. an id listed in two shards
        raise StoreError(
            f"the feature store {str(root)!r} is inconsistent ({e.detail}). Re-extract into a new store folder."
        ) from e
