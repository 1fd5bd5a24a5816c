"""The per-family activation-API check (``python -m savlens.demo --check``, ``savlens check``): on tiny random
models of each family, whether logits under a trace equal a plain HF forward, the batched vs one-by-one
difference of ``hook_z``, and the cost of a trace."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from savlens.example import Example
from savlens.inputs import Batch
from savlens.loading import Model, wrap
from savlens.tracing import trace


def _examples(model: Model, family: str) -> list[Example]:
    from savlens.testing.coverage import mixed_examples

    return mixed_examples(model, family)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def check_family(family: str, repeats: int = 30) -> dict[str, Any]:
    """Trace one tiny model of ``family`` and return its checks and timings."""
    from savlens.testing.tiny import build_tiny

    tm = build_tiny(family)
    model = wrap(tm.model, tm.processor, model_id=f"tiny-{family}")
    exs = _examples(model, family)
    batch = Batch.from_examples(model, exs)
    with trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    with torch.no_grad():
        ref = model.hf(**batch.inputs, use_cache=False, logits_to_keep=1).logits
    singles = []
    for ex in exs:
        with trace(model, Batch.from_examples(model, [ex])) as t1:
            z1 = t1.save("blocks.*.attn.hook_z")
        singles.append(z1.value)
    delta = float((z.value - torch.cat(singles)).abs().max())

    def plain() -> None:
        with torch.no_grad():
            model.hf(**batch.inputs, use_cache=False, logits_to_keep=1)

    def traced() -> None:
        with trace(model, batch) as tt:
            tt.save("blocks.*.attn.hook_z")

    plain_ms, trace_ms = _median_ms(plain, repeats), _median_ms(traced, repeats)
    s = model.sizes
    return {
        "family": family,
        "grid": f"{s.n_layers}x{s.n_heads} (kv {s.n_kv_heads}, d_head {s.d_head})",
        "batch": repr(batch),
        "logits_equal": bool(torch.equal(t.logits, ref)),
        "batch_invariance_max_abs": delta,
        "max_abs_z": float(z.value.abs().max()),
        "plain_forward_ms": plain_ms,
        "trace_all_hook_z_ms": trace_ms,
        "overhead": trace_ms / plain_ms,
    }


def check_table(rows: list[dict[str, Any]]) -> str:
    """Return the rows of :func:`check_family` as an aligned table."""
    lines = [
        f"{'family':<16} {'grid':<28} {'logits==HF':<11} {'batch Δz':<10} {'plain ms':<9} {'trace ms':<9} overhead"
    ]
    for r in rows:
        lines.append(
            f"{r['family']:<16} {r['grid']:<28} {r['logits_equal']!s:<11} {r['batch_invariance_max_abs']:<10.2e} "
            f"{r['plain_forward_ms']:<9.2f} {r['trace_all_hook_z_ms']:<9.2f} {r['overhead']:.2f}x"
        )
    return "\n".join(lines)
