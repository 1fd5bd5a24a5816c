"""Image and video tokens mapped back to (image, tile or frame, row, column): a picture whose only bright region
is known lands on the tokens the map says cover it, per family, and the overlay paints those cells.

The vision towers of the tiny models are made local (every vision attention output projection zeroed, so each
token sees only its own patches); the tokens whose layer-0 input then differs between a black picture and the same
picture with a white square are the ones whose patches touch the square. The map must put every cell that lies
inside the square among them, and none of them outside the square grown by one cell (the processors' resampling
bleeds about one cell). A wrong row / column order, a wrong tile offset or a missing newline token fails it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import core_fast
from torch import nn

import savlens
from savlens.errors import ArgumentError
from savlens.models.grids import MediaGrid, token_grids
from savlens.plot.grid import attention_on_grid, off_grid_weight, paint
from savlens.testing.tiny import build_tiny

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "glm4v", "llava_onevision1_5")
#: every tiny family with a map (the tiny VLM of savlens.zoo: its own test)
IMAGE_FAMILIES = (
    *QWEN,
    *("llava_onevision", "llava_next", "internvl", "aya_vision", "mistral3", "idefics3", "smolvlm"),
    *("llava", "paligemma", "janus", "deepseek_vl", "gemma3"),
)
VIDEO_FAMILIES = (*QWEN, "llava_onevision", "internvl", "smolvlm")
SIZE = (112, 56)  # (width, height): wide, so rows and columns cannot be swapped unnoticed
SQUARE = (70, 0, 112, 28)  # in the top-right quarter, off the middle tile border: (left, top, right, bottom)
VIDEO_SQUARE = (56, 0, 112, 28)  # the top-right quarter: a whole cell of the frames squashed to 2 x 2 tokens


def _local(family: str) -> savlens.Model:
    tm = build_tiny(family)
    zeroed = 0
    for name, mod in tm.model.named_modules():
        parts = name.split(".")
        vision = any(p in ("vision_tower", "visual", "vision_model", "vision") for p in parts)
        attn = any("attn" in p or "attention" in p for p in parts[:-1])
        out = parts[-1] in ("out_proj", "o_proj", "proj", "dense", "projection_layer")
        if vision and attn and out and isinstance(mod, nn.Linear):
            with torch.no_grad():
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
            zeroed += 1
    assert zeroed >= 2, f"{family}: found {zeroed} vision attention output projections"
    return savlens.wrap(tm.model, tm.processor, model_id=f"local-{family}")


def _changed(model: savlens.Model, a: savlens.Example, b: savlens.Example) -> tuple[torch.Tensor, savlens.Batch]:
    vals = []
    for ex in (a, b):
        batch = savlens.Batch.from_examples(model, [ex])
        with savlens.trace(model, batch) as t:
            r = t.save("blocks.0.hook_resid_pre", positions="all")
        vals.append(r.value[0])
    return (vals[0] - vals[1]).abs().amax(-1) > 0, batch


def _expected(g: MediaGrid, size: tuple[int, int], square: tuple[int, int, int, int], frame: int | None = None):
    """(core, outer, far): token indices whose cell lies inside the square / touches the square grown by one
    cell, and the panels whose box does not meet the square."""
    w, h = size
    x0, y0, x1, y1 = square
    core, outer = set(), set()
    far_panels = set()
    for k, p in enumerate(g.panels):
        bx0, by0, bx1, by1 = p.box[0] * w, p.box[1] * h, p.box[2] * w, p.box[3] * h
        if not (bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0):
            far_panels.add(k)
    for i in range(len(g.positions)):
        box = g.cell_box(i)
        if box is None:
            continue
        p = g.panels[int(g.panel[i])]
        if frame is not None and not p.frame <= frame < p.frame + p.frames:
            continue
        cx0, cy0, cx1, cy1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
        if cx0 >= x0 and cx1 <= x1 and cy0 >= y0 and cy1 <= y1:
            core.add(i)
        cw, ch = cx1 - cx0, cy1 - cy0
        if cx0 - cw < x1 and cx1 + cw > x0 and cy0 - ch < y1 and cy1 + ch > y0:
            outer.add(i)
    return core, outer, far_panels


def _picture(size: tuple[int, int], square: tuple[int, int, int, int] | None) -> np.ndarray:
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    if square is not None:
        x0, y0, x1, y1 = square
        a[y0:y1, x0:x1] = 255
    return a


@pytest.mark.parametrize("family", core_fast(IMAGE_FAMILIES))
def test_a_bright_square_lands_on_the_tokens_the_map_names(family: str) -> None:
    model = _local(family)
    dark, bright = _picture(SIZE, None), _picture(SIZE, SQUARE)
    changed, batch = _changed(
        model, savlens.Example("what is it ?", images=[dark]), savlens.Example("what is it ?", images=[bright])
    )
    (g,) = token_grids(model, batch, 0)
    assert g.kind == "image" and g.size == SIZE
    assert torch.equal(torch.sort(g.positions).values, torch.nonzero(batch.image_mask[0]).flatten())
    got = {i for i in range(len(g.positions)) if changed[g.positions[i]]}
    assert not bool(changed[~batch.image_mask[0]].any())  # a local tower: only image tokens change
    core, outer, far_panels = _expected(g, SIZE, SQUARE)
    assert core, "the square covers no whole cell: the test would be vacuous"
    assert core <= got <= outer, (sorted(got), sorted(core), sorted(outer))
    assert len(outer) < len(g.positions)  # some cells must stay unchanged
    if family in ("internvl", "idefics3", "smolvlm"):  # a tile away from the square is untouched (tile offsets)
        assert far_panels
    assert not {i for i in got if int(g.panel[i]) in far_panels}


def test_llava_onevision_newline_tokens_close_each_anyres_row() -> None:
    model = _local("llava_onevision")
    batch = savlens.Batch.from_examples(model, [savlens.Example("x", images=[_picture(SIZE, SQUARE)])])
    (g,) = token_grids(model, batch, 0)
    base, anyres = g.panels
    assert (base.view, anyres.view) == ("base", "anyres")
    newline = g.panel < 0
    assert int(newline.sum()) == anyres.rows  # one newline token per anyres row
    ends = torch.nonzero(newline).flatten()
    assert torch.equal(ends, base.rows * base.cols + (anyres.cols + 1) * torch.arange(1, anyres.rows + 1) - 1)
    newline_embed = model.hf.model.image_newline
    with savlens.trace(model, batch) as t:
        r = t.save("blocks.0.hook_resid_pre", positions="all")
    torch.testing.assert_close(r.value[0][g.positions[newline]], newline_embed.expand(int(newline.sum()), -1))


@pytest.mark.parametrize("family", core_fast(VIDEO_FAMILIES))
def test_a_square_in_one_frame_lands_on_that_frames_tokens(family: str, tmp_path: Path) -> None:
    model = _local(family)
    frames = np.zeros((4, 56, 112, 3), np.uint8)
    lit = frames.copy()
    lit[2] = _picture(SIZE, VIDEO_SQUARE)
    a = savlens.Example("what is it ?", videos=[frames])
    b = savlens.Example("what is it ?", videos=[lit])
    changed, batch = _changed(model, a, b)
    (g,) = token_grids(model, batch, 0)
    assert g.kind == "video" and batch.video_mask is not None
    assert torch.equal(torch.sort(g.positions).values, torch.nonzero(batch.video_mask[0]).flatten())
    got = {i for i in range(len(g.positions)) if changed[g.positions[i]]}
    core, outer, _ = _expected(g, SIZE, VIDEO_SQUARE, frame=2)
    assert core and core <= got <= outer, (sorted(got), sorted(core), sorted(outer))
    assert {g.panels[int(g.panel[i])].frame for i in got} == {
        next(p.frame for p in g.panels if p.frame <= 2 < p.frame + p.frames)
    }


def test_paint_fills_exactly_the_cell_box_and_draws() -> None:
    model = _local("qwen2_vl")
    batch = savlens.Batch.from_examples(model, [savlens.Example("x", images=[_picture(SIZE, SQUARE)])])
    (g,) = token_grids(model, batch, 0)
    for i in range(len(g.positions)):
        w = torch.zeros(batch.seq_len)
        w[g.positions[i]] = 0.5
        (m,) = paint(w, g).values()
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(g.cell_box(i), SIZE * 2))  # type: ignore[arg-type]
        want = np.zeros((SIZE[1], SIZE[0]), np.float32)
        want[y0:y1, x0:x1] = 0.5
        assert np.array_equal(m, want)
    w = torch.rand(batch.seq_len)
    (m,) = paint(w, g).values()
    cell_area = (SIZE[0] // 4) * (SIZE[1] // 2)  # 2 x 4 cells of 28 x 28
    assert np.isclose(m.sum(), float(w[g.positions].sum()) * cell_area, rtol=1e-5)
    assert off_grid_weight(w, g) == 0.0
    fig = attention_on_grid(w, model, batch, picture=_picture(SIZE, SQUARE))
    assert np.allclose(fig.axes[0].images[1].get_array(), m)
    with pytest.raises(ArgumentError, match="media=3"):
        attention_on_grid(w, model, batch, media=3)


def test_video_overlay_is_a_strip_of_frames() -> None:
    model = _local("llava_onevision")
    frames = np.zeros((3, 56, 112, 3), np.uint8)
    batch = savlens.Batch.from_examples(model, [savlens.Example("x", videos=[frames])])
    (g,) = token_grids(model, batch, 0)
    w = torch.zeros(batch.seq_len)
    w[g.positions] = 1.0
    maps = paint(w, g)
    assert list(maps) == ["frame 0", "frame 1", "frame 2"]
    assert all(np.allclose(m, 1.0) for m in maps.values())  # each frame's cells tile the whole frame once
    assert off_grid_weight(w, g) == 1.0  # the newline token after the frames
    fig = attention_on_grid(w, model, batch, picture=frames)
    assert len([a for a in fig.axes if a.images]) == 3 + 0 and "newline" in fig._suptitle.get_text()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["tiny-vlm-random", "fast_vlm"])
def test_convolutional_towers_change_most_at_the_mapped_cell(name: str) -> None:
    """A CNN tower (the zoo's tiny VLM, FastVLM) is not local, but the token whose input changes most when a
    square lights up is the one the map puts over the square."""
    if name == "fast_vlm":
        tm = build_tiny(name)
        model = savlens.wrap(tm.model, tm.processor, model_id=name)
    else:
        model = savlens.load(name)
    square = (56, 0, 112, 28)  # the top-right quarter
    dark, bright = _picture(SIZE, None), _picture(SIZE, square)
    vals, batch = [], None
    for pic in (dark, bright):
        batch = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", images=[pic])])
        with savlens.trace(model, batch) as t:
            r = t.save("blocks.0.hook_resid_pre", positions="all")
        vals.append(r.value[0])
    assert batch is not None
    (g,) = token_grids(model, batch, 0)
    change = (vals[0] - vals[1]).norm(dim=-1)[g.positions]
    core, _, _ = _expected(g, SIZE, square)
    assert core and int(change.argmax()) in core


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl", "smolvlm"])
def test_grids_of_a_row_do_not_depend_on_the_other_rows(family: str) -> None:
    """Flat processor outputs (grid_thw, image_sizes) are indexed past the earlier rows' images and videos."""
    model = _local(family)
    pics = [_picture((112, 56), None), _picture((48, 96), None), _picture((64, 64), None)]
    exs = [
        savlens.Example("two pictures ?", images=pics[:2], id="a"),
        savlens.Example("one picture", images=[pics[2]], id="b"),
    ]
    if model.resolved.spec.videos_with_images:
        exs.append(savlens.Example("a clip", videos=[np.zeros((4, 40, 72, 3), np.uint8)], id="c"))
    batch = savlens.Batch.from_examples(model, exs, padding_side="right")
    for i, ex in enumerate(exs):
        alone = savlens.Batch.from_examples(model, [ex], padding_side="right")
        got, want = token_grids(model, batch, i), token_grids(model, alone, 0)
        assert [(g.kind, g.index, g.size, g.panels) for g in got] == [(g.kind, g.index, g.size, g.panels) for g in want]
        for g, w in zip(got, want):
            assert torch.equal(g.positions, w.positions)  # right padding: the same positions
            assert torch.equal(g.panel, w.panel) and torch.equal(g.row, w.row) and torch.equal(g.col, w.col)
    first, second = (g.panels for g in token_grids(model, batch, 0)[:2])
    if family != "llava_onevision":  # (OneVision gives each image of a multi-image row its 4 x 4 base view)
        assert first != second  # the two images of row a have different layouts: a wrong offset shows


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "internvl", "idefics3"])
def test_a_bright_square_on_the_second_image_of_a_row(family: str) -> None:
    model = _local(family)
    dark, bright = _picture(SIZE, None), _picture(SIZE, SQUARE)
    first = _picture((64, 64), None)
    a, b = (savlens.Example("which ?", images=[first, x]) for x in (dark, bright))
    changed, batch = _changed(model, a, b)
    g0, g1 = token_grids(model, batch, 0)
    assert not bool(changed[g0.positions].any())
    got = {i for i in range(len(g1.positions)) if changed[g1.positions[i]]}
    core, outer, _ = _expected(g1, SIZE, SQUARE)
    assert core and core <= got <= outer, (sorted(got), sorted(core), sorted(outer))


def test_overlay_of_an_eager_attention_pattern_holds_the_image_share() -> None:
    """The overlay of a head's last-token attention (eager ``hook_pattern``) paints exactly the weight on the
    image's cells; with the newline tokens, that is the whole share on the image."""
    tm = build_tiny("llava_onevision", attn_implementation="eager")
    model = savlens.wrap(tm.model, tm.processor, model_id="eager-llava_onevision")
    pic = _picture(SIZE, SQUARE)
    batch = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", images=[pic])])
    with savlens.trace(model, batch) as t:
        pat = t.save("blocks.1.attn.hook_pattern", positions="last")
    weights = pat.value[0, 2, -1]
    (g,) = token_grids(model, batch, 0)
    maps = paint(weights, g)
    share = float(weights[batch.image_mask[0]].sum())
    cell_area = {v: (SIZE[0] * SIZE[1]) / (p.rows * p.cols) for p in g.panels for v in [p.view]}
    painted = sum(float(m.sum()) / cell_area[v] for v, m in maps.items())
    assert share > 0.01
    assert np.isclose(painted + off_grid_weight(weights, g), share, rtol=1e-4)
