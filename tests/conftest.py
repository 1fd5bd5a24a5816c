import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import functools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# the tiny VLM's projector training code is repository code, not part of the installed package: it lives in
# experiments/ (tiny_vlm_training.py), and its tests import it from there
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import savlens  # noqa: E402
from savlens.testing.tiny import ALL_FAMILIES, FAMILIES, RECIPES, build_tiny  # noqa: E402

VLM_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl")


@functools.cache
def tiny(family: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> savlens.Model:
    """A wrapped tiny model, built once per (family, attn, dtype, seed) per session."""
    tm = build_tiny(family, seed=seed, attn_implementation=attn, dtype=dtype)
    return savlens.wrap(tm.model, tm.processor, model_id=f"tiny-{family}")


def recipe_of(model: savlens.Model):  # noqa: ANN201
    """The tiny recipe a model of :func:`tiny` was built from."""
    return RECIPES[model.model_id.removeprefix("tiny-")]


def mixed_examples(model: savlens.Model) -> list[savlens.Example]:
    """Three examples of different lengths; for VLMs two image sizes and a text-only row (where the family
    accepts one in a batch with images; otherwise a third image row): the batch the coverage table measures."""
    from savlens.testing.coverage import mixed_examples as coverage_examples

    return coverage_examples(model, model.model_id.removeprefix("tiny-"))


def core_fast(families: tuple[str, ...]) -> list:  # noqa: ANN401
    """``families`` as test parameters: the six core families (``FAMILIES``) in every run, the others marked slow
    (the full run only). For the expensive per-family contracts (batch invariance, GQA, every hook name); every
    family still runs the cheap contracts (parity with HF, hook_z = o_proj input, positions) in the fast run."""
    return [f if f in FAMILIES else pytest.param(f, marks=pytest.mark.slow) for f in families]


@pytest.fixture(params=ALL_FAMILIES)
def any_family(request: pytest.FixtureRequest) -> str:
    """Every family with a tiny recipe (the model-contract tests)."""
    return request.param


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param
