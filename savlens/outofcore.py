"""Features larger than memory: a store opened without reading it, streamed in blocks under a memory bound.

:func:`open_shards` returns :class:`StoredFeatures`: the shards of a feature store memory-mapped (nothing is read
but their headers), with the ids, labels and provenance of :class:`~savlens.cache.HeadFeatures`. The centroid
and Fisher criteria, :class:`~savlens.sav.SAV` ``fit`` / ``predict`` / ``votes`` / ``score`` accept it and read
the shards in blocks of examples and heads, so their peak memory stays near :func:`memory_bound` (default
2 GiB) whatever the store's size; the results equal those of the same call on the features in memory.

Example:
    >>> import tempfile, torch
    >>> from savlens.store import FeatureStore
    >>> folder = tempfile.mkdtemp()
    >>> with FeatureStore(folder, {"model_id": "m", "hook": "blocks.*.attn.hook_z", "layers": [0]}) as fs:
    ...     fs.append(torch.ones(4, 1, 2, 3, dtype=torch.float16), ["a", "b", "c", "d"], [0, 1, 0, 1])
    >>> stored = open_shards(folder)
    >>> stored.n_examples, stored.dtype, stored.chunk(1, 3).example_ids
    (4, torch.float16, ['b', 'c'])
"""

import contextlib
import os
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from savlens.cache import HeadFeatures, check_same_source, describe_features, head_indices
from savlens.errors import ArgumentError, FeatureError, SavlensError, StoreError
from savlens.store import load_shards, provenance

MEMORY_BOUND = 2 * 2**30
"""The default bound, in bytes, on the working memory of streamed scoring and fitting (2 GiB)."""

_bound = [MEMORY_BOUND]


def memory_bound() -> int:
    """Return the current bound (bytes) on the working memory of streamed computations."""
    return _bound[0]


