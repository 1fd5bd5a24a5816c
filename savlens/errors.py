"""The savlens error family.

Every failure savlens detects in the user's input is raised as a subclass of
:class:`SavlensError`. Each message says what was wrong, in the user's terms (hook
name, dims with their sizes, the actual shape, the model family), and what to do about
it, and ends with a link to the docs page of its class.
"""

DOCS_ROOT = "https://savlens.readthedocs.io/en/latest/errors"


class SavlensError(Exception):
    """Base class of every error savlens raises on purpose."""

    page = "savlens-error"

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}\n  (see {DOCS_ROOT}/{self.page}/)")
        self.detail = message


class HookNameError(SavlensError, KeyError):
    """A hook name or pattern that matches no registered name (typos, layers out of range)."""

    page = "hook-name-error"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PositionError(SavlensError, IndexError):
    """Positions that do not exist in a batch row (index out of range, no image tokens, ...)."""

    page = "position-error"


class ModelSpecError(SavlensError):
    """A model spec that does not match the model (missing module path, sizes that disagree)."""

    page = "model-spec-error"


class UnsupportedModelError(SavlensError):
    """A model class with no registered spec."""

    page = "unsupported-model-error"


class InputError(SavlensError, ValueError):
    """An example or batch that cannot be built or does not fit the model."""

    page = "input-error"


class VideoError(InputError):
    """A video that cannot be read or sampled: an unreadable file, a bad frame array, bad ``n_frames`` / ``fps``."""

    page = "video-error"


class VideoNotSupportedError(VideoError):
    """A video given to a model whose processor takes no video."""

    page = "video-not-supported-error"


class BatchMismatchError(InputError):
    """A batch built for another model (or another processor / chat template)."""

    page = "batch-mismatch-error"


class HookNotAvailableError(SavlensError):
    """A registered hook that cannot fire in this run (e.g. a save past `stop_at_layer`, a head hook on a layer
    of another kind)."""

    page = "hook-not-available-error"


class LoadError(SavlensError):
    """A model or artefact that cannot be loaded."""

    page = "load-error"


class ArgumentError(SavlensError, ValueError):
    """An argument value the call cannot take: k = 0, a device that does not exist, a non-float dtype."""

    page = "argument-error"


class StudyConfigError(ArgumentError):
    """A study configuration that cannot run: an unknown criterion or voting rule, k larger than the heads,
    more shots than a class holds, a transfer pair naming a missing task. Raised before any fitting."""

    page = "study-config-error"


class LabelError(SavlensError, ValueError):
    """Labels that do not fit the method: one class, an empty class, mixed types, wrong count."""

    page = "label-error"


class FeatureError(SavlensError, ValueError):
    """Features that cannot be used: NaN / inf, wrong shape, features from two models or hooks."""

    page = "feature-error"


class StoreError(SavlensError):
    """A feature store or saved SAV that is corrupt, inconsistent or from another model / hook."""

    page = "store-error"


class TraceStateError(SavlensError, RuntimeError):
    """A trace used out of order: a saved value read inside its `with` block, a save declared after it ran."""

    page = "trace-state-error"


class NotFittedError(SavlensError, ValueError, AttributeError):
    """An estimator (SAV, HeadKNN, HeadLinearProbe, SparseLayers) used before `fit`.

    Also an ``AttributeError``, as scikit-learn's ``NotFittedError`` is: ``hasattr(estimator, "heads_")`` is
    False before ``fit``."""

    page = "not-fitted-error"


__all__ = [
    "ArgumentError",
    "BatchMismatchError",
    "FeatureError",
    "HookNameError",
    "HookNotAvailableError",
    "InputError",
    "LabelError",
    "LoadError",
    "ModelSpecError",
    "NotFittedError",
    "PositionError",
    "SavlensError",
    "StoreError",
    "StudyConfigError",
    "TraceStateError",
    "UnsupportedModelError",
]
