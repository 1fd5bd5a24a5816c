"""Text tasks, example pools and cached feature extraction for experiments/reproduce_text.py.

Extraction is the only expensive step, so it happens once per (model, task, pool): one forward pass per
example through :func:`savlens.trace` that keeps both the SAV feature (``blocks.*.attn.hook_z`` at the last
token) and the last-token logits (for the zero-shot baseline), written in resumable chunks under a cache
folder. Everything after that works on the cached tensors.

Why not :func:`savlens.extract`: it stops the forward pass at the deepest layer read and keeps no logits, so
the zero-shot baseline would need a second full pass over every example. The features are the same (both
read ``hook_z`` at ``positions="last"`` on padded batches; batch invariance holds to ~1e-6 in fp32).
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import savlens
from savlens.datasets import FORTUNES_PROMPT, load_fortunes

HOOK = "blocks.*.attn.hook_z"
CACHE_VERSION = 1


@dataclass(frozen=True)
class TextTask:
    """A text classification task: fortunes categories, a completion prompt and the class words.

    Attributes:
        name: short task name used in tables.
        categories: fortunes categories (the labels), in table order.
        words: the class name the zero-shot baseline scores for each category (a single token with a
            leading space, in lower case and capitalised).
        prompt: the ``str.format`` template applied to each record (``{text}``), fed raw (no chat template).
    """

    name: str
    categories: tuple[str, ...]
    words: tuple[str, ...]
    prompt: str = FORTUNES_PROMPT
    description: str = ""


TASKS = {
    "topics-a": TextTask(
        "topics-a",
        ("science", "politics", "food", "love", "sports"),
        ("science", "politics", "food", "love", "sports"),
        description="fortunes categories science / politics / food / love / sports",
    ),
    "topics-b": TextTask(
        "topics-b",
        ("computers", "drugs", "education", "law", "kids"),
        ("computers", "drugs", "education", "law", "kids"),
        description="fortunes categories computers / drugs / education / law / kids",
    ),
}


def build_pool(task: TextTask, per_class: int, *, max_chars: int = 200, seed: int = 0) -> list[savlens.Example]:
    """Return a fixed pool of ``per_class`` records of each category (seeded draw, then file order).

    Records are raw texts (the prompt is applied at extraction); records longer than ``max_chars`` and
    records shared by two of the task's categories are left out (:func:`savlens.datasets.load_fortunes`).
    """
    examples = load_fortunes(task.categories, max_chars=max_chars, template="{text}")
    rng = np.random.default_rng(seed)
    pool: list[savlens.Example] = []
    for cat in task.categories:
        mine = [e for e in examples if e.label == cat]
        if len(mine) < per_class:
            raise SystemExit(
                f"task {task.name}: category {cat!r} has {len(mine)} records of at most {max_chars} characters; "
                f"the pool needs {per_class}. Lower --per-class or raise --max-chars."
            )
        keep = sorted(rng.permutation(len(mine))[:per_class].tolist())
        pool += [mine[i] for i in keep]
    return pool


def class_tokens(model: savlens.Model, task: TextTask) -> list[list[int]]:
    """Return, for each class, the token ids the zero-shot baseline sums over: ``" word"`` and ``" Word"``.

    Each spelling must be one token, and no token may belong to two classes (checked here).
    """
    tok = model.tokenizer
    out: list[list[int]] = []
    for word in task.words:
        ids = []
        for spelling in (f" {word}", f" {word.capitalize()}"):
            enc = tok.encode(spelling, add_special_tokens=False)
            if len(enc) != 1:
                raise SystemExit(f"task {task.name}: {spelling!r} is {len(enc)} tokens; choose one-token class words.")
            ids.append(enc[0])
        out.append(sorted(set(ids)))
    flat = [i for ids in out for i in ids]
    if len(flat) != len(set(flat)):
        raise SystemExit(f"task {task.name}: two classes share a zero-shot token.")
    return out


@dataclass
class PoolFeatures:
    """Cached outputs of one model on one task's pool.

    Attributes:
        features: ``example layer head_index d_head`` SAV features (labels = categories).
        class_logprob: ``example class`` zero-shot score: log of the summed next-token probability of the
            class's spellings (``" word"``, ``" Word"``) after the prompt.
        top1: ``example`` the greedy next token id.
        seconds: extraction time of this run (0 when everything came from the cache).
        cached: examples read from the cache.
    """

    features: savlens.HeadFeatures
    class_logprob: torch.Tensor
    top1: torch.Tensor
    class_token_ids: list[list[int]]
    seconds: float = 0.0
    cached: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def _key(model: savlens.Model, model_tag: str, task: TextTask, pool: list[savlens.Example], tokens: Any) -> str:
    payload = json.dumps(
        {
            "v": CACHE_VERSION,
            "model": model_tag,
            "fingerprint": model.fingerprint,
            "prompt": task.prompt,
            "ids": [e.id for e in pool],
            "texts": hashlib.sha256("\x00".join(e.text for e in pool).encode()).hexdigest(),
            "tokens": tokens,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def extract_pool(
    model: savlens.Model,
    model_tag: str,
    task: TextTask,
    pool: list[savlens.Example],
    cache_dir: Path,
    *,
    batch_size: int = 16,
    log: Any = print,
) -> PoolFeatures:
    """Run ``model`` once over ``pool`` (raw prompt ``task.prompt``), caching features and zero-shot scores.

    Examples are sorted by text length and cut into chunks of ``batch_size``; each chunk is one
    ``savlens.trace`` (one padded forward pass) and one ``chunk-XXXXX.safetensors`` file, written
    atomically, so an interrupted run resumes at the first missing chunk.
    """
    import time

    tokens = class_tokens(model, task)
    folder = Path(cache_dir) / f"{task.name}-{model_tag}-{_key(model, model_tag, task, pool, tokens)}"
    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(pool)), key=lambda i: (len(pool[i].text), i))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    flat_tokens = [t for ids in tokens for t in ids]
    start = time.perf_counter()
    n_cached = 0
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for c, rows in enumerate(chunks):
        path = folder / f"chunk-{c:05d}.safetensors"
        if path.is_file():
            parts[c] = load_file(path)
            n_cached += len(rows)
            continue
        batch = savlens.Batch.from_examples(model, [pool[i] for i in rows], prompt_template=task.prompt, chat=False)
        with savlens.trace(model, batch) as t:
            h = t.save(HOOK, "last", device="cpu", dtype=torch.float32)
        logprob = torch.log_softmax(t.logits[:, 0].double(), dim=-1)
        data = {
            "z": h.value[:, 0].contiguous(),
            "token_logprob": logprob[:, flat_tokens].float().contiguous(),
            "top1": logprob.argmax(-1).contiguous(),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(data, tmp)
        os.replace(tmp, path)
        parts[c] = data
        done = sum(len(chunks[j]) for j in parts)
        if c % 5 == 4 or c == len(chunks) - 1:
            log(f"  {task.name} / {model_tag}: {done}/{len(pool)} examples ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    inv = torch.empty(len(pool), dtype=torch.long)
    inv[torch.tensor([i for rows in chunks for i in rows])] = torch.arange(len(pool))
    z = torch.cat([parts[c]["z"] for c in range(len(chunks))])[inv]
    tok_lp = torch.cat([parts[c]["token_logprob"] for c in range(len(chunks))])[inv].double()
    top1 = torch.cat([parts[c]["top1"] for c in range(len(chunks))])[inv]
    cols, class_lp = 0, []
    for ids in tokens:
        class_lp.append(torch.logsumexp(tok_lp[:, cols : cols + len(ids)], dim=-1))
        cols += len(ids)
    features = savlens.HeadFeatures(
        z=z,
        labels=[e.label for e in pool],
        example_ids=[str(e.id) for e in pool],
        model_id=model.model_id,
        hook=HOOK,
        positions="last",
        prompt_template=task.prompt,
        layers=tuple(range(model.n_layers)),
        meta={"fingerprint": model.fingerprint, "model_tag": model_tag},
    )
    return PoolFeatures(
        features=features,
        class_logprob=torch.stack(class_lp, dim=-1),
        top1=top1,
        class_token_ids=tokens,
        seconds=seconds if n_cached < len(pool) else 0.0,
        cached=n_cached,
        info={"cache": str(folder), "chunks": len(chunks)},
    )


def random_init_like(model: savlens.Model, seed: int = 0) -> savlens.Model:
    """Return the same architecture and tokenizer with freshly initialised (random) weights.

    The HF class's own initialisation (``post_init``: normal with the config's ``initializer_range``, norms
    at one) under ``torch.manual_seed(seed)``. The model id is the real one's with ``"-random-init"``, so
    its features never mix with the real ones.
    """
    hf: Any = model.hf
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        rand = type(hf)._from_config(hf.config, attn_implementation="sdpa", dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    return savlens.wrap(rand.eval(), model.tokenizer, model_id=f"{model.model_id}-random-init")
