"""The family coverage table of docs/models.md, measured on the tiny models of :mod:`savlens.testing.tiny`.

For every family with a recipe: the HF class, whether the spec was inferred, the position scheme and the
inputs savlens keeps, and the batch invariance reached (max |Δ| of last-token ``hook_z`` between a padded
batch mixing two image sizes and a text-only row, where the family accepts one, and each row run alone) in fp32
under SDPA and in bf16 under eager attention.

    python -m savlens.testing.coverage            # measure, write docs/models-coverage.json and the table

tests/test_docs.py checks that docs/models.md holds the table rendered from the committed JSON, and that the
JSON's facts match the code.
"""

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from savlens.example import Example
from savlens.inputs import Batch
from savlens.loading import Model, wrap
from savlens.testing.tiny import ALL_FAMILIES, RECIPES, build_tiny, sample_images
from savlens.tracing import trace

DOCS = Path(__file__).resolve().parents[2] / "docs"
JSON_PATH = DOCS / "models-coverage.json"
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
#: families whose fp32 SDPA batch invariance transformers itself breaks (the contract tests run them under eager)
SDPA_NOT_INVARIANT = {
    "phi4_multimodal": "transformers 5.25 sets `is_causal = True` on Phi-4's vision attention, so under SDPA an "
    "image whose crops have no padded patches is encoded causally and one beside padded crops bidirectionally; "
    "under eager attention rows agree to 1.4e-6",
}
#: families where bf16 eager is not bit-exact, and the bound the tests hold them to
BF16_EAGER_NOT_EXACT = {
    "gemma4": (2e-5, "a text-only row beside image rows differs by ~1e-5; image rows alone are exact"),
}
#: what the families' own code does to rows that savlens cannot change
FAMILY_NOTES = {
    "mllama": "rows with different numbers of images are not invariant (0.17 on the tiny model): the row with fewer "
    "images gets padded image slots that the cross-attention layer reads (transformers 5.25); rows with the same "
    "number of images agree",
}
TEXTS = ("what color is the circle ?", "is there a red shape in the picture and what else is there ?", "hello")


def mixed_examples(model: Model, family: str) -> list[Example]:
    """Three rows of different lengths; for VLMs two image sizes and a text-only row (an image row where the
    family refuses text-only rows beside images)."""
    if not model.multimodal:
        return [Example(t, id=i) for t, i in zip(TEXTS, "abc", strict=True)]
    rec = RECIPES[family]
    imgs = sample_images(3, seed=1, sizes=rec.image_sizes)
    last = Example(TEXTS[2], id="c") if rec.text_only_rows else Example(TEXTS[2], images=[imgs[2]], id="c")
    return [Example(TEXTS[0], images=[imgs[0]], id="a"), Example(TEXTS[1], images=[imgs[1]], id="b"), last]


def batch_delta(model: Model, examples: list[Example]) -> float:
    """Max |Δ| of last-token ``hook_z``: the examples in one left-padded batch vs each alone."""
    with trace(model, Batch.from_examples(model, examples)) as t:
        z = t.save("blocks.*.attn.hook_z")
    singles = []
    for ex in examples:
        with trace(model, Batch.from_examples(model, [ex])) as t1:
            z1 = t1.save("blocks.*.attn.hook_z")
        singles.append(z1.value)
    return float((z.value.float() - torch.cat(singles).float()).abs().max())


def facts(model: Model) -> dict[str, Any]:
    """What savlens read off the model (no forward pass)."""
    spec = model.resolved.spec
    position = {"mask_cumsum": "1-D from the mask", "mrope": "the model's mRoPE"}[spec.positions]
    if spec.position_offset:
        position += f" (from {spec.position_offset})"
    kept = sorted(p for p in ("token_type_ids", "mm_token_type_ids") if p in model.forward_params)
    kinds = model.resolved.kinds
    widths = sorted({i.d_head for i in model.resolved.layers if i.has_heads})
    layer_text = "all attention" if set(kinds) == {"attention"} else ", ".join(k.replace("_", " ") for k in kinds)
    if len(widths) > 1:
        layer_text += f"; d_head {' / '.join(map(str, widths))} by layer"
    if any(i.gated_q for i in model.resolved.layers):
        layer_text += "; gated query"
    return {
        "class": type(model.hf).__name__,
        "layers": layer_text,
        "spec": model.resolved.source,
        "blocks": model.resolved.blocks,
        "positions": position,
        "kept_inputs": kept,
        "fused_qkv": spec.fused_qkv,
        "post_norms": spec.post_norms,
        "multimodal": model.multimodal,
    }


