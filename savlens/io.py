"""Atomic, pickle-free artefact I/O: safetensors for tensors, JSON for manifests.

Every write goes to a temporary file in the destination's folder, is flushed to disk, then renamed over
the destination with :func:`os.replace`, so a reader sees the old file or the new one, never half of one.
Tensor files are identified by the SHA-256 of their bytes, which readers check before trusting them.
"""

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor

from savlens.errors import StoreError

PathLike = str | os.PathLike[str]


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` for a temp file next to ``path``, fsync it, then rename it onto ``path``."""
    dest = Path(path)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk (ENOSPC), a read-only or missing folder, no permission
            raise StoreError(
                f"cannot write {str(dest)!r} ({e.strerror or e}); free disk space or choose a writable folder. "
                f"{'The file there is unchanged.' if dest.exists() else 'Nothing was written.'}"
            ) from e
        raise


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _atomic_write(path, write)


def savlens_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the savlens user cache folder (converted weights, cached image features, experiment caches).

    Args:
        cache_dir: an explicit folder; wins over the environment.

    Returns:
        ``cache_dir`` if given, else ``$SAVLENS_CACHE``, else the platform's user cache folder for savlens
        (``platformdirs.user_cache_path("savlens")``: ``$XDG_CACHE_HOME/savlens`` or ``~/.cache/savlens`` on
        Linux, ``~/Library/Caches/savlens`` on macOS).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SAVLENS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path("savlens", appauthor=False)


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Return the hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN / inf are refused)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise StoreError(f"cannot write {os.fspath(path)!r} as JSON: {e}.") from None
    write_bytes(path, (text + "\n").encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def read_json(path: PathLike) -> Any:
    """Read a JSON file, raising :class:`StoreError` when it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise StoreError(f"{os.fspath(path)!r} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise StoreError(f"{os.fspath(path)!r} is not valid JSON ({e}).") from None
    except (OSError, ValueError) as e:  # a folder in the way, a file in place of a folder, huge numbers
        raise StoreError(f"cannot read {os.fspath(path)!r} as JSON ({type(e).__name__}: {e}).") from None


def tensors_to_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Return ``tensors`` serialised as a safetensors file (for content-addressed names: hash, then write
    with :func:`write_bytes`); tensors are moved to CPU and made contiguous (and copied, so that no two share
    memory).

    Example:
        >>> data = tensors_to_bytes({"x": torch.arange(3.0)})
        >>> from safetensors.torch import load
        >>> load(data)["x"].tolist()
        [0.0, 1.0, 2.0]
    """
    plain = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return save_bytes(plain, metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def read_tensors(path: PathLike, *, sha256: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file, first checking its SHA-256 when ``sha256`` is given.

    Raises:
        StoreError: the file is missing, its hash differs from ``sha256`` (changed or truncated since it was
            written), or it is not a valid safetensors file.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise StoreError(f"tensor file {name!r} does not exist.")
    if sha256 is not None:
        try:
            actual = sha256_file(name)
        except OSError as e:
            raise StoreError(f"cannot read tensor file {name!r} ({e.strerror or e}).") from None
        if actual != sha256:
            raise StoreError(
                f"tensor file {name!r} has SHA-256 {actual[:16]}... but its manifest records {sha256[:16]}...; "
                "the file was changed or truncated after it was written. Re-create it."
            )
    try:
        return load_file(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise StoreError(
            f"tensor file {name!r} is not a valid safetensors file ({e}); it is corrupt or not a savlens file. "
            "Re-create it."
        ) from None


def json_safe(value: Any) -> Any:
    """Return ``value`` with anything JSON cannot hold replaced by its ``repr`` (for free-form metadata)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)
