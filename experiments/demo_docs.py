"""The main demo's output and timing in the docs, from one committed JSON: run the demo, measure it, render.

    python experiments/demo_docs.py                # runs `python -m savlens.demo --threads 1`, ~3-7 min
    python experiments/demo_docs.py --render-only  # re-render README.md, docs/results.md, docs/quickstart.md

Runs the README's demo command (the default demo: ``tiny-vlm-heldout-color`` on easy-VQA colours beside
``tiny-vlm``, seed 0) as a child process with one torch thread, and records its printed table, its
``results.json`` (rows, paired tests, heads, timings), the child's wall time, CPU time (user + system:
``resource.getrusage(RUSAGE_CHILDREN)``), peak RSS and the load average sampled every 5 s while it ran, in
experiments/results/demo.json. The demo's blocks of README.md, docs/results.md and docs/quickstart.md (between
``<!-- demo-output:start -->`` and ``<!-- demo-output:end -->``) are rendered from that JSON by :func:`blocks`;
tests/test_results_render.py checks them byte for byte.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine, section_of, write_json, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JSON_PATH = RESULTS / "demo.json"
START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"
PAGES = {
    "readme": ROOT / "README.md",
    "results": ROOT / "docs" / "results.md",
    "quickstart": ROOT / "docs" / "quickstart.md",
}
COMMAND = ["-m", "savlens.demo", "--threads", "1"]


# ---- run and measure -----------------------------------------------------------------------------------


def run() -> dict[str, Any]:
    """Run the demo once as a child process and measure it."""
    loads: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before = os.getloadavg()[0]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, *COMMAND, "--out", out], cwd=ROOT, capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - t0
        done.set()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("method "))
    last = next(i for i in range(first, len(lines)) if not lines[i].strip())
    return {
        "command": "python " + " ".join(COMMAND),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "table": "\n".join(lines[first:last]),
        "paired_lines": [line for line in lines if ": SAV - its " in line],
        "stdout": proc.stdout,
        "model": result["model"],
        "task": result["task"],
        "n_train": result["n_train"],
        "n_test": result["n_test"],
        "k": result["k"],
        "rows": result["rows"],
        "paired": result["extra"]["paired"],
        "heads": result["heads"],
        "timings": result["timings"],
        "measurement": {
            "wall_s": round(wall, 1),
            "cpu_user_s": round(after.ru_utime - before.ru_utime, 1),
            "cpu_system_s": round(after.ru_stime - before.ru_stime, 1),
            "peak_rss_gb": round(after.ru_maxrss / 1024**2, 2),  # ru_maxrss is in KiB on Linux
            "torch_threads": 1,
            "load_average_1min": {
                "before": round(load_before, 2),
                "min": round(min(loads or [load_before]), 2),
                "max": round(max(loads or [load_before]), 2),
            },
        },
        "machine": machine(),
    }


# ---- render --------------------------------------------------------------------------------------------


def _acc(d: dict[str, Any], prefix: str) -> float:
    return float(next(r["accuracy"] for r in d["rows"] if r["method"].startswith(prefix)))


def _note(d: dict[str, Any], prefix: str) -> str:
    return str(next(r["note"] for r in d["rows"] if r["method"].startswith(prefix)))


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def measured(d: dict[str, Any]) -> str:
    """One sentence: when, where and how long."""
    m, mc = d["measurement"], d["machine"]
    load = m["load_average_1min"]
    cpu = m["cpu_user_s"] + m["cpu_system_s"]
    return (
        f"Seed 0, measured {d['date']} (`{d['command']}`) on {mc['cpu']}, {mc['cores']} cores that other jobs kept "
        f"busy (load average {load['min']:.1f}-{load['max']:.1f}), torch {mc['versions']['torch']}, "
        f"{m['torch_threads']} torch thread: {_minutes(m['wall_s'])} wall, {cpu:.0f} s CPU (user + system), "
        f"{m['peak_rss_gb']:.1f} GB peak RSS. The CPU time is what a quiet machine would need as wall time with one "
        "thread (it was not measured on one)."
    )


def shows(d: dict[str, Any]) -> str:
    """What the numbers say, computed from them (held-out-skill headline)."""
    held, trained = d["model"], next(k for k in d["paired"] if k != d["model"])
    sav, greedy = _acc(d, "SAV: "), _acc(d, "zero-shot: the model's greedy")
    restricted, probe = _acc(d, "zero-shot: answer restricted"), _acc(d, "logistic probe")
    control, image = _acc(d, "control: SAV on"), _acc(d, "image only")
    t_sav = _acc(d, f"trained skill, {trained} (trained on colour questions): SAV")
    t_greedy = _acc(d, f"trained skill, {trained} (trained on colour questions): zero-shot: the model's greedy")
    named = _note(d, "zero-shot: the model's greedy").removeprefix("(a label in ").removesuffix(" of answers)")
    pg, pr = d["paired"][held]["greedy"], d["paired"][held]["restricted"]
    holds = sav > control and sav > image - 0.05
    text = (
        f"What it shows: the held-out model's own answer to the colour question is right on {greedy:.3f} (a colour "
        f"word in {named} of its answers; restricted to the colour words {restricted:.3f}), and SAV on its heads "
        f"gets {sav:.3f} (a logistic probe on the same heads {probe:.3f}), against {control:.3f} for SAV refitted on "
        f"the model with an untrained projector and {image:.3f} for the vision tower alone. "
    )
    if not holds:
        text += (
            "Its heads hold less colour than the untrained-projector model's: training the projector without colour "
            "questions threw most of the colour information away, so this model does not know what it does not say. "
        )
    text += (
        f"On this split SAV against its greedy answer: {pg['difference']:+.3f}, exact McNemar p = "
        f"{pg['mcnemar_p']:.2g}; against its restricted answer: {pr['difference']:+.3f}, p = {pr['mcnemar_p']:.2g}. "
        "One split decides nothing: the 5-seed comparison with paired tests is in "
        "[results](docs/results.md#tiny-vlm-a-held-out-skill-does-sav-read-what-the-model-knows-but-does-not-say). "
        f"On the trained skill ({trained}, same split) SAV gets {t_sav:.3f} and the model's own answer "
        f"{t_greedy:.3f} (p = {d['paired'][trained]['greedy']['mcnemar_p']:.2g})."
    )
    return text


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=116, break_long_words=False, break_on_hyphens=False)


def blocks(d: dict[str, Any]) -> dict[str, str]:
    """The demo block of each page (markers included)."""
    code = f"```text\n{d['table']}\n```\n\n```text\n" + "\n".join(d["paired_lines"]) + "\n```"
    readme = "\n\n".join([START + "\n" + _wrap(measured(d)), code, _wrap(shows(d)) + "\n" + END]) + "\n"
    results = "\n\n".join(
        [START + "\n" + _wrap(measured(d) + " One seed and one split: the 5-seed version with paired tests is the "
         "held-out-skill section below."), code + "\n" + END]  # fmt: skip
    ) + "\n"
    m = d["measurement"]
    took = _wrap(
        f"It took {_minutes(m['wall_s'])} wall and {m['cpu_user_s'] + m['cpu_system_s']:.0f} s of CPU (1 torch "
        f"thread) on a {d['machine']['cores']}-core machine that other jobs kept busy (load average "
        f"{m['load_average_1min']['min']:.1f}-{m['load_average_1min']['max']:.1f}); on a quiet machine the wall "
        "time would be about the CPU time or less."
    )
    quick = f"{START}\n```text\n{d['table']}\n```\n\n{took}\n{END}\n"
    return {"readme": readme, "results": results, "quickstart": quick}


def render(d: dict[str, Any]) -> None:
    for name, text in blocks(d).items():
        write_section(PAGES[name], START, END, text)


def check(d: dict[str, Any]) -> list[str]:
    """The pages whose demo block differs from the JSON's rendering (for the test)."""
    out = []
    for name, text in blocks(d).items():
        if section_of(PAGES[name].read_text(encoding="utf-8"), START, END) != text:
            out.append(name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render-only", action="store_true", help="only re-render the pages from the JSON")
    a = p.parse_args()
    if not a.render_only:
        write_json(JSON_PATH, run())
        print("wrote", JSON_PATH)
    render(json.loads(JSON_PATH.read_text(encoding="utf-8")))
    print("rendered the demo blocks of", ", ".join(str(p.relative_to(ROOT)) for p in PAGES.values()))


if __name__ == "__main__":
    main()
