"""savlens: Sparse Attention Vectors and per-head interpretability for large multimodal models."""

from savlens.cache import ActivationCache, CacheEntry, HeadFeatures
from savlens.errors import SavlensError
from savlens.example import Example
from savlens.inputs import Batch
from savlens.load import Model, load, wrap
from savlens.trace import Handle, Trace, run_with_cache, trace

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "Batch",
    "CacheEntry",
    "Example",
    "Handle",
    "HeadFeatures",
    "Model",
    "SavlensError",
    "Trace",
    "__version__",
    "load",
    "run_with_cache",
    "trace",
    "wrap",
]
