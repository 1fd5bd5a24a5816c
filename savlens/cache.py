"""Saved activations: :class:`ActivationCache` (one trace) and :class:`HeadFeatures` (a data set).

Both hold tensors only; nothing here touches a model.
"""

import dataclasses
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from savlens.errors import FeatureError, HookNameError, LabelError

if TYPE_CHECKING:
    from savlens.heads import HeadSet


@dataclass(frozen=True)
class CacheEntry:
    """One saved tensor with the dim words of its axes and the positions it was sliced at.

    Attributes:
        value: the tensor.
        dims: one glossary word per axis, e.g. ``("batch", "pos", "head_index", "d_head")``.
        positions: what was asked for (``"last"``, ``"image"``, ``"text"``, ``"all"`` or indices).
        mask: for ragged positions (``"image"`` / ``"text"``), a ``batch pos`` bool tensor that is True
            where the ``pos`` slot holds a real position; None where every slot is real.
        index: for sliced positions, the ``batch pos`` tensor of sequence indices each slot was read at.
    """

    value: Tensor
    dims: tuple[str, ...]
    positions: Any = "all"
    mask: Tensor | None = None
    index: Tensor | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}={s}" for d, s in zip(self.dims, self.value.shape))
        return f"CacheEntry({sizes}; dtype={self.value.dtype}, positions={self.positions!r})"


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one trace, keyed by canonical hook name.

    ``cache[name]`` gives the tensor; ``cache.dims(name)`` its dim words; ``cache.entry(name)`` the
    full :class:`CacheEntry` (positions, padding mask of ragged selections).

    Example:
        >>> import torch
        >>> c = ActivationCache({"blocks.0.attn.hook_z": CacheEntry(torch.zeros(2, 1, 4, 8),
        ...     ("batch", "pos", "head_index", "d_head"), "last")})
        >>> c.dims("blocks.0.attn.hook_z")
        ('batch', 'pos', 'head_index', 'd_head')
        >>> c.stack("blocks.*.attn.hook_z").shape
        torch.Size([2, 1, 1, 4, 8])
    """

    def __init__(self, entries: Mapping[str, CacheEntry] | None = None) -> None:
        self._entries: dict[str, CacheEntry] = dict(entries or {})

    def __getitem__(self, name: str) -> Tensor:
        return self.entry(name).value

    def entry(self, name: str) -> CacheEntry:
        """Return the :class:`CacheEntry` saved under ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            from savlens.names import closest

            hint = closest(name, list(self._entries))
            raise HookNameError(
                f"{name!r} is not in this cache. Saved names: {_short_list(list(self._entries))}."
                + (f" Did you mean {', '.join(map(repr, hint))}?" if hint else "")
            ) from None

    def dims(self, name: str) -> tuple[str, ...]:
        """Return the dim words of the tensor saved under ``name``."""
        return self.entry(name).dims

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _set(self, name: str, entry: CacheEntry) -> None:
        self._entries[name] = entry

    def stack(self, pattern: str) -> Tensor:
        """Stack the per-layer tensors matching ``pattern`` (e.g. ``blocks.*.attn.hook_z``) on a new
        ``layer`` axis placed after ``batch`` and ``pos``: ``batch pos layer ...``."""
        from savlens.names import match_saved

        names = match_saved(pattern, list(self._entries))
        if not names:
            raise HookNameError(f"{pattern!r} matches nothing in this cache; saved: {_short_list(list(self))}.")
        return stack_layers([self[n] for n in names], self.dims(names[0]), pattern)

    def __repr__(self) -> str:
        lines = [f"ActivationCache({len(self)} entries)"]
        for name, e in self._entries.items():
            sizes = " ".join(f"{d}={s}" for d, s in zip(e.dims, e.value.shape))
            lines.append(f"  {name}: [{sizes}] {str(e.value.dtype).removeprefix('torch.')}")
        return "\n".join(lines)


def stack_layers(values: Sequence[Tensor], dims: tuple[str, ...], what: str = "") -> Tensor:
    """Stack per-layer tensors on a new ``layer`` axis after ``batch pos`` (or after the first axis).

    Heads whose width differs by layer (Gemma 4's sliding and global layers) are zero-padded on ``d_head`` to
    the widest: the cosine similarities, class means and distances of every head are unchanged by zeros, so
    scoring, SAV and the probes give what they would on each head's own vector (tested).
    """
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1 and dims[-1] == "d_head" and len({s[:-1] for s in shapes}) == 1:
        width = max(s[-1] for s in shapes)
        values = [torch.nn.functional.pad(v, (0, width - v.shape[-1])) for v in values]
    elif len(shapes) != 1:
        raise FeatureError(f"cannot stack {what!r}: the matched tensors have shapes {sorted(shapes)}.")
    return torch.stack(list(values), dim=2 if dims[:2] == ("batch", "pos") else 1)


