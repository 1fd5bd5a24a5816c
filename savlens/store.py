"""The on-disk feature store: safetensors shards, a JSON header and an append-only index; resumable, locked.

Layout of a store folder (format version 2)::

    manifest.json            what the features are (model, hook, positions, template, grid, feature dtype,
                             next-token output kept) and the example order; written when the store is created
                             and once more when an extraction finishes (``order``), never per shard
    index.jsonl              one JSON line per shard, appended (and fsynced) after the shard is in place:
                             ``{"file", "ids", "labels", "sha256", "n"}``; so writing n examples writes O(n)
                             index bytes in total, whatever the number of shards
    shard-00000.safetensors  ``z``: ``example layer head_index d_head`` in the extraction's dtype (float16,
                             bfloat16 or float32, recorded as ``dtype`` in the manifest); with ``logits: "last"``
                             also ``log_probs``: ``example d_vocab`` (float32) and ``top_token``: ``example``
    write.lock               while a process writes the store: its pid, host and start time

Every shard is written to a temporary name in the same folder, flushed, then renamed, and its index line is
appended only after: a kill at any point leaves a store whose index lists only complete shards (a torn last
line, from a kill during the append, is ignored and cut off by the next writer). A shard file the index does not
list is ignored (and overwritten on resume). Reopening memory-maps the shards.

A second process writing the same store is refused with a :class:`StoreError` naming the holder of
``write.lock``; a lock left by a process that died on this host is taken over. Ranks of a data-parallel
extraction each write their own ``manifest.rank{r}.json`` / ``index.rank{r}.jsonl`` / ``write.rank{r}.lock``
and shards ``shard-r{r}-*``; rank 0 appends their index lines to ``index.jsonl`` when all are done.

Stores of format version 1 (every shard listed in ``manifest.json``, rewritten after each shard) open as before;
the first write into one, or :func:`migrate_store` (``python -m savlens.store migrate PATH``), converts it.
"""

import contextlib
import json
import os
import socket
import sys
import time
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
from savlens.io import sha256_file
from savlens.io import write_bytes as atomic_write_bytes
from savlens.store_schema import manifest_problem, shard_problem

FORMAT = "savlens-feature-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
LOCK = "write.lock"
STALE_EMPTY_LOCK_S = 30.0
"""A lock file left empty or unreadable (its writer died between creating and filling it) counts as stale after
this many seconds."""


# ---- the write lock ----------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def _lock_holder(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def acquire_lock(root: Path, name: str = LOCK) -> Path:
    """Create ``root / name`` holding this process's pid, host and start time, or raise :class:`StoreError`.

    A lock whose holder is a dead process on this host (or an empty lock older than ``STALE_EMPTY_LOCK_S``)
    is stale and taken over; a live holder, or a holder on another host, is refused.
    """
    lock = root / name
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None:
                with contextlib.suppress(OSError):
                    if time.time() - lock.stat().st_mtime > STALE_EMPTY_LOCK_S:
                        lock.unlink()
                        continue
                raise StoreError(
                    f"the feature store {str(root)!r} is locked by {str(lock)!r}, which another process is "
                    "creating right now (or one that died left empty); wait, or delete that file if no process "
                    "writes the store."
                ) from None
            same_host = holder.get("host") == me["host"]
            if same_host and holder["pid"] != me["pid"] and not _pid_alive(holder["pid"]):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()  # stale: its writer died on this host
                continue
            since = holder.get("since")
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, float) else "?"
            gone = (
                ""
                if same_host
                else f" savlens cannot tell from here whether it is still running; if it is not, delete {str(lock)!r}."
            )
            raise StoreError(
                f"the feature store {str(root)!r} is being written by another process (pid {holder['pid']} on host "
                f"{holder.get('host')!r}, since {when}); two writers would corrupt it. Wait for that extraction to "
                "finish, or write to another store folder (data-parallel ranks each write their own shards of one "
                f"store through torch.distributed).{gone}"
            ) from None
        except OSError as e:
            raise StoreError(
                f"cannot write to the feature store {str(root)!r} ({e.strerror or e}); free disk space or make the "
                "folder writable, then run the same extract again."
            ) from e
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
        except OSError as e:
            lock.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write to the feature store {str(root)!r} ({e.strerror or e}); free disk space or make the "
                "folder writable, then run the same extract again."
            ) from e
        return lock
    raise StoreError(f"cannot take the write lock {str(lock)!r} of the feature store {str(root)!r}; try again.")


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    holder = _lock_holder(lock)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


