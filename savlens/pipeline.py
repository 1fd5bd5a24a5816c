"""The seam between the model side and the tensors-only estimators: turn ``(model, examples)`` into features.

Estimators (:class:`savlens.SAV` and friends) take :class:`HeadFeatures`; they also accept a model and examples,
which this module extracts (one batched pass per example, reading only the layers needed).
"""

from collections.abc import Hashable, Sequence
from typing import Any

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, InputError

#: options of :func:`savlens.extract` an estimator remembers from fit time and reuses at predict time
EXTRACT_OPTIONS = ("positions", "prompt_template", "chat", "system_prompt", "dtype")
#: options that only change speed, not the features
RUN_OPTIONS = ("batch_size", "progress", "store")


def is_model(obj: Any) -> bool:
    from savlens.loading import Model

    return isinstance(obj, Model)


def as_features(
    data: Any,
    labels_or_examples: Any,
    *,
    layers: Sequence[int] | None = None,
    options: dict[str, Any] | None = None,
    what: str,
) -> tuple[HeadFeatures, Sequence[Hashable] | None]:
    """Return ``(features, labels)`` from either ``(HeadFeatures, labels)`` or ``(Model, examples)``.

    With a model, the examples are extracted at ``blocks.{layers}.attn.hook_z`` (all layers when None), and
    labels come from the examples.
    """
    if isinstance(data, HeadFeatures):
        return data, labels_or_examples
    if not is_model(data):
        raise FeatureError(
            f"{what}: expected HeadFeatures (from savlens.extract) or a savlens.Model with examples; "
            f"got {type(data).__name__}."
        )
    if labels_or_examples is None:
        raise InputError(f"{what}(model, examples): give the examples to run the model on.")
    from savlens.extraction import extract

    opts = dict(options or {})
    unknown = set(opts) - set(EXTRACT_OPTIONS) - set(RUN_OPTIONS)
    if unknown:
        raise ArgumentError(
            f"{what}: unknown extraction options {sorted(unknown)}; use {EXTRACT_OPTIONS + RUN_OPTIONS}."
        )
    names = "blocks.*.attn.hook_z" if layers is None else "blocks.{" + ",".join(map(str, layers)) + "}.attn.hook_z"
    opts.setdefault("progress", False)
    feats = extract(data, labels_or_examples, names, **opts)
    return feats, None


def remembered(options: dict[str, Any]) -> dict[str, Any]:
    """Return the options that define the features (kept by an estimator from its fit)."""
    return {k: v for k, v in options.items() if k in EXTRACT_OPTIONS}
