"""Real small models that install offline from PyPI wheels (no model hub)."""

from savlens.zoo.smollm2 import LoadedModel, load_smollm2, savlens_cache_root, smollm2_cache_path

__all__ = ["LoadedModel", "load_smollm2", "savlens_cache_root", "smollm2_cache_path"]
