"""Class labels of a task: normalised (numpy scalars to Python values), encoded to class indices in a fixed
order, and taken from features or given, with one error for every way they can be wrong."""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from savlens.errors import ArgumentError, LabelError

if TYPE_CHECKING:
    from savlens.cache import HeadFeatures
    from savlens.outofcore import StoredFeatures

_LABEL_TYPES = {str: "str", int: "int", bool: "bool"}


@dataclass(frozen=True)
class EncodedLabels:
    """Labels as class indices.

    Attributes:
        classes: the distinct labels; ``codes`` index into it.
        codes: ``example`` int64 class index of each example.
        class_type: ``"str"``, ``"int"`` or ``"bool"``.
    """

    classes: tuple[Hashable, ...]
    codes: Int[Tensor, " example"]
    class_type: str

    @property
    def n_classes(self) -> int:
        """Number of distinct classes."""
        return len(self.classes)

    @property
    def counts(self) -> Int[Tensor, " class"]:
        """Number of examples of each class."""
        return torch.bincount(self.codes, minlength=len(self.classes))


def normalize_label(value: Any) -> Any:
    """Return ``value`` as a plain Python label (numpy / 0-d tensor scalars become str / int / bool)."""
    if isinstance(value, np.generic) or (isinstance(value, Tensor) and value.ndim == 0):
        return value.item()
    return value


def encode_labels(
    labels: Sequence[Hashable], *, order: str = "sorted", what: str = "labels", min_classes: int = 2
) -> EncodedLabels:
    """Number the classes of ``labels`` and check them.

    Args:
        labels: one label per example: all ``str``, all ``int`` or all ``bool``.
        order: ``"sorted"`` (scikit-learn's convention) or ``"first"`` (order of first appearance, the
            reference code's convention).
        what: the user's call, for error messages.
        min_classes: refuse fewer classes than this.

    Example:
        >>> e = encode_labels(["b", "a", "b"], order="first")
        >>> e.classes, e.codes.tolist()
        (('b', 'a'), [0, 1, 0])
    """
    values = [normalize_label(v) for v in labels]
    if not values:
        raise LabelError(f"{what}: no labels given.")
    types: dict[str, Any] = {}
    for v in values:
        name = _LABEL_TYPES.get(type(v))
        if name is None:
            raise LabelError(f"{what}: labels must be str, int or bool; got {v!r} of type {type(v).__name__}.")
        types.setdefault(name, v)
    if len(types) > 1:
        shown = ", ".join(f"{t} (e.g. {v!r})" for t, v in types.items())
        raise LabelError(f"{what}: labels mix types: {shown}. Use one type for every label.")
    if order == "sorted":
        classes = tuple(sorted(set(values)))  # type: ignore[type-var]
    elif order == "first":
        classes = tuple(dict.fromkeys(values))
    else:
        raise ArgumentError(f"{what}: class order must be 'sorted' or 'first'; got {order!r}.")
    if len(classes) < min_classes:
        raise LabelError(
            f"{what}: the labels hold a single class ({classes[0]!r}, {len(values)} examples); "
            f"at least {min_classes} classes are needed to score or classify."
        )
    index = {c: i for i, c in enumerate(classes)}
    codes = torch.tensor([index[v] for v in values], dtype=torch.long)
    return EncodedLabels(classes, codes, next(iter(types)))


def resolve_labels(
    features: "HeadFeatures | StoredFeatures", labels: Sequence[Hashable] | None, what: str
) -> list[Hashable]:
    """Return ``labels`` (or ``features.labels`` when None), checked to give one label per example."""
    if labels is None:
        labels = features.labels
        if labels is None:
            raise LabelError(f"{what}: no labels; pass labels=... or features with labels attached.")
    labels = list(labels)
    if len(labels) != features.n_examples:
        raise LabelError(
            f"{what}: {len(labels)} labels for {features.n_examples} examples; give one label per example."
        )
    return labels


# features --------------------------------------------------------------------------------------------