# ---- the index ---------------------------------------------------------------------------------------------------
def read_index(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read the shard records of an index file (``[]`` when absent).

    A last line without its newline is a torn append (the writer was killed): it is ignored, and with
    ``repair`` cut off the file. Any other line that is not a valid record raises :class:`StoreError`.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
            os.fsync(fh.fileno())
    records = []
    for k, line in enumerate(data[:end].splitlines()):
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            rec = None
        problem = "not a JSON object" if not isinstance(rec, dict) else shard_problem(rec, k)
        if problem:
            raise StoreError(
                f"the index {str(path)!r} is invalid at line {k + 1} ({problem}): it was edited or not written by "
                "savlens. Re-extract into a new store folder."
            )
        records.append(rec)
    return records  # type: ignore[return-value]


def append_record(path: Path, record: dict[str, Any]) -> int:
    """Append one record as a JSON line to an index file and fsync it; return the bytes written."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    return len(line)


# ---- writing -----------------------------------------------------------------------------------------------------
class FeatureStore:
    """A feature store folder being written (see module docstring); holds its write lock until :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], *, rank: int | None = None) -> None:
        self.path = Path(path)
        self.rank = rank
        self.manifest_name = MANIFEST if rank is None else f"manifest.rank{rank}.json"
        self.index_name = INDEX if rank is None else f"index.rank{rank}.jsonl"
        self.shard_prefix = "shard-" if rank is None else f"shard-r{rank}-"
        self.index_bytes_written = 0
        """Bytes appended to the index by this writer (O(examples written), whatever the number of shards)."""
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
        self._lock: Path | None = acquire_lock(self.path, LOCK if rank is None else f"write.rank{rank}.lock")
        try:
            self._open(header)
        except BaseException:
            self.close()
            raise

    def _open(self, header: dict[str, Any]) -> None:
        mf = self.path / self.manifest_name
        if (self.path / MANIFEST).exists() and _version(self.path) == 1:
            migrate_store(self.path, _locked=True)
        if not mf.exists() and self.rank is not None and (self.path / MANIFEST).exists():
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
            self.manifest = {"format": FORMAT, "version": VERSION, **header}
            self._write_manifest()
        self.records = read_index(self.path / self.index_name, repair=True)
        self._done: set[str] = set()
        self._files: set[str] = set()
        for name in sorted({INDEX, self.index_name, *(p.name for p in self.path.glob("index.rank*.jsonl"))}):
            for rec in self.records if name == self.index_name else read_index(self.path / name):
                self._done.update(rec["ids"])
                self._files.add(rec["file"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The shard records this writer's index lists."""
        return self.records

    @property
    def done_ids(self) -> set[str]:
        """Ids already in this store: in its index and, for a rank, in every other index of the folder."""
        return set(self._done)

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
        """Write one shard of examples (with their next-token output, when kept) and append its index record."""
        if self._lock is None:
            raise StoreError(f"the feature store writer of {str(self.path)!r} is closed; open a new one.")
        n = len(self.records)
        while f"{self.shard_prefix}{n:05d}.safetensors" in self._files:
            n += 1
        name = f"{self.shard_prefix}{n:05d}.safetensors"
        tensors = {"z": z.contiguous()}
        if log_probs is not None and top_token is not None:
            tensors |= {"log_probs": log_probs.contiguous(), "top_token": top_token.contiguous()}
        data = st_save(tensors)
        record = {"file": name, "n": len(ids), "ids": ids, "labels": labels, "sha256": sha256(data)}
        try:
            atomic_write_bytes(self.path / name, data)
            self.index_bytes_written += append_record(self.path / self.index_name, record)
        except (OSError, StoreError) as e:
            with contextlib.suppress(OSError):
                read_index(self.path / self.index_name, repair=True)  # cut a torn line off
            cause = e.__cause__ if isinstance(e, StoreError) and isinstance(e.__cause__, OSError) else e
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
            raise StoreError(
                f"cannot write to the feature store {str(self.path)!r} ({why}); the store keeps the "
                f"{len(self.records)} shards written before, and the extraction resumes from there once there is "
                "space (free disk space or make the folder writable, then run the same extract again)."
            ) from e
        self.records.append(record)
        self._done.update(ids)
        self._files.add(name)

    def close(self) -> None:
        """Release the write lock (idempotent)."""
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_manifest(self) -> None:
        atomic_write_bytes(self.path / self.manifest_name, json.dumps(self.manifest, indent=1).encode())


def merge_ranks(path: str | os.PathLike[str], header: dict[str, Any], world_size: int, order: list[str]) -> None:
    """Merge the per-rank indexes of a data-parallel extraction into the store's index (rank 0 only).

    The store's index lists the shards of an earlier run, then rank 0's, rank 1's, ... (each rank's records
    are appended once: O(examples)); :func:`open_store` returns the examples in ``order`` whatever the shard order.
    """
    root = Path(path)
    lock = acquire_lock(root)
    try:
        if (root / MANIFEST).exists() and _version(root) == 1:
            migrate_store(root, _locked=True)
        main = read_manifest(root) if (root / MANIFEST).exists() else {"format": FORMAT, "version": VERSION, **header}
        listed = {rec["file"] for rec in read_index(root / INDEX, repair=True)}
        for r in range(world_size):
            for rec in read_index(root / f"index.rank{r}.jsonl"):
                if rec["file"] not in listed:  # a merge killed half-way is redone without duplicates
                    append_record(root / INDEX, rec)
        main["order"] = order
        atomic_write_bytes(root / MANIFEST, json.dumps(main, indent=1).encode())
        for r in range(world_size):
            (root / f"index.rank{r}.jsonl").unlink(missing_ok=True)
            (root / f"manifest.rank{r}.json").unlink(missing_ok=True)
    finally:
        release_lock(lock)


def migrate_store(path: str | os.PathLike[str], *, _locked: bool = False) -> bool:
    """Convert a store of format version 1 (shards listed in ``manifest.json``) to version 2 in place.

    The index is written first, then the manifest (atomically), so a kill between the two leaves a version-1
    store that opens as before (and the next migration rewrites the index). Returns False for a store that is
    already version 2.
    """
    root = Path(path)
    lock = None if _locked else acquire_lock(root)
    try:
        manifest = read_manifest(root)
        if manifest["version"] != 1:
            return False
        lines = b"".join(
            (json.dumps({**s, "n": len(s["ids"])}, separators=(",", ":")) + "\n").encode() for s in manifest["shards"]
        )
        atomic_write_bytes(root / INDEX, lines)
        header = {k: v for k, v in manifest.items() if k != "shards"}
        atomic_write_bytes(root / MANIFEST, json.dumps({**header, "version": VERSION}, indent=1).encode())
        return True
    finally:
        if lock is not None:
            release_lock(lock)


# ---- reading -----------------------------------------------------------------------------------------------------
def _version(root: Path) -> Any:
    try:
        return json.loads((root / MANIFEST).read_text()).get("version")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None


def read_manifest(path: str | os.PathLike[str], name: str = MANIFEST) -> dict[str, Any]:
    """Read and check a store's manifest (version 1 with its ``shards``, or version 2: the header)."""
    mf = Path(path) / name
    if not mf.is_file():
        raise StoreError(f"{str(path)!r} is not a feature store: it has no {MANIFEST}.")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"the manifest of {str(path)!r} is not valid JSON ({e}).") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{str(mf)!r} is not a savlens feature-store manifest.")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise StoreError(
            f"feature store version {manifest.get('version')} is not supported (this savlens reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})."
        )
    problem = manifest_problem(manifest)
    if problem:
        raise StoreError(
            f"the manifest {str(mf)!r} is incomplete or invalid ({problem}): it was edited or not written by "
            "savlens. Re-extract into a new store folder."
        )
    return manifest


