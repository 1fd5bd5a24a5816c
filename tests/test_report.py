"""The interactive report (savlens.report): its data against the SAV's own votes and the attention shares, the
escaping of user text, ``_repr_html_``, ``savlens report``, and the page in a real headless Chromium."""

import base64
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import savlens
from savlens import SAV, HeadFeatures
from savlens.cli import main
from savlens.errors import ArgumentError, FeatureError, NotFittedError
from savlens.report import report_data, report_html, votes_html, write_report, wrong_first
from savlens.testing.browser import find_chromium

XSS_LABEL = "</script><script>window.__xss=1</script>green"
XSS_TEXT = 'what color is the shape? <img src=x onerror="window.__xss=2">'


def toy(n: int = 24, flip: tuple[int, ...] = (0, 5)) -> tuple[HeadFeatures, list[str]]:
    """Features with three planted informative heads (L1H2, L0H1, L1H0), labels a / b; ``flip`` rows carry the
    other label."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, 3, 4, generator=g)
    labels = ["a", "b"] * (n // 2)
    for layer, head in ((1, 2), (0, 1), (1, 0)):
        z[0::2, layer, head, 0] += 6
        z[1::2, layer, head, 1] += 6
    shown = [("b" if lab == "a" else "a") if i in flip else lab for i, lab in enumerate(labels)]
    return HeadFeatures(z, labels=labels), shown


def blob(page: str) -> dict[str, Any]:
    """The JSON data inlined in a report page."""
    m = re.search(r'<script type="application/json" class="sr-data">(.*?)</script>', page, re.S)
    assert m is not None
    return dict(json.loads(m.group(1)))


# ---- the data, without a model ---------------------------------------------------------------------------


def test_the_data_holds_the_sav_votes_and_lists_wrong_examples_first() -> None:
    train, _ = toy(flip=())
    sav = SAV(k=3).fit(train)
    test, shown = toy(flip=(0, 5))
    test = dataclasses.replace(test, labels=shown)
    votes = sav.votes(test)
    data = report_data(sav, features=test)
    n = len(shown)
    assert data["n_examples"] == n and data["classes"] == ["a", "b"]
    assert [s["name"] for s in data["selected"]] == [str(h) for h in sav.heads_]
    assert data["scores"] == [[round(v, 4) for v in row] for row in sav.scores_.scores.tolist()]
    assert data["accuracy"] == pytest.approx(sav.score(test))
    wrong = [e["index"] for e in data["examples"] if e["correct"] is False]
    assert sorted(wrong) == [0, 5] and data["n_wrong"] == 2  # the two flipped labels, and only them
    assert [e["index"] for e in data["examples"]][:2] == wrong  # listed first
    for e in data["examples"]:
        i = e["index"]
        assert e["votes"] == votes.votes[i].tolist()
        assert e["predicted"] == int(votes.winners[i])
        assert e["similarity"] == [[round(v, 4) for v in row] for row in votes.similarity[i].tolist()]
        assert e["label"] == shown[i] and e["correct"] == (sav.classes_[e["predicted"]] == shown[i])
    assert data["attention"] is False and all(e["grids"] == [] for e in data["examples"])
    few = report_data(sav, features=test, max_examples=3)
    assert [e["index"] for e in few["examples"]] == [e["index"] for e in data["examples"]][:3]
    assert few["accuracy"] == data["accuracy"] and "3 of 24" in few["notes"][0]


def test_wrong_first_orders_wrong_then_unlabelled_then_right() -> None:
    assert wrong_first([True, False, None, False, True], [0.9, 0.4, 0.5, 0.8, 0.6]) == [3, 1, 2, 0, 4]


def _paint_payload(view: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    """What the page overlays on one picture, painted like :func:`savlens.plot.grid.paint` (each cell's weight
    over its box): the page's own data, not the adapter's tensors."""
    width, height = size
    canvas = np.zeros((height, width), np.float32)
    for p in view["panels"]:
        x0, y0, x1, y1 = p["box"]
        w, h = (x1 - x0) / p["cols"], (y1 - y0) / p["rows"]
        for i, v in enumerate(p["w"]):
            r, c = divmod(i, p["cols"])
            cx0, cx1 = (min(max(round(x * width), 0), width) for x in (x0 + c * w, x0 + (c + 1) * w))
            cy0, cy1 = (min(max(round(y * height), 0), height) for y in (y0 + r * h, y0 + (r + 1) * h))
            canvas[cy0:cy1, cx0:cx1] += v
    return canvas


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl"])
def test_report_grids_are_each_heads_attention_at_the_real_token_grid(family: str) -> None:
    """The page's cells (tiles, base / anyres views, newline tokens, video frames) hold each head's attention
    on every image and video token: they add up to the head's share on them, and painted over the picture they
    are what :func:`savlens.plot.attention_on_grid` draws for the same weights."""
    from conftest import tiny

    from savlens.heads import HeadSet
    from savlens.plot import attention_on_grid
    from savlens.report._attention import head_image_attention
    from savlens.report._data import _media_payload
    from savlens.tracing import attention_patterns

    model = tiny(family)
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 255, (56, 112, 3), dtype=np.uint8)  # wide: rows and columns cannot swap unnoticed
    frames = rng.integers(0, 255, (4, 40, 72, 3), dtype=np.uint8)
    examples = [
        savlens.Example("what is it ?", images=[pic], id="image"),
        savlens.Example("what moves ?", videos=[frames], id="video"),
    ]
    heads = HeadSet(["L1H0", "L0H1"])
    att = head_image_attention(model, examples, heads, batch_size=1)
    n_panels = 0
    for row, ex in enumerate(examples):
        batch = savlens.Batch.from_examples(model, [ex])
        weights = attention_patterns(model, batch, heads, "last").value[0, :, -1].float()  # k key_pos
        media = batch.image_mask[0] | (batch.video_mask[0] if batch.video_mask is not None else False)
        share = weights[:, media].sum(-1)
        assert share.min() > 0.01  # random weights still look at the picture: a non-trivial check
        assert torch.allclose(att.share[row], share, atol=1e-5)
        (m,) = att.grids[row]
        assert m.grid.kind == ("image" if ex.n_images else "video")
        assert torch.allclose(m.total(), share, atol=1e-5)  # every image / video token: in a cell or off the grid
        picture = pic if ex.n_images else frames
        size = (picture.shape[-2], picture.shape[-3])
        for k in range(len(heads)):
            page = json.loads(json.dumps(_media_payload(m, k)))
            cells = sum(sum(p["w"]) for v in page["views"] for p in v["panels"])
            assert cells + page["off"] == pytest.approx(float(share[k]), abs=1e-3)
            fig = attention_on_grid(weights[k], model, batch, picture=picture)
            drawn = [a for a in fig.axes if a.images]
            assert [a.get_title() for a in drawn] == [v["label"] for v in page["views"]]
            for ax, view in zip(drawn, page["views"]):
                assert np.allclose(ax.images[-1].get_array(), _paint_payload(view, size), atol=1e-3)
                n_panels += len(view["panels"])
    assert n_panels > 2 * len(heads)  # more than one panel per picture somewhere: tiles, views or frames


def test_user_text_is_escaped_and_survives_the_round_trip() -> None:
    feats, _ = toy(flip=())
    feats = dataclasses.replace(feats, labels=[XSS_LABEL if lab == "a" else lab for lab in feats.labels or []])
    sav = SAV(k=2).fit(feats)
    page = report_html(sav, features=feats, title="<b>mine</b>")
    assert "<script>window.__xss" not in page and "</script><script>" not in page
    assert "<title>&lt;b&gt;mine&lt;/b&gt;</title>" in page
    data = blob(page)
    assert XSS_LABEL in data["classes"] and data["title"] == "<b>mine</b>"  # the text itself is unchanged
    assert data == json.loads(json.dumps(report_data(sav, features=feats, title="<b>mine</b>")))
    assert "http://" not in page and "https://" not in page  # nothing fetched: no CDN, no server


def test_repr_html_in_notebooks() -> None:
    feats, _ = toy(flip=())
    assert SAV(k=2)._repr_html_() is None  # unfitted: the notebook falls back to repr
    sav = SAV(k=2).fit(feats)
    a, b = sav._repr_html_(), sav._repr_html_()
    assert a is not None and b is not None and not a.startswith("<!DOCTYPE")
    ids = [re.search(r'id="(savlens-report-\d+)"', x).group(1) for x in (a, b)]  # type: ignore[union-attr]
    assert ids[0] != ids[1] and f'"{ids[0]}"' in a  # one id per output; the script looks up its own
    assert blob(a)["selected"] == blob(b)["selected"] and blob(a)["examples"] == []
    votes = sav.votes(feats)
    v = blob(votes._repr_html_())
    assert [e["votes"] for e in sorted(v["examples"], key=lambda e: e["index"])] == votes.votes.tolist()
    labelled = blob(votes_html(votes, feats.labels))
    assert labelled["accuracy"] == pytest.approx(sav.score(feats))
    few = blob(votes_html(votes, feats.labels, max_examples=5))
    assert len(few["examples"]) == 5 and few["accuracy"] == labelled["accuracy"] and "5 of 24" in few["notes"][1]


def test_without_attention_the_page_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from savlens.errors import HookNotAvailableError
    from savlens.testing.tiny import sample_images

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise HookNotAvailableError("this model cannot switch to eager attention")

    monkeypatch.setattr("savlens.report._data.head_image_attention", refuse)
    feats, _ = toy(flip=())
    sav = SAV(k=2).fit(feats)
    examples = [savlens.Example(f"q{i}", images=sample_images(1, seed=i)) for i in range(24)]
    with pytest.warns(UserWarning, match="cannot switch to eager"):
        data = report_data(sav, examples, model=object(), features=feats)  # type: ignore[arg-type]
    assert data["attention"] is False and any("cannot switch to eager" in n for n in data["notes"])
    assert all(len(e["images"]) == 1 and e["grids"] == [] for e in data["examples"])
    no_model = report_data(sav, examples, features=feats)["notes"]
    assert no_model == ["no attention over the images: pass the model to compute it."]


def test_bad_inputs_are_named() -> None:
    feats, _ = toy(flip=())
    with pytest.raises(NotFittedError, match="not fitted"):
        report_data(SAV(k=2))
    sav = SAV(k=2).fit(feats)
    with pytest.raises(ArgumentError, match="pass model="):
        report_data(sav, [savlens.Example("hi")])
    with pytest.raises(FeatureError, match="1 examples but 24 rows"):
        report_data(sav, [savlens.Example("hi")], features=feats)
    with pytest.raises(ArgumentError, match="max_examples"):
        report_data(sav, features=feats, max_examples=0)


# ---- the command line (tiny text model: fast) ------------------------------------------------------------


def test_savlens_report_from_a_store_and_from_an_examples_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for i, shape in enumerate(["circle", "square", "triangle", "line", "dot", "shape"]):
        rows.append({"id": f"r{i}", "text": f"the {shape} is red", "label": "red"})
        rows.append({"id": f"b{i}", "text": f"a blue {shape} on the left", "label": "<i>blue</i>"})
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store, sav_dir = tmp_path / "store", tmp_path / "sav"
    assert main(["extract", str(data), "--model", "tiny:llama", "--out", str(store), "--quiet"]) == 0
    assert main(["fit", str(store), "--out", str(sav_dir), "--k", "3", "--quiet"]) == 0
    capsys.readouterr()
    sav = SAV.load(sav_dir)
    feats = savlens.open_store(store)
    for source, extra in ((store, []), (data, ["--model", "tiny:llama"])):
        out = tmp_path / f"{Path(source).stem}.html"
        code = main(["report", str(sav_dir), str(source), "--out", str(out), "--json", "--quiet", *extra])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        payload = json.loads(printed.out)
        assert payload["heads"] == [str(h) for h in sav.heads_]
        assert payload["accuracy"] == pytest.approx(sav.score(feats)) and payload["n_examples"] == len(rows)
        page = blob(out.read_text())
        assert page["classes"] == ["<i>blue</i>", "red"]
        texts = {e["text"] for e in page["examples"]}
        assert texts == ({None} if source == store else {r["text"] for r in rows})
    assert main(["report", str(sav_dir), str(store), "--out", str(tmp_path / "x.html"), "--max-examples", "0"]) == 2
    assert "max_examples" in capsys.readouterr().err


# ---- the tiny VLM: attention over the images, and the page in a browser ----------------------------------


@pytest.fixture(scope="module")
def vlm_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A report of an SAV on the tiny VLM (easy-VQA red / blue / green, 4 shots, 9 test questions): one test
    label deliberately wrong, one class named like a script, one question with an HTML tag in it."""
    from savlens.datasets import few_shot_split, load_easy_vqa

    model = savlens.load("tiny-vlm")
    keep = ("red", "blue", "green")

    def relabel(e: savlens.Example) -> savlens.Example:
        return dataclasses.replace(e, label=XSS_LABEL if e.label == "green" else e.label)

    train, _ = few_shot_split([relabel(e) for e in load_easy_vqa("train", "color") if e.label in keep], 4, 0)
    test, _ = few_shot_split([relabel(e) for e in load_easy_vqa("test", "color") if e.label in keep], 3, 0)
    test[0] = dataclasses.replace(test[0], label="blue" if test[0].label != "blue" else "red")  # a wrong label
    test[1] = dataclasses.replace(test[1], text=XSS_TEXT)
    sav = SAV(k=4).fit(savlens.extract(model, train, progress=False))
    path = write_report(tmp_path_factory.mktemp("report") / "report.html", sav, test, model=model)
    return {"model": model, "sav": sav, "test": test, "path": path, "data": blob(path.read_text())}


