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


def registered_spec_for(model: nn.Module) -> tuple[ModelSpec, str] | None:
    """The registered spec that serves ``model`` and where it comes from (``"user"`` or ``"built-in"``)."""
    name = type(model).__name__
    for spec in _REGISTRY:
        if (spec.matches is not None and spec.matches(model)) or name in spec.classes:
            return spec, ("built-in" if any(spec is b for b in BUILTIN) else "user")
    return None


def spec_for(model: nn.Module) -> ModelSpec:
    """Return the spec that serves ``model``: a registered one (user specs first), else one inferred from the
    model's module tree and config (:func:`savlens.models.infer_spec`).

    Raises:
        UnsupportedModelError: ``model`` is not an HF-style model (no ``config``) and no spec is registered.
        ModelSpecError: inference cannot find a role (the message names it).
    """
    return spec_and_source(model)[0]


def spec_and_source(model: nn.Module) -> tuple[ModelSpec, str]:
    """:func:`spec_for`, with where the spec comes from: ``"user"``, ``"built-in"`` or ``"inferred"``."""
    found = registered_spec_for(model)
    if found is not None:
        return found
    name = type(model).__name__
    if getattr(model, "config", None) is not None:
        from savlens.models.infer import infer_spec

        return infer_spec(model), "inferred"
    known = sorted({c for s in _REGISTRY for c in s.classes})
    raise UnsupportedModelError(
        f"no savlens spec for {name}, and it has no HF .config to infer one from. Registered classes: "
        f"{', '.join(known)}. For another model, describe "
        "where its blocks and attention output projection live with savlens.models.ModelSpec and "
        "savlens.models.register(spec) (docs: adding a model)."
    )
