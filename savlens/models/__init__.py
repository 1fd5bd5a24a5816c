"""Architecture knowledge: one declarative spec per family, and the registry. The only place in savlens
that knows where modules live inside a model."""

from savlens.models.families import DECODER_LM, LLAVA_ONEVISION, QWEN2_5_VL, QWEN2_VL, REFERENCE
from savlens.models.infer import infer_spec
from savlens.models.registry import register, registered, spec_for, unregister
from savlens.models.spec import ModelSpec, ResolvedSpec, Sizes, get_path, resolve_spec

__all__ = [
    "DECODER_LM",
    "LLAVA_ONEVISION",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "REFERENCE",
    "ModelSpec",
    "ResolvedSpec",
    "Sizes",
    "get_path",
    "infer_spec",
    "register",
    "registered",
    "resolve_spec",
    "spec_for",
    "unregister",
]