@pytest.mark.slow
def test_attention_in_the_report_is_the_heads_attention_on_the_image(vlm_report: dict[str, Any]) -> None:
    from savlens.causal import attention_shares

    data, sav, test = vlm_report["data"], vlm_report["sav"], vlm_report["test"]
    assert data["attention"] is True and data["examples"][0]["index"] == 0 and data["examples"][0]["correct"] is False
    shown = [test[e["index"]] for e in data["examples"]]
    shares = attention_shares(vlm_report["model"], shown, sav.heads_, prompt_template=None)
    for row, e in enumerate(data["examples"]):
        assert e["image_share"] == pytest.approx(shares.image[row].tolist(), abs=1e-4)
        (url,) = e["images"]
        image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,"))))
        assert image.size == test[e["index"]].load_images()[0].size  # 64 x 64: inlined as is
        for k, per_image in enumerate(e["grids"]):
            (media,) = per_image  # one image: the tiny VLM's 2 x 2 token grid, one view, one panel
            ((grid,),) = [v["panels"] for v in media["views"]]
            assert (grid["rows"], grid["cols"], grid["box"], media["off"]) == (2, 2, [0, 0, 1, 1], 0)
            assert sum(grid["w"]) == pytest.approx(e["image_share"][k], abs=1e-3)  # the grid is all its tokens


