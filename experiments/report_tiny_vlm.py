"""The report page on the tiny VLM: the screenshot in docs/report.md and what the page shows, as JSON.

    python experiments/report_tiny_vlm.py                                   # writes the three files below
    python experiments/report_tiny_vlm.py --html /tmp/report.html --screenshot /tmp/report.png

``savlens.load("tiny-vlm")`` on easy-VQA colour questions (8 colours): 5 training shots per colour from easy-VQA
train, SAV with k=20 heads (leave-one-out centroid scores, seed 0), then :func:`savlens.report.write_report` on
3 test questions per colour from easy-VQA test (24: the examples the SAV gets wrong listed first), with each
selected head's attention over the image (the tiny VLM's 2 x 2 image-token grid). The page is opened in headless
Chromium (:class:`savlens.testing.browser.Browser`, 1200 x 760 CSS pixels), the second-ranked head clicked, and a
screenshot taken; it is quantised to 128 colours to keep the PNG small.

Writes the page (``--html``, default savlens-report-tiny-vlm.html in the temp folder), the screenshot
(``--screenshot``, default docs/img/report.png) and experiments/results/report_tiny_vlm.json: the heads, the
accuracy, the wrong examples, the clicked head, the page's size, timings, machine and load average.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_vlm_common import RESULTS, machine, write_json  # noqa: E402

import savlens  # noqa: E402
from savlens.datasets import few_shot_split, load_easy_vqa  # noqa: E402
from savlens.report import render, report_data  # noqa: E402
from savlens.testing.browser import Browser  # noqa: E402

ROOT = Path(__file__).parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--html", type=Path, default=Path(tempfile.gettempdir()) / "savlens-report-tiny-vlm.html")
    p.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "img" / "report.png")
    p.add_argument("--out", type=Path, default=RESULTS / "report_tiny_vlm.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    model = savlens.load("tiny-vlm")
    train, _ = few_shot_split(load_easy_vqa("train", "color"), 5, 0, seed=0)
    test, _ = few_shot_split(load_easy_vqa("test", "color"), 3, 0, seed=0)
    sav = savlens.SAV(k=20, seed=0).fit(savlens.extract(model, train, progress=False))
    t_fit = time.perf_counter() - t0
    data = report_data(sav, test, model=model, title="SAV report: tiny-vlm, easy-VQA colours (5 shots per colour)")
    page = render(data)
    t_report = time.perf_counter() - t0 - t_fit
    a.html.parent.mkdir(parents=True, exist_ok=True)
    a.html.write_text(page, encoding="utf-8")
    clicked = str(sav.heads_[1])
    with Browser(width=1200, height=760) as b:
        b.open(a.html.resolve().as_uri())
        b.click(f".sr-cell[data-head='{clicked}']")
        b.evaluate("window.scrollTo(0, 0)")
        png = b.screenshot()
        errors = list(b.errors)
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")
    from io import BytesIO

    from PIL import Image

    shot = Image.open(BytesIO(png)).convert("RGB").quantize(colors=128)
    a.screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot.save(a.screenshot, optimize=True)
    wrong = [e for e in data["examples"] if e["correct"] is False]
    result = {
        "model": model.model_id,
        "task": "easy-VQA colour questions: 5 shots per colour (train), 3 test questions per colour (test), seed 0",
        "k": 20,
        "heads": [s["name"] for s in data["selected"]],
        "accuracy": data["accuracy"],
        "n_examples": data["n_examples"],
        "wrong": [{"id": e["id"], "label": e["label"], "predicted": data["classes"][e["predicted"]]} for e in wrong],
        "clicked_head": clicked,
        "page_bytes": len(page.encode("utf-8")),
        "screenshot": str(a.screenshot.relative_to(ROOT)) if a.screenshot.is_relative_to(ROOT) else str(a.screenshot),
        "screenshot_bytes": a.screenshot.stat().st_size,
        "seconds_fit": round(t_fit, 1),
        "seconds_report": round(t_report, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }
    write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
