"""savlens: Sparse Attention Vectors and per-head interpretability for large multimodal models."""

from savlens.cache import ActivationCache, CacheEntry, HeadFeatures
from savlens.errors import SavlensError
from savlens.example import Example
from savlens.extraction import extract
from savlens.heads import Head, HeadScores, HeadSet
from savlens.inputs import Batch
from savlens.loading import Model, load, wrap
from savlens.sav import SAV
from savlens.store import open_store
from savlens.tracing import Handle, Trace, attention_patterns, run_with_cache, trace

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "Batch",
    "CacheEntry",
    "Example",
    "Handle",
    "Head",
    "HeadFeatures",
    "HeadScores",
    "HeadSet",
    "Model",
    "SAV",
    "SavlensError",
    "Trace",
    "__version__",
    "attention_patterns",
    "extract",
    "load",
    "open_store",
    "run_with_cache",
    "trace",
    "wrap",
]