def measure(family: str) -> dict[str, Any]:
    """Facts and batch-invariance deltas of one family's tiny model."""
    rec = RECIPES[family]
    out: dict[str, Any] = {"family": family, "text_only_rows": rec.text_only_rows, "notes": rec.notes}
    for attn, dtype, key in (("sdpa", torch.float32, "fp32_sdpa"), ("eager", torch.bfloat16, "bf16_eager")):
        tm = build_tiny(family, attn_implementation=attn, dtype=dtype)
        model = wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
        if key == "fp32_sdpa":
            out.update(facts(model))
        out[key] = batch_delta(model, mixed_examples(model, family))
    return out


def _fmt(x: float) -> str:
    return "exact" if x == 0 else f"{x:.1e}"


def coverage_markdown(data: dict[str, Any]) -> str:
    """The coverage table (between the markers) rendered from the JSON."""
    lines = [
        START,
        "| family | HF class | spec | decoder layers | layer kinds (3 layers) | positions | inputs kept | "
        "text-only rows beside images | batch Δ fp32 SDPA | batch Δ bf16 eager |",
        "|---|---|---|---|---|---|---|---|---:|---:|",
    ]
    for r in data["families"]:
        kept = ", ".join(f"`{k}`" for k in r["kept_inputs"]) or "–"
        extra = [w for w, on in (("fused qkv", r["fused_qkv"]), ("post-norms", r["post_norms"])) if on]
        layers = f"`{r['blocks']}`" + (f" ({', '.join(extra)})" if extra else "")
        rows = ("yes" if r["text_only_rows"] else "no (refused)") if r["multimodal"] else "n/a (text LM)"
        lines.append(
            f"| `{r['family']}` | `{r['class']}` | {r['spec']} | {layers} | {r['layers']} | {r['positions']} | {kept} "
            f"| {rows} | "
            f"{_fmt(r['fp32_sdpa'])} | {_fmt(r['bf16_eager'])} |"
        )
    m = data["machine"]
    lines.append("")
    lines.append(
        f"Measured by `python -m savlens.testing.coverage` on {data['date']} ({m['cpu']}, torch {m['torch']}, "
        f"transformers {m['transformers']}), tiny random models of each family's own config class (3 decoder layers, "
        "4 query heads over 2 KV heads of 16 dims; weights redrawn from N(0, 0.15) so that padding bugs show). "
        "Batch Δ: max |Δ| of last-token `hook_z` between one left-padded batch of three rows (two image sizes and "
        "a text-only row where the family accepts one) and each row alone. The contract tests "
        "(tests/test_trace.py) hold every family to 2e-5 in fp32 and to exact equality in bf16 eager, except where "
        "a note below says why not."
    )
    lines.append("")
    for fam, why in {**SDPA_NOT_INVARIANT, **{f: w for f, (_, w) in BF16_EAGER_NOT_EXACT.items()}}.items():
        lines.append(f"- `{fam}`: {why}.")
    for fam, why in FAMILY_NOTES.items():
        lines.append(f"- `{fam}`: {why}.")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    import transformers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(ALL_FAMILIES))
    p.add_argument("--out", type=Path, default=JSON_PATH)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {
            "cpu": f"{platform.machine()}, {torch.get_num_threads()} torch thread",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "families": [measure(f) for f in args.families],
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    doc = DOCS / "models.md"
    text = doc.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + coverage_markdown(data) + rest.split(END, 1)[1]
        doc.write_text(text)
    print(coverage_markdown(data))


if __name__ == "__main__":
    main()
