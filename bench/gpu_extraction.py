"""Extraction throughput on a GPU: random-weight models with the LLaVA-OneVision-7B and Qwen2-VL-7B sizes, bf16.

Prepared for one short run on a machine with a CUDA GPU (none was lent when this was written, so no number exists
yet): ``python bench/gpu_extraction.py`` prints, per model and batch size (1-32, one image per example):

- ``extract``: examples per second of ``savlens.extract`` (every layer's ``hook_z`` at the last token);
- ``bare``: examples per second of the HF forward alone on the same batches (the inputs savlens builds);
- ``ratio``: extraction time over bare-forward time;
- ``reference``: examples per second of the reference-style loop on the same examples (batch size 1, a forward
  hook on every ``o_proj`` keeping its whole input and output, baukit ``TraceDict`` style);
- ``peak_mem_gib``: peak CUDA memory of the extraction;
- ``max_abs_diff``: the largest difference between savlens's and the reference loop's features (a check that both
  read the same values).

and writes them to ``--out`` (default ``bench/gpu_extraction.json``). ``--config tiny`` runs the same code on the
tiny offline models on the CPU (the smoke test does so). The models' sizes are the published configs of
``llava-hf/llava-onevision-qwen2-7b-ov-hf`` and ``Qwen/Qwen2-VL-7B-Instruct`` (language model: 28 layers, hidden
3584, 28 query / 4 key-value heads, MLP 18944, vocabulary 152064; vision: SigLIP-so400m 26 layers / 1152 wide for
LLaVA-OneVision, a 32-block 1280-wide ViT for Qwen2-VL); the tokenizer and processor are the offline tiny ones
(same special tokens, small vocabulary), so token ids stay in range and no hub download is needed. Weights are
random: a throughput figure, not a model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import savlens  # noqa: E402
from bench import baselines as bl  # noqa: E402
from savlens.testing.tiny import RECIPES, build_tiny  # noqa: E402

LM_7B = dict(  # Qwen2-7B, the language model of both
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    max_position_embeddings=32768, rms_norm_eps=1e-6, vocab_size=152064,
)  # fmt: skip
QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                     patch_size=14, image_size=384)  # fmt: skip
FAMILIES = ("llava_onevision", "qwen2_vl")


def build(family: str, config: str, device: str, dtype: torch.dtype) -> savlens.Model:
    """A random-weight model of ``family``: the tiny recipe, or its config with the 7B sizes (``config="7b"``)."""
    if config == "tiny":
        tm = build_tiny(family, dtype=dtype)
        return savlens.wrap(tm.model.to(device), tm.processor, model_id=f"tiny-{family}")
    cfg, model_cls, processor, _ = RECIPES[family].build(LM_7B["num_hidden_layers"])
    text = cfg.text_config
    for key, value in LM_7B.items():
        setattr(text, key, value)
    text.head_dim = LM_7B["hidden_size"] // LM_7B["num_attention_heads"]
    if family == "qwen2_vl":
        for key, value in QWEN2_VL_VISION.items():
            setattr(cfg.vision_config, key, value)
        text.rope_parameters = {**text.rope_parameters, "mrope_section": [16, 24, 24], "rope_theta": 1e6}
        ip = processor.image_processor  # 448 x 448 pixels: 256 image tokens
        ip.size = {"shortest_edge": 448 * 448, "longest_edge": 448 * 448}
        ip.min_pixels = ip.max_pixels = 448 * 448
    else:
        for key, value in SIGLIP_SO400M.items():
            setattr(cfg.vision_config, key, value)
        processor.image_processor.size = {"height": 384, "width": 384}
        processor.image_processor.image_grid_pinpoints = [[384, 384]]
        cfg.image_grid_pinpoints = [[384, 384]]
        processor.num_image_tokens = (384 // 14) ** 2
        processor.patch_size = 14
    with torch.device(device):
        model = model_cls._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return savlens.wrap(model.eval(), processor, model_id=f"random-{family}-7b")


def examples(n: int, side: int) -> list[savlens.Example]:
    rng = np.random.default_rng(0)
    return [
        savlens.Example(
            text=f"Question {i}: what is in this picture?",
            images=[Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))],
        )
        for i in range(n)
    ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str, repeats: int) -> tuple[Any, float]:
    """The result of ``fn`` and its best wall time over ``repeats`` calls (after one warm-up call)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return out, best


def measure(model: savlens.Model, exs: list[savlens.Example], batch_size: int, device: str, repeats: int) -> dict:
    """One model and batch size: extraction, bare forward and the reference loop on the same examples."""
    batches = [
        savlens.Batch.from_examples(model, exs[i : i + batch_size], chat=True) for i in range(0, len(exs), batch_size)
    ]
    inputs = [bl.model_inputs(model, b) for b in batches]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    feats, t_extract = timed(
        lambda: savlens.extract(model, exs, batch_size=batch_size, progress=False), device, repeats
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    _, t_bare = timed(lambda: [bl.bare_forward(model, x) for x in inputs], device, repeats)
    rows = [bl.model_inputs(model, savlens.Batch.from_examples(model, [e], chat=True)) for e in exs]
    hooks = bl.FullSequenceHooks(model)
    with hooks:
        ref, t_ref = timed(lambda: bl.reference_capture(model, hooks, rows), device, repeats)
    n = len(exs)
    return {
        "batch_size": batch_size,
        "examples": n,
        "extract_ex_per_s": n / t_extract,
        "bare_ex_per_s": n / t_bare,
        "ratio": t_extract / t_bare,
        "reference_ex_per_s": n / t_ref,
        "peak_mem_gib": peak,
        "max_abs_diff": float((feats.z.float() - ref.float().cpu()).abs().max()),
    }


def run(config: str, batch_sizes: list[int], n: int, repeats: int, device: str) -> dict[str, Any]:
    dtype = torch.bfloat16 if config == "7b" else torch.float32
    out: dict[str, Any] = {
        "schema": 1,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "config": config,
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "results": {},
    }
    for family in FAMILIES:
        model = build(family, config, device, dtype)
        exs = examples(n, 448 if config == "7b" else 32)
        rows = []
        for bs in batch_sizes:
            r = measure(model, exs, bs, device, repeats)
            rows.append(r)
            print(
                f"{family} bs={bs}: extract {r['extract_ex_per_s']:.1f} ex/s, bare {r['bare_ex_per_s']:.1f} ex/s, "
                f"ratio {r['ratio']:.3f}, reference {r['reference_ex_per_s']:.1f} ex/s, peak "
                f"{r['peak_mem_gib'] if r['peak_mem_gib'] is None else round(r['peak_mem_gib'], 2)} GiB, "
                f"max_abs_diff {r['max_abs_diff']:.3g}",
                flush=True,
            )
        out["results"][family] = rows
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--examples", type=int, default=32, help="examples per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "bench" / "gpu_extraction.json"))
    args = parser.parse_args(argv)
    data = run(args.config, args.batch_sizes, args.examples, args.repeats, args.device)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    main()
