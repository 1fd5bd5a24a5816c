"""The spec registry: which :class:`ModelSpec` serves which model."""

from torch import nn

from savlens.errors import UnsupportedModelError
from savlens.models.families import BUILTIN
from savlens.models.spec import ModelSpec

_REGISTRY: list[ModelSpec] = list(BUILTIN)


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Register ``spec`` for the classes it names (or the modules its ``matches`` predicate accepts).

    User specs are consulted before the built-in ones, so a user can override a family. Raises
    :class:`ValueError` if a spec of the same family exists and ``replace`` is False.
    """
    existing = [s for s in _REGISTRY if s.family == spec.family]
    if existing and not replace:
        raise ValueError(f"a spec for family {spec.family!r} is already registered; pass replace=True.")
    for s in existing:
        _REGISTRY.remove(s)
    _REGISTRY.insert(0, spec)
    return spec


def unregister(family: str) -> None:
    """Remove the spec of ``family`` (no error if absent)."""
    _REGISTRY[:] = [s for s in _REGISTRY if s.family != family]


def registered() -> list[ModelSpec]:
    """Return the registered specs, in lookup order."""
    return list(_REGISTRY)


def spec_for(model: nn.Module) -> ModelSpec:
    """Return the spec that serves ``model``, or raise :class:`UnsupportedModelError`."""
    name = type(model).__name__
    for spec in _REGISTRY:
        if spec.matches is not None and spec.matches(model):
            return spec
        if name in spec.classes:
            return spec
    known = sorted({c for s in _REGISTRY for c in s.classes})
    raise UnsupportedModelError(
        f"no savlens spec for {name}. Supported classes: {', '.join(known)}. For another model, describe "
        "where its blocks and attention output projection live with savlens.models.ModelSpec and "
        "savlens.models.register(spec) (docs: adding a model)."
    )