@pytest.mark.slow
def test_the_page_in_headless_chromium(vlm_report: dict[str, Any], tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium; CI installs it via README's test command)")
    pytest.importorskip("websocket", reason="websocket-client (the test extra) drives chromium")
    from savlens.testing.browser import Browser

    data, sav = vlm_report["data"], vlm_report["sav"]
    first, second = str(sav.heads_[0]), str(sav.heads_[1])
    unselected = next(
        f"L{layer}H{h}" for layer in data["layers"] for h in range(data["n_heads"])
        if f"L{layer}H{h}" not in {str(x) for x in sav.heads_}
    )  # fmt: skip
    shown = """(() => { const r = document.getElementById('savlens-report');
        const cards = [...r.querySelectorAll('.sr-example')];
        return {head: r.dataset.head, title: r.querySelector('.sr-head-title').textContent,
                cards: cards.map(c => [c.dataset.index, c.className, c.querySelector('.sr-verdict').textContent]),
                overlays: r.querySelectorAll('.sr-overlay > div').length,
                active: [...r.querySelectorAll('.sr-cell.sr-active')].map(c => c.dataset.head),
                marked: [...r.querySelectorAll('.sr-cell.sr-selected')].map(c => c.dataset.head)}; })()"""
    with Browser(width=1200, height=900) as b:
        b.open(vlm_report["path"].as_uri())
        before = b.evaluate(shown)
        assert b.errors == [], b.errors
        assert before["head"] == first and before["active"] == [first] and before["title"].startswith(first)
        assert sorted(before["marked"]) == sorted(str(h) for h in sav.heads_)
        assert before["cards"][0][0] == "0" and "sr-wrong" in before["cards"][0][1]  # the wrong one first
        assert before["overlays"] == 4 * len(data["examples"])  # a 2 x 2 grid over every image
        b.click(f".sr-cell[data-head='{second}']")  # a real mouse click on the map
        after = b.evaluate(shown)
        assert after["head"] == second and after["active"] == [second] and after["title"].startswith(second)
        votes = [data["classes"][e["votes"][1]] for e in data["examples"]]
        assert [c[2].split("this head votes: ")[1] for c in after["cards"]] == votes
        b.click(f".sr-cell[data-head='{unselected}']")
        off = b.evaluate(shown)
        assert off["head"] == unselected and "not selected" in off["title"] and off["cards"] == []
        b.click(f".sr-cell[data-head='{first}']")
        text = b.evaluate("document.body.innerText")
        assert XSS_LABEL in text and XSS_TEXT in text  # shown as text ...
        assert b.evaluate("window.__xss === undefined && !document.querySelector('img[src=\"x\"]')")  # ... not run
        b.evaluate("window.scrollTo(0, 0)")
        png = b.screenshot()
        assert b.errors == [], b.errors
        # notebook outputs: several fragments on one page, each drawing itself and answering its own clicks
        feats, _ = toy(flip=())
        small = SAV(k=2).fit(feats)
        cells = [sav._repr_html_(), small._repr_html_(), small.votes(feats)._repr_html_()]
        notebook = tmp_path / "notebook.html"
        head = "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        notebook.write_text(head + "".join(c or "" for c in cells) + "</body></html>")
        b.open(notebook.as_uri())
        roots = "[...document.querySelectorAll('.savlens-report')].map(r => [r.id, r.dataset.head])"
        drawn = b.evaluate(roots)
        assert [d[1] for d in drawn] == [first, str(small.heads_[0]), str(small.heads_[0])] and b.errors == []
        root_id = drawn[1][0]
        b.click(f"#{root_id} .sr-cell[data-head='{small.heads_[1]}']")
        assert [d[1] for d in b.evaluate(roots)] == [first, str(small.heads_[1]), str(small.heads_[0])]
        assert b.errors == [], b.errors
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    image = Image.open(shot).convert("RGB")
    assert image.size[0] >= 800 and len(image.getcolors(1 << 20) or []) > 50  # not blank: map, images, text


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava_onevision", "internvl"])
def test_the_page_draws_real_grids_and_video_frames_in_chromium(family: str, tmp_path: Path) -> None:
    """On a family with views / tiles and newline tokens, an image and a video example: the page draws every
    panel's cells over its picture (a video: one picture per frame panel), with no console error."""
    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium; CI installs it via README's test command)")
    pytest.importorskip("websocket", reason="websocket-client (the test extra) drives chromium")
    from conftest import tiny

    from savlens.testing.browser import Browser

    model = tiny(family)
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 255, (56, 112, 3), dtype=np.uint8) for _ in range(6)]
    train = [savlens.Example("what is it ?", images=[p], label="ab"[i % 2], id=f"t{i}") for i, p in enumerate(pics)]
    clip = rng.integers(0, 255, (4, 40, 72, 3), dtype=np.uint8)
    test = [
        savlens.Example("what is it ?", images=[pics[0]], label="a", id="img"),
        savlens.Example("what moves ?", videos=[clip], label="b", id="vid"),
    ]
    sav = SAV(k=2).fit(savlens.extract(model, train, progress=False))
    path = write_report(tmp_path / "report.html", sav, test, model=model)
    data = blob(path.read_text())
    cards = {e["id"]: e for e in data["examples"]}
    assert len(cards["vid"]["frames"]) == 1 and len(cards["vid"]["frames"][0]) == 4  # the sampled frames
    views = {i: [v for m in e["grids"][0] for v in m["views"]] for i, e in cards.items()}
    assert len(views["img"]) == 2 and {v["frame"] for v in views["vid"]} <= set(range(4))
    cells = sum(p["rows"] * p["cols"] for vs in views.values() for v in vs for p in v["panels"])
    pictures = sum(len(vs) for vs in views.values())
    with Browser(width=1200, height=900) as b:
        b.open(path.as_uri())
        drawn = b.evaluate(
            "[document.querySelectorAll('.sr-overlay > div').length, document.querySelectorAll('.sr-img').length]"
        )
        assert b.errors == [], b.errors
    assert drawn == [cells, pictures]