def set_memory_bound(nbytes: int) -> None:
    """Set the bound (bytes) on the working memory of streamed scoring and fitting (default 2 GiB).

    The bound covers the blocks read from the shards and the arrays computed from them; the memory map itself
    is page cache that the operating system reclaims. A bound smaller than one example's row still works (one
    example, a few heads at a time), only slower.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ArgumentError(f"set_memory_bound takes a positive number of bytes; got {nbytes!r}.")
    _bound[0] = nbytes


@contextlib.contextmanager
def bounded_memory(nbytes: int) -> Iterator[None]:
    """Use ``nbytes`` as :func:`memory_bound` inside a ``with`` block."""
    old = memory_bound()
    set_memory_bound(nbytes)
    try:
        yield
    finally:
        _bound[0] = old


class StoredFeatures:
    """The head features of a store, memory-mapped: ``example layer head_index d_head`` read block by block.

    Has the sizes and provenance of :class:`HeadFeatures` (``n_examples``, ``n_layers``, ``n_heads``, ``d_head``,
    ``labels``, ``example_ids``, ``layers``, ``model_id``, ``hook``, ``positions``, ``prompt_template``,
    ``meta``, :meth:`describe`), in the store's example order, but no ``z`` tensor: read rows with :meth:`rows`,
    in-memory pieces with :meth:`chunk`, everything with :meth:`load`.
    """

    def __init__(
        self,
        shards: list[Tensor],
        example_ids: list[str],
        labels: list[Hashable] | None,
        perm: list[int] | None,
        info: dict[str, Any],
    ) -> None:
        self.shards = shards
        self.example_ids = example_ids
        self.labels = labels
        self.model_id: str = info["model_id"]
        self.hook: str = info["hook"]
        self.positions: str = info["positions"]
        self.prompt_template: str | None = info["prompt_template"]
        self.layers: tuple[int, ...] = tuple(info["layers"])
        self.meta: dict[str, Any] = info["meta"]
        starts = [0]
        for z in shards:
            starts.append(starts[-1] + int(z.shape[0]))
        self._starts = torch.tensor(starts)
        self._perm = None if perm is None else torch.tensor(perm, dtype=torch.long)

    # sizes ------------------------------------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        return len(self.example_ids)

    @property
    def n_layers(self) -> int:
        return int(self.shards[0].shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.shards[0].shape[2])

    @property
    def d_head(self) -> int:
        return int(self.shards[0].shape[3])

    @property
    def dtype(self) -> torch.dtype:
        """The stored dtype (float16, bfloat16 or float32); blocks are upcast when read for scoring."""
        return self.shards[0].dtype

    @property
    def nbytes(self) -> int:
        """Bytes of these examples' features on disk (of the examples :meth:`subset` kept)."""
        return self.n_examples * self.n_layers * self.n_heads * self.d_head * self.dtype.itemsize

    def __len__(self) -> int:
        return self.n_examples

    def __repr__(self) -> str:
        return (
            f"StoredFeatures(example={self.n_examples}, layer={self.n_layers}, head_index={self.n_heads}, "
            f"d_head={self.d_head}, dtype={str(self.dtype).removeprefix('torch.')}, shards={len(self.shards)}, "
            f"model_id={self.model_id!r}, hook={self.hook!r})"
        )

    def describe(self) -> dict[str, Any]:
        """Return the provenance fields (no tensors), as :meth:`HeadFeatures.describe`."""
        return describe_features(self)

    # reading ----------------------------------------------------------------------------------------
    def rows(self, start: int, stop: int, heads: slice | Tensor | None = None) -> Float[Tensor, "example head d_head"]:
        """Return examples ``start:stop`` (store order) of the flat heads ``heads`` (layer-major), stored dtype.

        ``heads`` is a slice or an int64 tensor of flat head indices (:func:`head_indices`). Only those rows and
        heads are copied out of the shards.
        """
        heads = slice(None) if heads is None else heads
        if stop <= start:
            z0 = self.shards[0]
            return z0.reshape(z0.shape[0], -1, z0.shape[-1])[:0, heads].clone()
        if self._perm is None:
            lo = int(torch.searchsorted(self._starts, start, right=True)) - 1
            parts = []
            while start < stop:
                base, end = int(self._starts[lo]), int(self._starts[lo + 1])
                z = self.shards[lo]
                take = min(stop, end) - start
                if take > 0:
                    flat = z.reshape(z.shape[0], -1, z.shape[-1])
                    parts.append(flat[start - base : start - base + take, heads])
                    start += take
                lo += 1
            if len(parts) > 1:
                return torch.cat(parts)
            return parts[0] if isinstance(heads, Tensor) else parts[0].clone()  # an index already copied
        pos = self._perm[start:stop]
        shard = torch.searchsorted(self._starts, pos, right=True) - 1
        out = None
        for s in torch.unique(shard).tolist():
            where = torch.nonzero(shard == s).squeeze(1)
            z = self.shards[s]
            flat = z.reshape(z.shape[0], -1, z.shape[-1])
            local = pos[where] - self._starts[s]
            # a slice of heads is a view: index its rows; index tensors pick (row, head) pairs, copying only them
            block = flat[:, heads][local] if isinstance(heads, slice) else flat[local[:, None], heads[None, :]]
            if out is None:
                out = torch.empty((stop - start, *block.shape[1:]), dtype=block.dtype)
            out[where] = block
        assert out is not None
        return out

    def chunk(self, start: int, stop: int) -> HeadFeatures:
        """Return examples ``start:stop`` (store order) as in-memory :class:`HeadFeatures`."""
        z = self.rows(start, stop).reshape(-1, self.n_layers, self.n_heads, self.d_head)
        return HeadFeatures(
            z=z,
            labels=self.labels[start:stop] if self.labels is not None else None,
            example_ids=self.example_ids[start:stop],
            model_id=self.model_id,
            hook=self.hook,
            positions=self.positions,
            prompt_template=self.prompt_template,
            layers=self.layers,
            meta=self.meta,
        )

    def chunks(self, examples: int) -> Iterator[HeadFeatures]:
        """Yield consecutive in-memory :class:`HeadFeatures` of at most ``examples`` examples."""
        for start in range(0, self.n_examples, examples):
            yield self.chunk(start, min(start + examples, self.n_examples))

    def examples_per_chunk(self, bytes_per_example: int | None = None) -> int:
        """Return how many examples fit a quarter of :func:`memory_bound` (at least 1), at
        ``bytes_per_example`` (default: a row in the stored dtype plus its float32 copy)."""
        per = bytes_per_example or self.n_layers * self.n_heads * self.d_head * (self.dtype.itemsize + 4)
        return max(1, memory_bound() // 4 // max(1, per))

    def subset(self, indices: "Sequence[int] | Tensor") -> "StoredFeatures":
        """Return the examples at ``indices`` (store order; each at most once) as :class:`StoredFeatures` over the
        same shards (nothing is read), e.g. a task's training and test split of one store."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = self.n_examples
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise ArgumentError(f"StoredFeatures.subset: indices must lie in [-{n}, {n}); got {indices!r}.")
        idx = idx % max(1, n)
        if len(set(idx.tolist())) != idx.numel():
            raise ArgumentError("StoredFeatures.subset: indices repeat an example; example ids must stay unique.")
        perm = (idx if self._perm is None else self._perm[idx]).tolist()
        info = {**self.describe(), "meta": self.meta}
        picked = idx.tolist()
        labels = None if self.labels is None else [self.labels[i] for i in picked]
        return StoredFeatures(self.shards, [self.example_ids[i] for i in picked], labels, perm, info)

    def check_compatible(self, other: "HeadFeatures | StoredFeatures", what: str = "these features") -> None:
        """Raise :class:`FeatureError` unless ``other`` comes from the same model, hook, positions and grid
        (as :meth:`HeadFeatures.check_compatible`)."""
        check_same_source(self, other, what)

    def load(self) -> HeadFeatures:
        """Read the whole store into memory (refused when it is larger than :func:`memory_bound`)."""
        if self.nbytes > memory_bound():
            raise FeatureError(
                f"these stored features take {self.nbytes / 2**30:.2f} GiB, more than the memory bound "
                f"({memory_bound() / 2**30:.2f} GiB); use a streamed computation, or raise the bound with "
                "savlens.outofcore.set_memory_bound."
            )
        return self.chunk(0, self.n_examples)


def open_shards(path: str | os.PathLike[str], *, verify: bool = False) -> StoredFeatures:
    """Open a feature store without reading it: shards memory-mapped, ids and labels from its index.

    Checks every shard's header and size against the index (and, with ``verify``, its sha256, reading every
    byte once).

    Raises:
        StoreError: no manifest, a shard missing, truncated or corrupt, an index and shards that disagree.
    """
    root = Path(path)
    manifest, parts, ids, labels, perm = load_shards(root, verify=verify)
    if perm is not None:
        ids, labels = [ids[k] for k in perm], [labels[k] for k in perm]
    if len(set(ids)) != len(ids):
        raise StoreError(
            f"the feature store {str(root)!r} is inconsistent (an example id is listed in two shards). "
            "Re-extract into a new store folder."
        )
    has_labels = any(lab is not None for lab in labels)
    try:
        return StoredFeatures(
            [p[0] for p in parts], ids, labels if has_labels else None, perm, provenance(manifest, root)
        )
    except SavlensError as e:  # pragma: no cover - provenance is checked by read_manifest
        raise StoreError(f"the feature store {str(root)!r} is inconsistent ({e.detail}).") from e


MIN_HEADS_PER_GROUP = 64
"""Fewest heads per group when whole examples are kept in a block: below that a group's slice of each row is too
short a read, and blocks of examples with every head (read twice) are faster."""


def block_sizes(
    features: "HeadFeatures | StoredFeatures",
    state_per_head: int,
    raw_per_example_head: int,
    temp_per_example_head: int,
) -> tuple[int, int, int]:
    """Return ``(heads_per_group, examples_per_block, heads_per_step)`` for a streamed computation.

    A quarter of :func:`memory_bound` goes to the state kept per head (bytes per head: class sums), half to the
    block read from the features (bytes per example and head, stored dtype), a quarter to the float64 arrays of
    one step (a few heads of the block at a time, bytes per example and head). When every example of a group of
    at least ``MIN_HEADS_PER_GROUP`` heads fits, the block is the whole group (each byte read once); otherwise
    blocks of examples with as many heads as the state allows (read once per pass).
    """
    bound = memory_bound()
    n, n_flat = features.n_examples, features.n_layers * features.n_heads
    heads = max(1, min(n_flat, bound // 4 // max(1, state_per_head)))
    whole = bound // 2 // max(1, n * raw_per_example_head)
    if whole >= min(heads, MIN_HEADS_PER_GROUP):
        heads, rows = int(min(heads, whole)), n
    else:
        rows = max(1, min(n, bound // 2 // max(1, heads * raw_per_example_head)))
    step = max(1, min(16, heads, bound // 4 // max(1, rows * temp_per_example_head)))
    return heads, rows, step


def head_blocks(
    features: StoredFeatures, heads: "Iterable[Any]", what: str = "features"
) -> Iterator[Float[Tensor, "example k d_head"]]:
    """Yield the vectors of ``heads`` (in order) for consecutive blocks of examples, in the stored dtype.

    Only those heads are read from the shards (``k d_head`` values per example, not whole rows); a block holds as
    many examples as fit a quarter of :func:`memory_bound` (the block, its float32 and float64 copies). NaN or
    infinite values raise :class:`FeatureError` naming the example and head, as for in-memory features.
    """
    heads = list(heads)
    idx = head_indices(features, heads, what)
    per = len(heads) * features.d_head * (features.dtype.itemsize + 4 + 8)
    rows = max(1, memory_bound() // 4 // max(1, per))
    for start in range(0, features.n_examples, rows):
        block = features.rows(start, min(start + rows, features.n_examples), idx)
        finite = torch.isfinite(block).all(dim=-1)
        if not finite.all():
            i, j = torch.nonzero(~finite)[0].tolist()
            raise FeatureError(
                f"{what}: NaN or infinite values in head {heads[j]} of example {features.example_ids[start + i]!r}."
            )
        yield block
