"""Heads, ranked head sets and per-head score tables.

A :class:`Head` names one query head of one layer (``L14H3``); a :class:`HeadSet` is an ordered
(ranked) collection of heads, the output of head selection; a :class:`HeadScores` is the
``layer head_index`` table a selection criterion produces (see :mod:`savlens.scoring`).

Heads are numbered with the model's layer numbers (``HeadScores.layers`` maps table rows to model layers)
and flattened layer-major: ``flat = layer * n_heads + head``.
"""

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from savlens.errors import ArgumentError, FeatureError, HookNameError, SavlensError

_HEAD_RE = re.compile(r"^\s*L(\d+)\s*H(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: query head ``head`` of model layer ``layer``.

    Heads order by (layer, head); ``str(head)`` is ``"L{layer}H{head}"`` and :meth:`parse` reads it back.

    Example:
        >>> h = Head(14, 3)
        >>> str(h), Head.parse("L14H3") == h, Head(2, 5) < h
        ('L14H3', True, True)
    """

    layer: int
    head: int

    def __post_init__(self) -> None:
        for name in ("layer", "head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ArgumentError(f"Head.{name} must be an int; got {value!r}.")
            if value < 0:
                raise ArgumentError(f"Head.{name} must be >= 0; got {value}.")
            object.__setattr__(self, name, int(value))

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, text: str) -> "Head":
        """Read a head from its ``"L{layer}H{head}"`` label (e.g. ``"L14H3"``)."""
        m = _HEAD_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise HookNameError(f"cannot read a head from {text!r}; write it as 'L{{layer}}H{{head}}', e.g. 'L14H3'.")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def coerce(cls, value: "Head | str | tuple[int, int] | Sequence[int]") -> "Head":
        """Return ``value`` as a :class:`Head` (from a Head, an ``"L14H3"`` label or a ``(layer, head)`` pair)."""
        if isinstance(value, Head):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Sequence) and len(value) == 2:
            return cls(value[0], value[1])  # type: ignore[arg-type]
        raise ArgumentError(f"cannot read a head from {value!r}; give a Head, 'L14H3' or (layer, head).")

    def flat(self, n_heads: int) -> int:
        """Return the layer-major flat index ``layer * n_heads + head``."""
        if self.head >= n_heads:
            raise FeatureError(f"head {self} does not exist in a grid with head_index={n_heads}.")
        return self.layer * n_heads + self.head


class HeadSet(Sequence[Head]):
    """An ordered set of heads, best-ranked first.

    Build one from heads, ``"L14H3"`` labels, ``(layer, head)`` pairs, or one string ``"L14H3, L20H7"``.
    Set algebra keeps the rank order of the left operand: ``a | b`` is ``a`` followed by the heads of ``b``
    not in ``a`` (in ``b``'s order); ``a & b`` and ``a - b`` keep ``a``'s order. Equality compares heads and
    order; :meth:`same_heads` ignores the order.

    Example:
        >>> a = HeadSet(["L14H3", "L20H7", "L2H0"])
        >>> str(a), a.layers
        ('L14H3, L20H7, L2H0', (2, 14, 20))
        >>> str(a & HeadSet(["L2H0", "L14H3"])), str(a - ["L20H7"])
        ('L14H3, L2H0', 'L14H3, L2H0')
        >>> a.to_index(n_heads=8).tolist()
        [115, 167, 16]
        >>> HeadSet.from_json(a.to_json()) == a
        True
    """

    __slots__ = ("_heads", "_set")

    def __init__(self, heads: "Iterable[Head | str | tuple[int, int]] | str" = ()) -> None:
        if isinstance(heads, str):
            heads = [part for part in heads.split(",") if part.strip()]
        items = tuple(Head.coerce(h) for h in heads)
        seen: set[Head] = set()
        for h in items:
            if h in seen:
                raise ArgumentError(f"HeadSet: head {h} appears more than once; a head set holds each head once.")
            seen.add(h)
        self._heads: tuple[Head, ...] = items
        self._set: frozenset[Head] = frozenset(items)

    # sequence protocol -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._heads)

    def __iter__(self) -> Iterator[Head]:
        return iter(self._heads)

    @overload
    def __getitem__(self, index: int) -> Head: ...
    @overload
    def __getitem__(self, index: slice) -> "HeadSet": ...
    def __getitem__(self, index: int | slice) -> "Head | HeadSet":
        if isinstance(index, slice):
            return HeadSet(self._heads[index])
        return self._heads[index]

    def __contains__(self, item: object) -> bool:
        try:
            head = Head.coerce(item)  # type: ignore[arg-type]
        except SavlensError:
            return False
        return head in self._set

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeadSet):
            return self._heads == other._heads
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._heads)

    def __str__(self) -> str:
        return ", ".join(map(str, self._heads))

    def __repr__(self) -> str:
        return f"HeadSet({str(self)!r})"

    # set algebra -----------------------------------------------------------------------------------
    @staticmethod
    def _other(other: object) -> "HeadSet":
        return other if isinstance(other, HeadSet) else HeadSet(other)  # type: ignore[arg-type]

    def __or__(self, other: "HeadSet | Iterable[Head | str | tuple[int, int]]") -> "HeadSet":
        o = self._other(other)
        return HeadSet(self._heads + tuple(h for h in o if h not in self._set))

    def __and__(self, other: "HeadSet | Iterable[Head | str | tuple[int, int]]") -> "HeadSet":
        o = self._other(other)
        return HeadSet(h for h in self._heads if h in o._set)

    def __sub__(self, other: "HeadSet | Iterable[Head | str | tuple[int, int]]") -> "HeadSet":
        o = self._other(other)
        return HeadSet(h for h in self._heads if h not in o._set)

    def same_heads(self, other: "HeadSet | Iterable[Head | str | tuple[int, int]]") -> bool:
        """Return True when both hold the same heads, in any order."""
        return self._set == self._other(other)._set

    def rank(self, head: "Head | str | tuple[int, int]") -> int:
        """Return the 0-based rank of ``head`` in this set."""
        h = Head.coerce(head)
        if h not in self._set:
            raise ArgumentError(f"head {h} is not in {self!r}.")
        return self._heads.index(h)

    # views -----------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        """The distinct layers of the heads, ascending (the layers an extraction must read)."""
        return tuple(sorted({h.layer for h in self._heads}))

    def to_index(self, n_heads: int) -> Int[Tensor, " k"]:
        """Return the layer-major flat indices ``layer * n_heads + head``, in rank order."""
        return torch.tensor([h.flat(n_heads) for h in self._heads], dtype=torch.long)

    @classmethod
    def from_index(cls, index: Iterable[int] | Tensor, n_heads: int) -> "HeadSet":
        """Build a head set from layer-major flat indices (in rank order)."""
        values = index.tolist() if isinstance(index, Tensor) else list(index)
        return cls(Head(int(i) // n_heads, int(i) % n_heads) for i in values)

    def to_list(self) -> list[str]:
        """Return the ``"L{l}H{h}"`` labels in rank order."""
        return [str(h) for h in self._heads]

    def to_json(self) -> str:
        """Return a JSON list of ``"L{l}H{h}"`` labels in rank order."""
        return json.dumps(self.to_list())

    @classmethod
    def from_json(cls, text: str) -> "HeadSet":
        """Read a head set written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArgumentError(f"HeadSet.from_json: not valid JSON ({e}).") from None
        if not isinstance(data, list):
            raise ArgumentError(f"HeadSet.from_json expects a JSON list of 'L{{l}}H{{h}}' labels; got {data!r}.")
        return cls(data)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Mix uint64 values (SplitMix64 finaliser): a fixed, platform-independent hash."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def tie_order(n: int, seed: int) -> np.ndarray:
    """Return the seeded tie-break priority of ``n`` flat indices (a permutation key, lower ranks first).

    The key of flat index ``i`` is SplitMix64(SplitMix64(seed) + i): a hash, not a random stream, so it
    is the same on every platform and library version.

    Example:
        >>> tie_order(4, seed=0).shape
        (4,)
    """
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return _splitmix64(np.arange(n, dtype=np.uint64) + base)


@dataclass(eq=False)
class HeadScores:
    """A per-head score table produced by a selection criterion; higher is better.

    Attributes:
        scores: ``layer head_index`` float64 table (row ``i`` is model layer ``layers[i]``). NaN is refused;
            ``inf`` is allowed (e.g. a Fisher ratio with zero within-class spread).
        criterion: the criterion's name (``"centroid"``, ``"probe"``, ``"fisher"``, or a registered name).
        mode: how examples were held out (``"in_sample"``, ``"loo"``, ``"kfold"``) or None.
        params: the criterion's other parameters (JSON-serialisable).
        layers: the model layer of each row; ``range(n_layers)`` by default.

    Example:
        >>> s = HeadScores(torch.tensor([[0.5, 0.9], [0.9, 0.1]]), "demo")  # L0H1 and L1H0 tie
        >>> str(s.top_k(1)), str(s.top_k(2, seed=0)), str(s.reference_top_k(2))
        ('L0H1', 'L0H1, L1H0', 'L1H0, L0H1')
    """

    scores: Float[Tensor, "layer head_index"]
    criterion: str
    mode: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scores, Tensor) or self.scores.ndim != 2:
            raise FeatureError(f"HeadScores.scores must be a 2-d [layer head_index] tensor; got {self.scores!r}.")
        self.scores = self.scores.detach().to("cpu", torch.float64)
        if torch.isnan(self.scores).any():
            bad = torch.nonzero(torch.isnan(self.scores))[0].tolist()
            raise FeatureError(
                f"criterion {self.criterion!r} gave NaN scores (first at row {bad[0]}, head {bad[1]}); "
                "a criterion must return a number for every head."
            )
        self.layers = tuple(range(self.scores.shape[0])) if self.layers is None else tuple(map(int, self.layers))
        if len(self.layers) != self.scores.shape[0]:
            raise FeatureError(f"HeadScores: {len(self.layers)} layers for a table with {self.scores.shape[0]} rows.")

    @property
    def n_layers(self) -> int:
        """Number of rows (layers) of the table."""
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        """Number of columns (query heads per layer) of the table."""
        return int(self.scores.shape[1])

    def __repr__(self) -> str:
        return (
            f"HeadScores(criterion={self.criterion!r}, mode={self.mode!r}, layer={self.n_layers}, "
            f"head_index={self.n_heads}, best={self.top_k(min(3, self.scores.numel()))})"
        )

    def _row(self, layer: int) -> int:
        try:
            return self.layers.index(layer)  # type: ignore[union-attr]
        except ValueError:
            raise FeatureError(f"layer {layer} is not in these scores (layers {self.layers}).") from None

    def __getitem__(self, head: "Head | str | tuple[int, int]") -> float:
        h = Head.coerce(head)
        if h.head >= self.n_heads:
            raise FeatureError(f"head {h} is out of range: these scores have head_index={self.n_heads}.")
        return float(self.scores[self._row(h.layer), h.head])

    def _heads_of(self, flat: np.ndarray) -> HeadSet:
        layers = self.layers
        assert layers is not None
        return HeadSet(Head(layers[int(i) // self.n_heads], int(i) % self.n_heads) for i in flat)

    def _check_k(self, k: int) -> None:
        total = self.scores.numel()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ArgumentError(
                f"k must be a positive int (the number of heads to keep); got {k!r}. Pass k between 1 and {total}."
            )
        if k > total:
            raise FeatureError(
                f"k={k} is larger than the {self.n_layers} x {self.n_heads} = {total} heads of these scores; "
                f"pass k <= {total}."
            )

    def order(self, *, seed: int = 0) -> np.ndarray:
        """Return all row-major flat indices, best first (ties broken as in :meth:`top_k`)."""
        flat = self.scores.reshape(-1).numpy()
        # np.lexsort sorts by the last key first: score descending, then the seeded tie key ascending.
        return np.lexsort((tie_order(flat.size, seed), -flat))

    def top_k(self, k: int, *, seed: int = 0) -> HeadSet:
        """Return the ``k`` best heads, best first.

        Heads with equal scores are ordered by a seeded hash of their flat index (:func:`tie_order`):
        deterministic for a given ``seed``, independent of platform, and favouring no layer.
        ``top_k(k)`` is always a prefix of ``top_k(k + 1)``.
        """
        self._check_k(k)
        return self._heads_of(self.order(seed=seed)[:k])

    def ranking(self, *, seed: int = 0) -> HeadSet:
        """Return every head, best first (the full order :meth:`top_k` takes prefixes of)."""
        return self._heads_of(self.order(seed=seed))

    def reference_top_k(self, k: int) -> HeadSet:
        """Return the ``k`` best heads as the reference code ranks them.

        The reference computes ``np.argsort(scores)[-k:][::-1]`` over the flat layer-major scores; savlens
        uses a stable sort there (``kind="stable"``), so among equal scores the larger flat index ranks
        first, on every platform.
        """
        self._check_k(k)
        flat = self.scores.reshape(-1).numpy()
        return self._heads_of(np.argsort(flat, kind="stable")[-k:][::-1])

    def rank_table(self, *, seed: int = 0) -> Int[Tensor, "layer head_index"]:
        """Return the 0-based rank of every head (0 = best) as a ``layer head_index`` table."""
        ranks = np.empty(self.scores.numel(), dtype=np.int64)
        ranks[self.order(seed=seed)] = np.arange(self.scores.numel())
        return torch.from_numpy(ranks).reshape(self.n_layers, self.n_heads)
