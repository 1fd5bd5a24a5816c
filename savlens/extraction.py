"""`savlens.extract`: per-head features of a data set, one forward pass per example, batched.

The SAV feature (step 1 of the method): for every example, every layer and every query head, the head's slice of
the attention output projection's input at the example's last token. Examples are batched with padding
(sorted by length so rows of a batch are alike, then put back in the given order), each batch's features are
moved to CPU as soon as it ends, and the forward pass stops after the deepest layer read (unless the model's
next-token output is kept too, ``logits="last"``: then it runs to the unembedding).
"""

import operator
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, InputError
from savlens.example import Example
from savlens.inputs import Batch
from savlens.loading import Model
from savlens.names import QUERY_HEAD_HOOKS, resolve, split_name
from savlens.store import FeatureStore, merge_ranks, open_store
from savlens.tracing import check_device_dtype, trace

_PER_HEAD = QUERY_HEAD_HOOKS
_PER_LAYER = (
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.hook_resid_post",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.hook_mlp_out",
)


def extract(
    model: Model,
    examples: Sequence[Example | str],
    names: str | Sequence[str] = "blocks.*.attn.hook_z",
    positions: str | int = "last",
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    store: str | os.PathLike[str] | None = None,
    prompt_template: str | None = None,
    chat: bool = True,
    system_prompt: str | None = None,
    progress: bool = True,
    logits: Literal["last"] | None = None,
    logit_tokens: Sequence[int] | Literal["all"] | None = None,
) -> HeadFeatures:
    """Extract per-head features of ``examples``: ``z: example layer head_index d_head`` at one position.

    With ``logits="last"`` the same forward pass also keeps the model's next-token output at each example's
    last real token, so a zero-shot baseline needs no second pass: ``log_probs: example d_vocab`` (float32
    ``log_softmax`` over the whole vocabulary, then the columns of ``logit_tokens``) and ``top_token:
    example`` (the argmax over the whole vocabulary, i.e. the greedy answer's first token).

    Args:
        model: a :class:`savlens.Model`.
        examples: the examples (labels and ids are carried over; examples without an id are numbered).
        names: per-layer hooks of one kind: ``blocks.*.attn.hook_z`` (default; a layer subset such as
            ``blocks.{10-20}.attn.hook_z`` reads only those layers), ``hook_result``, or a residual-width hook
            (``hook_attn_out``, ``hook_resid_post``, ...), stored with ``head_index`` = 1 so layer features
            fit the same tools.
        positions: ``"last"`` (default) or one index counted in each example's own tokens (``-2``).
        batch_size: rows per forward pass.
        dtype: dtype of the stored features (cast inside the hook).
        store: a folder to write safetensors shards + a JSON manifest to, one shard per batch. If it holds a
            partial extraction of the same model, hook, positions, template and ``logits`` /
            ``logit_tokens``, only the missing examples are run; the result is the same as an uninterrupted run.
        prompt_template: a ``str.format`` template with ``{text}``, passed to :meth:`savlens.Batch.from_examples`.
        chat: render through the chat template (passed to :meth:`savlens.Batch.from_examples`).
        system_prompt: an optional system message (passed to :meth:`savlens.Batch.from_examples`).
        progress: show a progress bar.
        logits: None (default: no next-token output; the forward pass stops after the deepest layer read) or
            ``"last"``: keep the next-token log-probs at each example's last real token (whatever ``positions``
            reads the features at). The early stop is turned off then: every layer and the unembedding run,
            which costs the layers after the deepest one read. The features are bit-identical either way.
        logit_tokens: with ``logits="last"``, required: the token ids whose log-probs to keep (e.g. the first
            token of each class label; columns in this order, each id once), or ``"all"`` for the whole
            vocabulary (``d_vocab`` float32 per example: 192 KiB for a 49k vocabulary, on disk and in memory).

    Data-parallel: inside an initialised ``torch.distributed`` group (``torchrun``, ``accelerate launch``) each
    rank runs every ``world_size``-th batch and writes its own shards and manifest into ``store``; when all
    ranks are done, rank 0 merges the manifests, and every rank returns the full features. The merged store
    equals a single-process one (the batches are the same). With ``device_map`` sharding, load the model with
    ``savlens.load(..., device_map="auto")`` instead: one process drives all devices.

    Raises:
        InputError: no examples, duplicate ids, batch_size < 1.
        ArgumentError: ``logits`` other than None / ``"last"``; ``logits="last"`` without ``logit_tokens``;
            ``logit_tokens`` without ``logits="last"``, empty, with repeated ids or ids outside the vocabulary.
        HookNameError: names that match no hook.
        StoreError: a store from another extraction (including another ``logits`` / ``logit_tokens``), a
            store that cannot be written.

    Example::

        yes, no = (model.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
        feats = savlens.extract(model, examples, logits="last", logit_tokens=[yes, no])
        feats.log_probs          # example d_vocab=2: log p(Yes), log p(No) at the last token
        feats.top_token          # example: the greedy next token
    """
    exs = [Example(e) if isinstance(e, str) else e for e in examples]
    if not exs:
        raise InputError("savlens.extract got no examples.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}.")
    for i, e in enumerate(exs):
        if not isinstance(e, Example):
            raise InputError(f"example {i} is a {type(e).__name__}; give savlens.Example objects or strings.")
    check_device_dtype(None, dtype, "savlens.extract")
    tokens = _check_logits(model, logits, logit_tokens)
    if isinstance(positions, bool) or not (positions == "last" or isinstance(positions, int)):
        raise InputError(f"extract reads one position per example: 'last' or an int index; got {positions!r}.")
    concrete = resolve(names, model.n_layers, model.multimodal, model.resolved.kinds)
    templates = {split_name(n)[1] for n in concrete}
    if len(templates) != 1 or not (templates <= set(_PER_HEAD) | set(_PER_LAYER)):
        raise InputError(
            f"extract reads one per-layer hook kind (e.g. 'blocks.*.attn.hook_z'); {names!r} matches "
            f"{sorted(templates)}."
        )
    template = templates.pop()
    layers = [int(split_name(n)[0]) for n in concrete]  # type: ignore[arg-type]
    ids = [e.id if e.id is not None else str(i) for i, e in enumerate(exs)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(f"duplicate example ids {dup}; give each example a unique id.")
    exs = [e if e.id is not None else _with_id(e, i) for e, i in zip(exs, ids)]
    hook = template.replace("{l}", "*")  # the layers read are in `layers`
    header = {
        "model_id": model.model_id,
        "fingerprint": model.fingerprint,
        "hook": hook,
        "positions": positions,
        "prompt_template": prompt_template,
        "chat": chat,
        "system_prompt": system_prompt,
        "layers": layers,
        "dtype": str(dtype).removeprefix("torch."),
        "logits": logits,
        "logit_tokens": tokens,
    }
    rank, world = _distributed()
    if world > 1 and store is None:
        raise InputError(
            "data-parallel extraction (torch.distributed with several ranks) needs store=: each rank "
            "writes its shards of one store, merged when all ranks are done."
        )
    store_rank = rank if world > 1 else None
    fs = FeatureStore(store, {**header, "order": ids}, rank=store_rank) if store is not None else None
    done = fs.done_ids if fs is not None else set()
    # sort by a cheap length proxy so a batch pads little (results are put back in the given order); the
    # batches are a function of the examples alone, so a resumed run batches exactly as an uninterrupted one
    ordered = sorted(exs, key=lambda e: (e.n_images, len(e.text)))
    chunks = [[e for e in ordered[i : i + batch_size] if e.id not in done] for i in range(0, len(ordered), batch_size)]
    parts: dict[str, tuple[Tensor, Tensor | None, Tensor | None]] = {}
    n_done = sum(1 for e in exs if e.id in done)
    bar = tqdm(total=len(exs), initial=n_done, desc="extract", unit="ex", disable=not progress)
    try:
        for i, chunk in enumerate(chunks):
            if not chunk or i % world != rank:  # ranks take batches round-robin
                continue
            z, lp, top = _run_batch(
                model, chunk, concrete, template, positions, dtype, prompt_template, chat, system_prompt, tokens
            )
            if not torch.isfinite(z).all():
                bad = [chunk[i].id for i in range(len(chunk)) if not torch.isfinite(z[i]).all()]
                raise FeatureError(f"non-finite features for examples {bad[:5]}: the model produced NaN or inf.")
            if lp is not None and torch.isnan(lp).any():  # -inf is a valid log-prob (a masked token)
                bad = [chunk[i].id for i in range(len(chunk)) if torch.isnan(lp[i]).any()]
                raise FeatureError(f"NaN next-token log-probs for examples {bad[:5]}: the model produced NaN logits.")
            if fs is not None:
                fs.append(z, [str(e.id) for e in chunk], [_json_label(e.label) for e in chunk], lp, top)
            else:
                for k, e in enumerate(chunk):
                    parts[str(e.id)] = (z[k], None if lp is None else lp[k], None if top is None else top[k])
            bar.update(len(chunk))
    finally:
        bar.close()
        if fs is not None:
            fs.close()  # release the write lock, also when the run fails
    if fs is not None and world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            merge_ranks(fs.path, header, world, ids)
        dist.barrier()
    if fs is not None and (world == 1 or rank == 0):
        with FeatureStore(store, {**header, "order": ids}) as fs:  # type: ignore[arg-type]
            if fs.manifest.get("order") != ids and fs.done_ids == set(ids):
                fs.set_order(ids)
    if fs is not None and world > 1:
        dist.barrier()
    if fs is not None:
        feats = open_store(fs.path, verify=False)
        if feats.example_ids != ids:  # the store holds more examples than asked for
            where = {i: k for k, i in enumerate(feats.example_ids or [])}
            feats = feats.subset([where[i] for i in ids])
        return feats
    zs = torch.stack([parts[i][0] for i in ids])
    return HeadFeatures(
        z=zs,
        labels=[e.label for e in exs] if any(e.label is not None for e in exs) else None,
        example_ids=ids,
        model_id=model.model_id,
        hook=hook,
        positions=str(positions),
        prompt_template=prompt_template,
        layers=tuple(layers),
        meta={"fingerprint": model.fingerprint, "dtype": header["dtype"], "chat": chat, "system_prompt": system_prompt},
        log_probs=_stack([parts[i][1] for i in ids]),
        logit_tokens=tuple(tokens) if isinstance(tokens, list) else None,
        top_token=_stack([parts[i][2] for i in ids]),
    )


def _stack(rows: list[Tensor | None]) -> Tensor | None:
    """Stack per-example rows, or return None when they were not kept."""
    kept = [r for r in rows if r is not None]
    return torch.stack(kept) if kept else None


def _run_batch(
    model: Model,
    chunk: list[Example],
    concrete: list[str],
    template: str,
    positions: Any,
    dtype: torch.dtype,
    prompt_template: str | None,
    chat: bool,
    system_prompt: str | None,
    tokens: list[int] | Literal["all"] | None = None,
) -> tuple[
    Float[Tensor, "batch layer head_index d_head"],
    Float[Tensor, "batch d_vocab"] | None,
    Int[Tensor, " batch"] | None,
]:
    """Run one batch; return its features and, when ``tokens`` is given, its next-token log-probs (the columns
    of ``tokens``, or all) and top token at each row's last real token, all on CPU."""
    batch = Batch.from_examples(model, chunk, prompt_template=prompt_template, chat=chat, system_prompt=system_prompt)
    pos = positions if positions == "last" else [positions]
    stop = None if tokens is not None else max(int(split_name(n)[0] or 0) for n in concrete)
    with trace(model, batch, logits="last" if tokens is not None else None, stop_at_layer=stop) as t:
        h = t.save(concrete, pos, device="cpu", dtype=dtype)
    z = h.value if len(concrete) > 1 else h.value.unsqueeze(2)  # batch pos layer ...
    z = z[:, 0]  # one position
    if template in _PER_LAYER:
        z = z.unsqueeze(2)  # batch layer head_index=1 d_model
    if tokens is None:
        return z, None, None
    last = t.logits[:, 0].float()  # batch d_vocab, at each row's last real token
    top = last.argmax(-1).cpu()
    lp = last.log_softmax(-1)
    if tokens != "all":
        lp = lp[:, torch.tensor(tokens, device=lp.device)]
    return z, lp.cpu().contiguous(), top


def _check_logits(model: Model, logits: Any, logit_tokens: Any) -> list[int] | Literal["all"] | None:
    """Check ``extract``'s ``logits`` / ``logit_tokens``; return the token ids to keep, ``"all"`` or None."""
    if logits is None:
        if logit_tokens is not None:
            raise ArgumentError(
                f"savlens.extract got logit_tokens={_short(logit_tokens)} but logits=None; pass logits='last' to keep "
                "the next-token log-probs of those tokens, or drop logit_tokens."
            )
        return None
    if logits != "last":
        raise ArgumentError(
            f"savlens.extract(logits={logits!r}): logits takes None (default) or 'last' (the next-token log-probs at "
            "each example's last real token). For the logits at every position use savlens.trace(..., logits='all')."
        )
    vocab = model.sizes.d_vocab
    if logit_tokens is None:
        raise ArgumentError(
            "savlens.extract(logits='last') needs logit_tokens=: the token ids whose log-probs to keep (e.g. the first "
            f"token of each class label), or logit_tokens='all' for the whole vocabulary ({vocab} float32 per "
            f"example, {vocab * 4 / 1024:.0f} KiB, for {model.model_id!r})."
        )
    if isinstance(logit_tokens, str):
        if logit_tokens == "all":
            return "all"
        raise ArgumentError(
            f"savlens.extract: logit_tokens={logit_tokens!r} is not a list of token ids; pass ids such as "
            "tokenizer.encode(' Yes', add_special_tokens=False)[:1], or 'all' for the whole vocabulary."
        )
    try:
        ids = [_token_id(t) for t in logit_tokens]
    except TypeError:
        raise ArgumentError(
            f"savlens.extract: logit_tokens={_short(logit_tokens)} is not a list of int token ids; pass ids such as "
            "tokenizer.encode(' Yes', add_special_tokens=False)[:1], or 'all' for the whole vocabulary."
        ) from None
    if not ids:
        raise ArgumentError(
            "savlens.extract: logit_tokens=[] keeps no column; pass at least one token id (e.g. the first token of "
            "each class label), or 'all' for the whole vocabulary."
        )
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise ArgumentError(
            f"savlens.extract: logit_tokens {bad[:5]} are outside the vocabulary of {model.model_id!r} (token ids "
            f"0..{vocab - 1}); take the ids from this model's tokenizer."
        )
    if len(set(ids)) != len(ids):
        dup = sorted({t for t in ids if ids.count(t) > 1})[:5]
        raise ArgumentError(
            f"savlens.extract: logit_tokens repeats {dup}; give each id once (labels that share a first token cannot "
            "be told apart by it: use a token where they differ)."
        )
    return ids


def _token_id(t: Any) -> int:
    if isinstance(t, bool):
        raise TypeError("bool")
    return operator.index(t)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _distributed() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of an initialised torch.distributed group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _with_id(e: Example, i: str) -> Example:
    import dataclasses

    return dataclasses.replace(e, id=i)


def _json_label(label: Any) -> Any:
    if label is None or isinstance(label, (str, int)) and not isinstance(label, bool):
        return label
    raise InputError(f"labels must be str or int to be stored; got {label!r} ({type(label).__name__}).")
