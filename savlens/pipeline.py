"""The seam between the model side and the tensors-only estimators: extract a model's features for an estimator.

Estimators (:class:`savlens.SAV` and friends) fit and predict on features only. :meth:`SAV.fit_model` and
:meth:`SAV.extract` run a model through this module (one batched pass per example, reading only the layers
needed); the features carry how they were made (:meth:`HeadFeatures.describe`), which the estimator records
and checks.
"""

from collections.abc import Sequence
from typing import Any

from savlens.cache import HeadFeatures
from savlens.errors import ArgumentError, FeatureError, InputError

#: options of :func:`savlens.extract` that define the features (recorded in their provenance)
EXTRACT_OPTIONS = ("positions", "prompt_template", "chat", "system_prompt", "dtype")
#: options that only change how the extraction runs, not the features
RUN_OPTIONS = ("batch_size", "progress", "store")


def is_model(obj: Any) -> bool:
    """Return True for a :class:`savlens.Model`."""
    from savlens.loading import Model

    return isinstance(obj, Model)


def extract_for(
    model: Any,
    examples: Any,
    *,
    layers: Sequence[int] | None = None,
    options: dict[str, Any] | None = None,
    what: str,
) -> HeadFeatures:
    """Return the ``blocks.{layers}.attn.hook_z`` features of ``examples`` (all layers when None) run through ``model``.

    Raises:
        FeatureError: ``model`` is not a :class:`savlens.Model`.
        InputError: no examples.
        ArgumentError: options :func:`savlens.extract` does not take here.
    """
    if not is_model(model):
        raise FeatureError(
            f"{what}: expected a savlens.Model (from savlens.load or savlens.wrap); got {type(model).__name__}."
        )
    if examples is None:
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
    return extract(model, examples, names, **opts)
