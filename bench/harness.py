"""Timing and memory measurement for the benchmark suite (no savlens imports).

Timings are taken *interleaved*: every round runs each contender once (in a rotated order), so a change in the
load of this shared machine hits all contenders alike, and ratios are taken between neighbours in time. The suite
times one call per sample for every contender: repeating a call back to back warms the caches for it alone and
made savlens's (larger) Python path look ~0.5 ms faster per call than it is when interleaved with other work. Each
sample records wall time (``time.perf_counter``) and the CPU time of the whole process
(``time.process_time``); with one torch thread the CPU time is the work done, whatever the other engineers on
the machine are running, while the wall time also counts the time this process waited for a core.

Memory: peak resident set size (``VmHWM`` of ``/proc/self/status``, reset before each measurement by writing
``5`` to ``/proc/self/clear_refs``) above the resident size just before, after ``gc.collect()`` and glibc's
``malloc_trim(0)``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

try:
    _LIBC: Any = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def summary(xs: list[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and count of ``xs``."""
    s = sorted(xs)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25 = p75 = s[0]
    return {"median": statistics.median(s), "p25": p25, "p75": p75, "min": s[0], "max": s[-1], "n": len(s)}


def cpu_name(fallback: str = "unknown") -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else ``fallback``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or fallback


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def measure(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    min_sample_s: float = 0.0,
    warmup: int = 2,
    per: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time each function of ``fns``, interleaved, over ``rounds`` rounds.

    Args:
        fns: name -> callable (no arguments).
        rounds: samples per function.
        min_sample_s: a sample repeats its call until it took at least this long (calibrated in the warmup),
            and records the mean per call; for sub-millisecond calls.
        warmup: untimed calls per function before the rounds.
        per: name -> divisor (e.g. the number of examples a call handles): times are divided by it.

    Returns:
        name -> ``{"wall": summary, "cpu": summary, "calls_per_sample", "wall_samples", "cpu_samples",
        "load_avg": [start, end]}`` in seconds (per unit of ``per``).
    """
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        t = 0.0
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
        inner[name] = max(1, int(min_sample_s / t) + 1) if min_sample_s > 0 and t < min_sample_s else 1
    walls: dict[str, list[float]] = {n: [] for n in fns}
    cpus: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    start_load = loadavg()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn, k = fns[name], inner[name]
            div = k * (per or {}).get(name, 1.0)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(k):
                fn()
            w1, c1 = time.perf_counter(), time.process_time()
            walls[name].append((w1 - w0) / div)
            cpus[name].append((c1 - c0) / div)
    end_load = loadavg()
    return {
        n: {
            "wall": summary(walls[n]),
            "cpu": summary(cpus[n]),
            "calls_per_sample": inner[n],
            "wall_samples": walls[n],
            "cpu_samples": cpus[n],
            "load_avg": [start_load, end_load],
        }
        for n in fns
    }


def paired_ratio(results: dict[str, dict[str, Any]], num: str, den: str) -> dict[str, Any]:
    """Ratio ``num / den`` of two timings measured in the same rounds: the median of the per-round ratios
    (neighbours in time) and the ratio of the medians, for wall and CPU time."""
    out: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        a, b = results[num][f"{clock}_samples"], results[den][f"{clock}_samples"]
        per_round = [x / y for x, y in zip(a, b) if y > 0]
        out[clock] = {
            "median_of_paired": statistics.median(per_round),
            "ratio_of_medians": statistics.median(a) / statistics.median(b),
            "spread": [min(per_round), max(per_round)],
        }
    return out


def timed_once(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once; return its result and ``{"wall", "cpu"}`` seconds."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    w1, c1 = time.perf_counter(), time.process_time()
    return out, {"wall": w1 - w0, "cpu": c1 - c0}


def repeat(fn: Callable[[], Any], rounds: int) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` ``rounds`` times (not interleaved); return the last result and wall / CPU summaries."""
    walls, cpus, out = [], [], None
    start_load = loadavg()
    for _ in range(rounds):
        out, t = timed_once(fn)
        walls.append(t["wall"])
        cpus.append(t["cpu"])
    return out, {
        "wall": summary(walls),
        "cpu": summary(cpus),
        "wall_samples": walls,
        "cpu_samples": cpus,
        "load_avg": [start_load, loadavg()],
    }


# ---- memory ---------------------------------------------------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status("VmRSS:")


def _settle() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def peak_rss(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn``; return its result and ``{"peak_delta", "retained_delta", "base", "wall", "cpu"}``: the peak
    resident set size during the call, and the resident size after it (with the result still referenced, after
    ``gc.collect()`` and ``malloc_trim``), above the resident size before it, in bytes; and the call's times."""
    _settle()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    base = rss_bytes()
    out, t = timed_once(fn)
    peak = _status("VmHWM:") if resettable else rss_bytes()
    _settle()
    after = rss_bytes()
    return out, {"peak_delta": max(0, peak - base), "retained_delta": after - base, "base": base, **t}


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in ``obj`` (nested lists, tuples and dicts of tensors), storage-deduplicated."""
    import torch

    seen: set[int] = set()
    total = 0

    def walk(x: Any) -> None:
        nonlocal total
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return total
