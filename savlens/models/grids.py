"""Where each image and video token comes from: (image or video, tile or frame, row, column) per family.

A VLM writes each image as one or more *panels* of tokens: LLaVA-OneVision a low-resolution base view and an
anyres grid (its tiles stitched, unpadded, one newline token closing each row); InternVL and Idefics3 / SmolVLM
tiles of a resized image plus a thumbnail / global view; Qwen-VL one grid of 2x2-merged patches (one per pair of
frames in a video); Gemma 3 one pooled square. :func:`token_grids` reads the layout from the processor's
outputs kept in the batch (``image_grid_thw``, ``video_grid_thw``, ``image_sizes``, the tile tokens in
``input_ids``) and the original sizes in ``batch.meta["media"]``, and returns, per image and video of a row,
each token's panel, row and column, and each panel's box on the original picture. The table of docs/positions.md
("Token grids") says what each family's map is.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from savlens.errors import ArgumentError, PositionError

if TYPE_CHECKING:
    from savlens.inputs import Batch
    from savlens.loading import Model

#: a panel's box on the original picture: (left, top, right, bottom) as fractions of its width and height
Box = tuple[float, float, float, float]
FULL: Box = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Panel:
    """One grid of tokens: ``rows x cols`` cells over ``box`` of the picture (frames ``frame`` to
    ``frame + frames - 1`` of a video).

    ``view`` groups panels drawn on one picture (``"base"``, ``"anyres"``, ``"tiles"``, ``"thumbnail"``,
    ``"global"``, ``"image"``, ``"frame 3"``).
    """

    rows: int
    cols: int
    box: Box = FULL
    frame: int = 0
    view: str = "image"
    frames: int = 1

    def cell_box(self, row: int, col: int) -> Box:
        x0, y0, x1, y1 = self.box
        w, h = (x1 - x0) / self.cols, (y1 - y0) / self.rows
        return (x0 + col * w, y0 + row * h, x0 + (col + 1) * w, y0 + (row + 1) * h)


@dataclass(frozen=True)
class MediaGrid:
    """The tokens of one image or video of a batch row.

    Attributes:
        kind: ``"image"`` or ``"video"``.
        index: which image (video) of the row, in prompt order.
        size: ``(width, height)`` of the original picture (a video's frames), None where unknown.
        positions: ``n`` sequence positions of its tokens, in order.
        panel, row, col: ``n`` each: the token's panel (index into ``panels``), row and column; ``-1`` for a
            token that is no cell (LLaVA-OneVision's newline tokens).
        panels: the panels.
    """

    kind: str
    index: int
    size: tuple[int, int] | None
    positions: Tensor
    panel: Tensor
    row: Tensor
    col: Tensor
    panels: tuple[Panel, ...]

    def cell_box(self, i: int) -> Box | None:
        """The box of token ``i`` (an index into :attr:`positions`) on the picture; None for a newline token."""
        p = int(self.panel[i])
        return None if p < 0 else self.panels[p].cell_box(int(self.row[i]), int(self.col[i]))


@dataclass(frozen=True)
class _Layout:
    panel: list[int]
    row: list[int]
    col: list[int]
    panels: tuple[Panel, ...]

    def __len__(self) -> int:
        return len(self.panel)


def _grid(panels: list[Panel], newline: bool = False, trailing_newline: bool = False) -> _Layout:
    """Cells of ``panels`` one after the other, row-major; ``newline``: a newline token closes each row of every
    panel but the first; ``trailing_newline``: one newline token after all."""
    pan, row, col = [], [], []
    for k, p in enumerate(panels):
        for r in range(p.rows):
            for c in range(p.cols):
                pan.append(k)
                row.append(r)
                col.append(c)
            if newline and k > 0:
                pan.append(-1)
                row.append(-1)
                col.append(-1)
    if trailing_newline:
        pan.append(-1)
        row.append(-1)
        col.append(-1)
    return _Layout(pan, row, col, tuple(panels))


QWEN_FAMILIES = (
    *("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "qwen3_5_moe", "qwen3_vl_moe", "glm4v"),
    "llava_onevision1_5",
)
IDEFICS_FAMILIES = ("idefics3", "smolvlm")
#: one square grid per image over the whole (resized or padded) image
SQUARE_FAMILIES = ("llava", "paligemma", "janus", "deepseek_vl", "fast_vlm", "gemma3", "tiny_vlm")
#: square grids over the image padded to a square (centred, as the processor pads it)
PADDED_FAMILIES = ("janus", "deepseek_vl")
#: the families :func:`token_grids` maps
MAPPED = (
    *QWEN_FAMILIES,
    *("llava_onevision", "llava_next", "internvl", "aya_vision", "mistral3"),
    *IDEFICS_FAMILIES,
    *SQUARE_FAMILIES,
)


def token_grids(model: "Model", batch: "Batch", row: int) -> list[MediaGrid]:
    """Map each image and video token of batch row ``row`` to its panel, row and column (module docstring).

    Raises:
        PositionError: the row has no image or video token, or the tokens do not add up to the layout the
            processor's outputs describe.
        ArgumentError: a family without a map whose image tokens do not form one square grid per image.
    """
    if not 0 <= row < batch.size:
        raise ArgumentError(f"token_grids: row {row} is out of range for a batch of {batch.size} rows.")
    media = _media(batch)
    items = media[row]
    pos = {
        "image": torch.nonzero(batch.image_mask[row]).flatten(),
        "video": torch.nonzero(batch.video_mask[row]).flatten()
        if batch.video_mask is not None
        else torch.zeros(0, dtype=torch.long),
    }
    if not items:
        if pos["image"].numel() == 0 and pos["video"].numel() == 0:
            raise PositionError(f"token_grids: row {row} of the batch has no image or video token.")
        items = _guess_items(model, batch, row, pos)
    before = {k: sum(1 for r in media[:row] for it in r if it["kind"] == k) for k in ("image", "video")}
    seen = {"image": 0, "video": 0}
    used = {"image": 0, "video": 0}
    out = []
    ids = batch.input_ids[row]
    for it in items:
        kind = it["kind"]
        flat = before[kind] + seen[kind]
        avail = pos[kind][used[kind] :]
        n_images = sum(x["kind"] == "image" for x in items)
        lay = _layout(model, batch, kind, flat, dict(it, row_images=n_images), avail, ids)
        n = len(lay)
        if n > avail.numel():
            raise PositionError(
                f"token_grids: {kind} {seen[kind]} of row {row} needs {n} tokens by the {model.family} layout but "
                f"only {avail.numel()} {kind} tokens are left in the row."
            )
        out.append(
            MediaGrid(
                kind,
                int(it["index"]),
                tuple(it["size"]) if it.get("size") else None,
                avail[:n].clone(),
                torch.tensor(lay.panel),
                torch.tensor(lay.row),
                torch.tensor(lay.col),
                lay.panels,
            )
        )
        seen[kind] += 1
        used[kind] += n
    for kind in ("image", "video"):
        if used[kind] != pos[kind].numel():
            raise PositionError(
                f"token_grids: row {row} has {pos[kind].numel()} {kind} tokens but the {model.family} layout of its "
                f"{kind}s accounts for {used[kind]}."
            )
    return out


def _media(batch: "Batch") -> list[list[dict[str, Any]]]:
    media = batch.meta.get("media")
    if isinstance(media, list) and len(media) == batch.size:
        return media
    return [[] for _ in range(batch.size)]


def _guess_items(model: "Model", batch: "Batch", row: int, pos: dict[str, Tensor]) -> list[dict[str, Any]]:
    """A batch from ``Batch.from_inputs`` (no media list): one item per ``*_grid_thw`` row where the family has
    them, else one image."""
    if batch.size == 1:
        out = []
        for kind in ("image", "video"):
            thw = batch.inputs.get(f"{kind}_grid_thw")
            n = int(thw.shape[0]) if isinstance(thw, Tensor) else int(pos[kind].numel() > 0)
            out += [{"kind": kind, "index": i, "size": None, "frames": 1} for i in range(n)]
        return out
    raise PositionError(
        "token_grids: this batch does not list its images and videos (it was not built by Batch.from_examples); "
        "map one row at a time (a batch of one), or build the batch with savlens.Batch.from_examples."
    )


def _layout(
    model: "Model", batch: "Batch", kind: str, flat: int, item: dict[str, Any], avail: Tensor, ids: Tensor
) -> _Layout:
    fam = model.family
    cfg: Any = model.hf.config
    if fam in QWEN_FAMILIES:
        return _qwen(cfg, batch, kind, flat)
    if fam in ("llava_onevision", "llava_next"):
        return _llava_onevision(cfg, batch, kind, flat, item, downsample=fam == "llava_onevision")
    if fam in ("internvl", "aya_vision"):
        return _got_tiles(model, kind, item, avail)
    if fam in IDEFICS_FAMILIES:
        return _idefics(model, kind, item, avail, ids)
    if fam == "mistral3" and kind == "image":
        return _row_runs(model, avail, ids)
    if fam in SQUARE_FAMILIES and kind == "image":
        n = _runs(avail)[0][1] if avail.numel() else 0
        side = math.isqrt(n)
        if side * side != n:
            raise PositionError(f"token_grids: {fam} image with {n} tokens in a run, not a square grid.")
        return _grid([Panel(side, side, _letterbox(item.get("size")) if fam in PADDED_FAMILIES else FULL)])
    raise ArgumentError(
        f"token_grids: no map of {fam}'s {kind} tokens (mapped: {list(MAPPED)}, videos of the Qwen family, "
        "LLaVA-OneVision, InternVL and SmolVLM); see docs/positions.md, 'Token grids'."
    )


def _letterbox(size: Any) -> Box:
    """The box of a square canvas that holds the image centred (fractions of the image; beyond 0..1 on the
    padded sides)."""
    if not size:
        return FULL
    w, h = size
    if w >= h:
        pad = (w - h) / (2 * h)
        return (0.0, -pad, 1.0, 1.0 + pad)
    pad = (h - w) / (2 * w)
    return (-pad, 0.0, 1.0 + pad, 1.0)


def _row_runs(model: "Model", avail: Tensor, ids: Tensor) -> _Layout:
    """Pixtral (Mistral 3): one run of image tokens per row of merged patches, ``[IMG_BREAK]`` between rows and
    ``[IMG_END]`` after the last; the grid covers the whole (aspect-kept) resized image."""
    brk = getattr(model.processor, "image_break_token", "[IMG_BREAK]")
    brk_id = model.tokenizer.convert_tokens_to_ids(brk)
    rows, cols = 0, 0
    for start, n in _runs(avail):
        if cols and n != cols:
            raise PositionError(f"token_grids: Pixtral rows of {cols} and {n} tokens in one image.")
        rows, cols = rows + 1, n
        end = int(avail[start + n - 1]) + 1
        if end >= ids.numel() or int(ids[end]) != brk_id:
            break
    return _grid([Panel(rows, cols)])


def _qwen(cfg: Any, batch: "Batch", kind: str, flat: int) -> _Layout:
    """Qwen-VL / GLM-4V: ``grid_thw`` patches, merged ``merge x merge``; a video has one panel per ``t``
    (``temporal_patch_size`` frames each)."""
    thw = batch.inputs.get(f"{kind}_grid_thw")
    if not isinstance(thw, Tensor) or flat >= thw.shape[0]:
        raise PositionError(f"token_grids: the batch has no {kind}_grid_thw row for {kind} {flat}.")
    vc = cfg.vision_config
    m = int(vc.spatial_merge_size)
    t, h, w = (int(x) for x in thw[flat])
    tps = int(getattr(vc, "temporal_patch_size", 1) or 1)
    if kind == "image":
        return _grid([Panel(h // m, w // m)])
    return _grid([Panel(h // m, w // m, frame=i * tps, view=f"frame {i * tps}", frames=tps) for i in range(t)])


def _llava_onevision(
    cfg: Any, batch: "Batch", kind: str, flat: int, item: dict[str, Any], downsample: bool = True
) -> _Layout:
    """LLaVA-OneVision / LLaVA-NeXT: the base view (``image_size / patch`` square, the whole image squashed), then
    the anyres grid (tiles stitched, padding removed; OneVision downsamples it past ``anyres_max``), a newline
    token after each of its rows. OneVision's rows with several images: each image's base view and one newline
    token. A video: each frame's grid pooled 2x2 (bilinear), one newline token after all frames."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
    if downsample and "batch_num_images" in batch.inputs and item.get("row_images", 1) > 1:
        # OneVision's multi-image rows: the base view of each image only, then one newline token
        return _grid([Panel(side, side, view="base")], trailing_newline=True)
    if kind == "video":
        ph, pw = math.ceil(side / 2), math.ceil(side / 2)
        frames = int(item.get("frames") or 1)
        return _grid([Panel(ph, pw, frame=f, view=f"frame {f}") for f in range(frames)], trailing_newline=True)
    sizes = batch.inputs.get("image_sizes")
    if not isinstance(sizes, Tensor) or flat >= sizes.shape[0]:
        raise PositionError(f"token_grids: the batch has no image_sizes row for image {flat}.")
    size = sizes[flat]  # (height, width)
    nph, npw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    h, w = unpad_image(torch.zeros(1, nph * side, npw * side), size).shape[1:]
    max_patches = int(str(getattr(cfg, "vision_aspect_ratio", "anyres_max_9")).removeprefix("anyres_max_"))
    ratio = math.sqrt(h * w / (max_patches * side**2))
    if downsample and ratio > 1.1:
        h, w = int(h // ratio), int(w // ratio)
    return _grid([Panel(side, side, view="base"), Panel(int(h), int(w), view="anyres")], newline=True)


def _got_tiles(model: "Model", kind: str, item: dict[str, Any], avail: Tensor) -> _Layout:
    """InternVL / Aya Vision: ``cols x rows`` tiles of the resized image (GOT-OCR2's canvas choice), row-major,
    then a thumbnail of the whole image when there is more than one tile; each tile a square of pixel-shuffled
    tokens. A video (InternVL): one tile per frame."""
    seq = getattr(model.processor, "image_seq_length", None)
    if seq is None:  # Aya Vision: a TILE_k marker before each tile's run
        seq = _runs(avail)[0][1]
    side = math.isqrt(int(seq))
    if kind == "video":
        frames = int(item.get("frames") or 1)
        return _grid([Panel(side, side, frame=f, view=f"frame {f}") for f in range(frames)])
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    ip = model.processor.image_processor
    w, h = item["size"]
    cols, rows = 1, 1
    if getattr(ip, "crop_to_patches", False):
        tile = ip.size
        cols, rows = get_optimal_tiled_canvas(
            (h, w), (tile["height"], tile["width"]), int(ip.min_patches), int(ip.max_patches)
        )
    panels = [
        Panel(side, side, (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows), view="tiles")
        for r in range(rows)
        for c in range(cols)
    ]
    if len(panels) > 1:
        panels.append(Panel(side, side, view="thumbnail"))
    return _grid(panels)


def _idefics(model: "Model", kind: str, item: dict[str, Any], avail: Tensor, ids: Tensor) -> _Layout:
    """Idefics3 / SmolVLM: the tiles of the split image, each run of image tokens after its ``<row_i_col_j>``
    token, then the global view after ``<global-img>`` (a video: one global view per frame); each run a square of
    pixel-shuffled tokens."""
    tok = model.tokenizer
    runs = _runs(avail)
    panels: list[Panel] = []
    used = 0
    tiles: list[tuple[int, int]] = []
    frames = int(item.get("frames") or 1) if kind == "video" else None
    for start, n in runs:
        side = math.isqrt(n)
        marker = str(tok.convert_ids_to_tokens(int(ids[int(avail[start]) - 1])))
        if marker.startswith("<row_"):
            r, c = (int(x) for x in marker.strip("<>").replace("row_", "").replace("col_", "").split("_"))
            tiles.append((r - 1, c - 1))
            panels.append(Panel(side, side, view="tiles"))
        else:
            f = len(panels)
            panels.append(Panel(side, side, frame=f, view=f"frame {f}") if frames else Panel(side, side, view="global"))
        used += n
        if frames is None and not marker.startswith("<row_"):
            break
        if frames is not None and len(panels) == frames:
            break
    if tiles:
        rows, cols = max(r for r, _ in tiles) + 1, max(c for _, c in tiles) + 1
        for k, (r, c) in enumerate(tiles):
            p = panels[k]
            panels[k] = Panel(p.rows, p.cols, (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows), view="tiles")
    return _grid(panels)


def _runs(positions: Tensor) -> list[tuple[int, int]]:
    """(start index, length) of each run of consecutive sequence positions."""
    if positions.numel() == 0:
        return []
    breaks = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), int(positions.numel())]
    return [(s, e - s) for s, e in zip(starts, ends)]