def _short_list(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "") if items else "(none)"


#: How features were made: the fields of :meth:`HeadFeatures.describe`. A fitted estimator refuses features that
#: differ from its training features in any of them (``layers`` may be a superset).
PROVENANCE = (
    "model_id",
    "hook",
    "positions",
    "prompt_template",
    "chat",
    "system_prompt",
    "layers",
    "n_heads",
    "d_head",
)
#: The provenance fields of the prompt (how each example was rendered): tasks may differ in them.
PROMPT_FIELDS = ("prompt_template", "chat", "system_prompt")


def check_same_source(features: Any, other: Any, what: str = "these features") -> None:
    """Raise :class:`FeatureError` unless two sets of features (in memory or stored) come from the same model,
    hook, positions and grid: every :data:`PROVENANCE` field but the prompt (:data:`PROMPT_FIELDS`, which tasks
    may have their own of)."""
    mine, theirs = describe_features(features), describe_features(other)
    diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k] and k not in PROMPT_FIELDS}
    if diff:
        parts = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
        raise FeatureError(f"cannot mix {what}: they come from different sources ({parts}).")


def describe_features(features: Any) -> dict[str, Any]:
    """Return the :data:`PROVENANCE` of in-memory or stored features (no tensors), JSON-serialisable.

    ``positions`` is given as text (``"last"``, ``"-2"``) whatever type it was stored as; ``chat`` and
    ``system_prompt`` are what :func:`savlens.extract` recorded in ``meta`` (None for features made by hand).
    """
    return {
        "model_id": features.model_id,
        "hook": features.hook,
        "positions": str(features.positions),
        "prompt_template": features.prompt_template,
        "chat": features.meta.get("chat"),
        "system_prompt": features.meta.get("system_prompt"),
        "layers": list(features.layers or ()),
        "n_heads": features.n_heads,
        "d_head": features.d_head,
    }