def read_store(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return a store's manifest and its shard records (from ``index.jsonl``, or a version-1 manifest)."""
    root = Path(path)
    manifest = read_manifest(root)
    if manifest["version"] == 1:
        return manifest, manifest["shards"]
    return manifest, read_index(root / INDEX)


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


def load_shards(
    path: str | os.PathLike[str], *, verify: bool = True
) -> tuple[dict[str, Any], list[tuple[Tensor, Tensor | None, Tensor | None]], list[str], list[Any], list[int] | None]:
    """Memory-map every shard of a store, checked against its index; nothing is read but headers (and every
    byte once with ``verify``).

    Returns:
        the manifest; per shard ``(z, log_probs, top_token)`` (the last two None without next-token output);
        the ids and labels in shard order; and the permutation (positions in shard order) that puts them in the
        manifest's ``order``, or None when shard order is that order.
    """
    root = Path(path)
    manifest, records = read_store(root)
    parts: list[tuple[Tensor, Tensor | None, Tensor | None]] = []
    next_token = manifest.get("logits") == "last"
    ids: list[str] = []
    labels: list[Any] = []
    width: int | None = None
    for shard in records:
        file = _shard_path(root, shard.get("file"))
        if not file.is_file():
            raise StoreError(
                f"the index of {str(root)!r} lists {shard['file']!r}, which is missing. Re-extract into a new "
                "store folder (or restore the file)."
            )
        if verify and sha256_file(file) != shard.get("sha256"):
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
        first = parts[0][0] if parts else None
        if z.shape[1] != len(manifest["layers"]) or (first is not None and z.shape[1:] != first.shape[1:]):
            raise StoreError(
                f"{str(file)!r} holds features of shape {tuple(z.shape[1:])} per example, but the manifest lists "
                f"{len(manifest['layers'])} layers"
                + (f" and the first shard holds {tuple(first.shape[1:])}" if first is not None else "")
                + ": the manifest and the shards disagree. Re-extract into a new store folder."
            )
        lp = top = None
        if next_token:
            lp, top = _mmap_tensor(file, "log_probs", 2), _mmap_tensor(file, "top_token", 1)
            tokens = manifest["logit_tokens"]
            if width is None:
                width = len(tokens) if isinstance(tokens, list) else lp.shape[1]
            if lp.shape != (z.shape[0], width) or top.shape != (z.shape[0],):
                raise StoreError(
                    f"{str(file)!r} holds log_probs of shape {tuple(lp.shape)} and top_token of shape "
                    f"{tuple(top.shape)} for {z.shape[0]} examples, but the manifest asks for ({z.shape[0]}, {width}) "
                    f"(logit_tokens {tokens if tokens == 'all' else len(tokens)}): the manifest and the shards "
                    "disagree. Re-extract into a new store folder."
                )
        parts.append((z, lp, top))
        ids.extend(shard["ids"])
        labels.extend(shard["labels"])
    if not parts:
        raise StoreError(f"the feature store {str(root)!r} holds no examples yet.")
    order = manifest.get("order")
    perm = None
    if order is not None and order != ids and len(order) == len(ids) and set(order) == set(ids):
        pos = {i: k for k, i in enumerate(ids)}
        perm = [pos[i] for i in order]
    return manifest, parts, ids, labels, perm


def open_store(path: str | os.PathLike[str], *, verify: bool = True) -> HeadFeatures:
    """Reopen a feature store as :class:`HeadFeatures` in memory (one copy of the shards when several).

    A store extracted with ``logits="last"`` also fills ``log_probs``, ``logit_tokens`` and ``top_token``
    (rows in the same example order as ``z``). For a store larger than memory use
    :func:`savlens.outofcore.open_shards`, which keeps the shards memory-mapped and streams them.

    Args:
        path: the store folder.
        verify: check each shard's sha256 against the index (reads every byte once).

    Raises:
        StoreError: no manifest, a shard missing or corrupt, an index and shards that disagree.
    """
    root = Path(path)
    manifest, parts, ids, labels, perm = load_shards(root, verify=verify)
    next_token = manifest.get("logits") == "last"

    def cat(k: int) -> Tensor | None:
        ts = [p[k] for p in parts]
        if ts[0] is None:
            return None
        out = ts[0] if len(ts) == 1 else torch.cat(ts)  # type: ignore[arg-type]
        return out[torch.tensor(perm)] if perm is not None else out

    z, lp_all, top_all = cat(0), cat(1), cat(2)
    if perm is not None:
        ids, labels = [ids[k] for k in perm], [labels[k] for k in perm]
    has_labels = any(lab is not None for lab in labels)
    try:
        return HeadFeatures(
            z=z,  # type: ignore[arg-type]
            labels=labels if has_labels else None,
            example_ids=ids,
            **provenance(manifest, root),
            log_probs=lp_all,
            logit_tokens=tuple(manifest["logit_tokens"]) if next_token and manifest["logit_tokens"] != "all" else None,
            top_token=top_all,
        )
    except SavlensError as e:  # e.g. an id listed in two shards
        raise StoreError(
            f"the feature store {str(root)!r} is inconsistent ({e.detail}). Re-extract into a new store folder."
        ) from e


def provenance(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    """The :class:`HeadFeatures` provenance fields of a store's manifest."""
    return {
        "model_id": manifest["model_id"],
        "hook": manifest["hook"],
        "positions": manifest.get("positions", "last"),
        "prompt_template": manifest.get("prompt_template"),
        "layers": tuple(manifest["layers"]),
        "meta": {
            "store": str(root),
            "fingerprint": manifest.get("fingerprint"),
            "dtype": manifest.get("dtype"),
            "chat": manifest.get("chat", True),
            "system_prompt": manifest.get("system_prompt"),
        },
    }


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "migrate":
        print("usage: python -m savlens.store migrate STORE_FOLDER", file=sys.stderr)
        return 2
    try:
        changed = migrate_store(argv[1])
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{argv[1]}: {'migrated to' if changed else 'already'} feature store version {VERSION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