@dataclass(eq=False)
class HeadFeatures:
    """Per-head features of a data set: one vector per (example, layer, head) at a chosen position.

    This is the SAV feature (step 1 of the method): ``z[i, l, h]`` is the slice of the input of the attention
    output projection of layer ``l`` that belongs to query head ``h``, at example ``i``'s chosen position
    (by default its last token).

    Attributes:
        z: ``example layer head_index d_head`` tensor (CPU).
        labels: one label per example (str or int, one type), or None for unlabelled features.
        example_ids: one unique id per example.
        model_id: the model the features come from (its name or path, or a user-given id).
        hook: the hook pattern read, ``"blocks.*.attn.hook_z"`` by default.
        positions: the positions read (``"last"`` by default).
        prompt_template: the prompt template the examples were rendered with (None: the raw text).
        layers: the model layer of each ``layer`` row (``range(n_layers)`` when all layers were read).
        meta: JSON-serialisable extras: what :func:`savlens.extract` recorded (``fingerprint``, ``dtype``, and the
            prompt settings ``chat`` and ``system_prompt``, which are part of :meth:`describe`), and any others.
        log_probs: the model's next-token log-probabilities (``log_softmax`` over the whole vocabulary, float32)
            at each example's last real token, kept by ``savlens.extract(..., logits="last")``; None otherwise.
            Its columns are the token ids in ``logit_tokens`` in that order, or the whole vocabulary (column =
            token id) when ``logit_tokens`` is None.
        logit_tokens: the token id of each ``log_probs`` column, or None when the columns are the whole
            vocabulary (or when there are no ``log_probs``).
        top_token: the id of the most likely next token over the whole vocabulary (the greedy answer's first
            token) at each example's last real token; kept with ``log_probs``, even when ``logit_tokens``
            keeps only a few columns.

    Example:
        >>> f = HeadFeatures(torch.zeros(2, 1, 1, 4), log_probs=torch.tensor([[-0.5, -2.25], [-3.0, -0.125]]),
        ...                  logit_tokens=(17, 4), top_token=torch.tensor([17, 9]))
        >>> f.subset([1]).log_probs.tolist(), f.subset([1]).top_token.tolist()
        ([[-3.0, -0.125]], [9])
    """

    z: Float[Tensor, "example layer head_index d_head"]
    labels: list[Hashable] | None = None
    example_ids: list[str] | None = None
    model_id: str = "unknown"
    hook: str = "blocks.*.attn.hook_z"
    positions: str = "last"
    prompt_template: str | None = None
    layers: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    log_probs: Float[Tensor, "example d_vocab"] | None = None
    logit_tokens: tuple[int, ...] | None = None
    top_token: Int[Tensor, " example"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.z, Tensor) or self.z.ndim != 4:
            shape = tuple(self.z.shape) if isinstance(self.z, Tensor) else type(self.z).__name__
            raise FeatureError(f"HeadFeatures.z must be a 4-d tensor [example layer head_index d_head]; got {shape}.")
        if self.z.is_meta:
            raise FeatureError(
                "HeadFeatures.z is on the meta device (a shape without data); extract features from a model whose "
                "weights are loaded, or move them to a real device first."
            )
        n = self.z.shape[0]
        if self.layers is None:
            self.layers = tuple(range(self.z.shape[1]))
        else:
            self.layers = tuple(int(x) for x in self.layers)
        if len(self.layers) != self.z.shape[1]:
            raise FeatureError(f"HeadFeatures.layers has {len(self.layers)} entries but z has layer={self.z.shape[1]}.")
        if self.example_ids is None:
            self.example_ids = [str(i) for i in range(n)]
        else:
            self.example_ids = [str(i) for i in self.example_ids]
        if len(self.example_ids) != n:
            raise FeatureError(f"{len(self.example_ids)} example_ids for example={n} rows of z.")
        if len(set(self.example_ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.example_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise FeatureError(f"example_ids must be unique; {dup!r} appears more than once.")
        if self.labels is not None:
            self.labels = list(self.labels)
            if len(self.labels) != n:
                raise LabelError(f"{len(self.labels)} labels for example={n} rows of z; give one label per example.")
        self._check_next_token(n)

    def _check_next_token(self, n: int) -> None:
        """Check ``log_probs`` / ``logit_tokens`` / ``top_token`` against each other and ``example`` = n."""
        if self.logit_tokens is not None:
            self.logit_tokens = tuple(int(t) for t in self.logit_tokens)
            if self.log_probs is None:
                raise FeatureError("HeadFeatures.logit_tokens names the columns of log_probs, but log_probs is None.")
        for name, value, ndim in (("log_probs", self.log_probs, 2), ("top_token", self.top_token, 1)):
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.ndim != ndim or value.shape[0] != n:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                want = "[example d_vocab]" if ndim == 2 else "[example]"
                raise FeatureError(
                    f"HeadFeatures.{name} must be a {ndim}-d tensor {want} with example={n}; got {shape}."
                )
        lp, tokens = self.log_probs, self.logit_tokens
        if lp is not None and tokens is not None and lp.shape[1] != len(tokens):
            raise FeatureError(
                f"HeadFeatures.log_probs has {lp.shape[1]} columns but logit_tokens names {len(tokens)} token ids; "
                "give one id per column."
            )

    # sizes -----------------------------------------------------------------------------------------
    @property
    def n_examples(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.z.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.z.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.z.shape[3])

    def __len__(self) -> int:
        return self.n_examples

    def __repr__(self) -> str:
        n_classes = len(set(self.labels)) if self.labels is not None else 0
        return (
            f"HeadFeatures(example={self.n_examples}, layer={self.n_layers}, head_index={self.n_heads}, "
            f"d_head={self.d_head}, classes={n_classes}, model_id={self.model_id!r}, hook={self.hook!r}, "
            f"positions={self.positions!r}"
            + (f", log_probs={self.log_probs.shape[1]} columns" if self.log_probs is not None else "")
            + ")"
        )

    # selection -------------------------------------------------------------------------------------
    def subset(self, index: Sequence[int] | Tensor) -> "HeadFeatures":
        """Return the features of the examples at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        ids = [self.example_ids[i] for i in idx.tolist()]  # type: ignore[index]
        labels = [self.labels[i] for i in idx.tolist()] if self.labels is not None else None
        return dataclasses.replace(
            self,
            z=self.z[idx],
            labels=labels,
            example_ids=ids,
            log_probs=self.log_probs[idx] if self.log_probs is not None else None,
            top_token=self.top_token[idx] if self.top_token is not None else None,
        )

    def with_labels(self, labels: Sequence[Hashable]) -> "HeadFeatures":
        """Return a copy with ``labels`` attached (one per example)."""
        return dataclasses.replace(self, labels=list(labels))

    def describe(self) -> dict[str, Any]:
        """Return the provenance fields (no tensors) as a JSON-serialisable dict: :data:`PROVENANCE`."""
        return describe_features(self)

    def check_compatible(self, other: "HeadFeatures", what: str = "these features") -> None:
        """Raise :class:`FeatureError` unless ``other`` comes from the same model, hook, positions
        and grid as ``self`` (the prompt, :data:`PROMPT_FIELDS`, may differ: tasks have their own)."""
        check_same_source(self, other, what)

    @staticmethod
    def concat(parts: Sequence["HeadFeatures"]) -> "HeadFeatures":
        """Concatenate features of the same source along the example axis.

        ``log_probs`` / ``top_token`` are concatenated when every part has them (with the same ``logit_tokens``);
        otherwise the result has none (the next-token output is an extra of ``extract(logits="last")``, not part
        of the features)."""
        if not parts:
            raise FeatureError("HeadFeatures.concat needs at least one part.")
        for p in parts[1:]:
            parts[0].check_compatible(p, "features in concat")
        has_labels = [p.labels is not None for p in parts]
        if any(has_labels) and not all(has_labels):
            raise LabelError("HeadFeatures.concat: some parts have labels and some do not.")
        labels = [lab for p in parts for lab in (p.labels or [])] if all(has_labels) else None
        ids = [i for p in parts for i in (p.example_ids or [])]
        extra: dict[str, Any] = {"log_probs": None, "logit_tokens": None, "top_token": None}
        same = len({p.logit_tokens for p in parts}) == 1
        if same and all(p.log_probs is not None and p.top_token is not None for p in parts):
            extra = {
                "log_probs": torch.cat([p.log_probs for p in parts if p.log_probs is not None]),
                "logit_tokens": parts[0].logit_tokens,
                "top_token": torch.cat([p.top_token for p in parts if p.top_token is not None]),
            }
        return dataclasses.replace(parts[0], z=torch.cat([p.z for p in parts]), labels=labels, example_ids=ids, **extra)


def gather_heads(
    features: "HeadFeatures", heads: "HeadSet", what: str = "features", *, upcast: bool = True
) -> Float[Tensor, "example k d_head"]:
    """Return the vectors of ``heads`` (in rank order) from ``features``, refusing NaN / inf.

    ``Head.layer`` is a model layer, looked up in ``features.layers``. Half-precision and integer features
    are upcast to float32 unless ``upcast`` is False (reference mode keeps floating dtypes as they are).

    Example:
        >>> from savlens.heads import HeadSet
        >>> z = torch.arange(2 * 3 * 2 * 1.0).reshape(2, 3, 2, 1)
        >>> gather_heads(HeadFeatures(z), HeadSet(["L2H1", "L0H0"]))[:, :, 0].tolist()
        [[5.0, 0.0], [11.0, 6.0]]
    """
    flat = head_indices(features, heads, what)
    x = features.z.flatten(1, 2)[:, flat]
    if not x.is_floating_point() or (upcast and x.dtype in (torch.float16, torch.bfloat16)):
        x = x.float()
    if not torch.isfinite(x).all():
        i, j = torch.nonzero(~torch.isfinite(x).all(dim=-1))[0].tolist()
        ids = features.example_ids or []
        raise FeatureError(f"{what}: NaN or infinite values in head {list(heads)[j]} of example {ids[i]!r}.")
    return x


def head_indices(features: Any, heads: "Iterable[Any]", what: str = "features") -> Tensor:
    """Return the flat (layer-major) indices of ``heads`` (:class:`~savlens.heads.Head` objects, in order) in
    ``features``, whose ``layers`` hold model layer numbers.

    Raises:
        FeatureError: a head's layer is not in the features, or its head index is past ``head_index``.
    """
    layers = list(features.layers or ())
    flat = []
    for h in heads:
        if h.layer not in layers:
            raise FeatureError(
                f"{what}: head {h} needs layer {h.layer}, which these features do not hold (layers {layers})."
            )
        if h.head >= features.n_heads:
            raise FeatureError(f"{what}: head {h} does not exist; these features have head_index={features.n_heads}.")
        flat.append(layers.index(h.layer) * features.n_heads + h.head)
    return torch.tensor(flat, dtype=torch.long)
