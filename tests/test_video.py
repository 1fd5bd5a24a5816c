"""Video inputs: decoding and frame sampling by PyAV (through transformers' load_video), the stock video
processors of every tiny family that has one, the "video" positions, batches mixing video, image and text-only
rows (batch-invariant), SAV fit / predict on videos, and the named errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from _clips import moving_square, write_clip
from conftest import core_fast, tiny

import savlens
from savlens.errors import InputError, PositionError, VideoError, VideoNotSupportedError
from savlens.testing.coverage import SDPA_NOT_INVARIANT
from savlens.testing.tiny import RECIPES, build_tiny, sample_images

av = pytest.importorskip("av")

#: every tiny family whose stock processor has a video processor
VIDEO_FAMILIES = tuple(
    f for f, r in RECIPES.items() if r.vlm and getattr(build_tiny(f, n_layers=1).processor, "video_processor", None)
)
BATCH_TOL_FP32 = 2e-5  # as tests/test_trace.py


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-frame 64 x 48 clip at 4 fps: a white square moving left to right."""
    return write_clip(tmp_path_factory.mktemp("video") / "square.mp4", moving_square(8))


def _model(family: str) -> savlens.Model:
    return tiny(family, attn="eager" if family in SDPA_NOT_INVARIANT else "sdpa")


def _mixed(model: savlens.Model, clip: Path) -> list[savlens.Example]:
    """A video row, an image row (where the family takes images beside videos) and a text-only row."""
    exs = [savlens.Example("what is it doing ?", videos=[clip], n_frames=4, id="video")]
    if model.resolved.spec.videos_with_images:
        exs.append(savlens.Example("what color is the circle ?", images=sample_images(1, seed=2), id="image"))
    if RECIPES[model.model_id.removeprefix("tiny-")].text_only_rows:
        exs.append(savlens.Example("hello", id="text"))
    return exs


def _z(model: savlens.Model, batch: savlens.Batch) -> torch.Tensor:
    with savlens.trace(model, batch) as t:
        z = t.save("blocks.*.attn.hook_z")
    return z.value


def test_the_video_families_are_the_ones_the_issue_names() -> None:
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "internvl", "smolvlm", "glm4v"} <= set(
        VIDEO_FAMILIES
    )


# decoding and sampling --------------------------------------------------------------------------------------
def test_file_frames_are_decoded_and_sampled_by_pyav(clip: Path) -> None:
    written = moving_square(8)
    (frames, meta), = savlens.Example("x", videos=[clip], n_frames=4).load_videos()
    assert list(meta.frames_indices) == [0, 2, 4, 6] and meta.total_num_frames == 8 and meta.fps == 4.0
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    # lossy MPEG-4, but each decoded frame is the written one (the square where it was drawn), not another
    err = np.abs(frames.astype(int) - written[[0, 2, 4, 6]].astype(int)).mean(axis=(1, 2, 3))
    wrong = np.abs(frames.astype(int) - written[[6, 4, 2, 0]].astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 3 and wrong.min() > 10
    (by_fps, meta2), = savlens.Example("x", videos=[clip], fps=2).load_videos()
    assert list(meta2.frames_indices) == [0, 2, 4, 6] and np.array_equal(by_fps, frames)
    (every, meta3), = savlens.Example("x", videos=clip).load_videos()
    assert every.shape[0] == 8 and list(meta3.frames_indices) == list(range(8))


def test_frame_arrays_tensors_and_frame_lists_are_one_video() -> None:
    frames = moving_square(6)
    forms = [
        frames,
        torch.from_numpy(frames.copy()),
        torch.from_numpy(frames.copy()).float() / 255,
        list(frames),
        [savlens.example.Image.fromarray(f) for f in frames],
    ]
    for form in forms:
        ex = savlens.Example("x", videos=form, n_frames=3)
        assert ex.n_videos == 1
        (got, meta), = ex.load_videos()
        assert np.array_equal(got, frames[[0, 2, 4]]) and list(meta.frames_indices) == [0, 2, 4]


def test_a_file_and_its_decoded_frames_give_the_same_features(clip: Path) -> None:
    model = tiny("qwen2_vl")
    (frames, _), = savlens.Example("x", videos=[clip], n_frames=4).load_videos()
    a = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", videos=[clip], n_frames=4)])
    b = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", videos=[frames])])
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(_z(model, a), _z(model, b))
    other = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", videos=[frames[::-1].copy()])])
    assert (_z(model, other) - _z(model, a)).abs().max() > 1e-3  # the frames reach the model, in order


# every video family -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", core_fast(VIDEO_FAMILIES))
def test_video_positions_select_the_video_tokens(family: str, clip: Path, tmp_path: Path) -> None:
    model = _model(family)
    exs = _mixed(model, clip)
    batch = savlens.Batch.from_examples(model, exs)
    assert batch.video_mask is not None
    vid, img = batch.video_mask, batch.image_mask
    assert int(vid[0].sum()) > 0 and not bool(img[0].any())  # the video row: video tokens, no image token
    assert not bool(vid[1:].any())
    assert not bool((vid & img).any()) and not bool((vid & batch.text_mask).any())
    assert torch.equal(vid | img | batch.text_mask, batch.attention_mask.bool())
    with savlens.trace(model, batch) as t:
        v = t.save("blocks.0.hook_resid_pre", positions="video")
        full = t.save("blocks.0.hook_resid_pre", positions="all")
    n = int(vid[0].sum())
    assert v.value.shape[1] == n
    assert torch.equal(v.value[0], full.value[0][vid[0]])
    assert torch.count_nonzero(v.value[1:]) == 0
    # the video tokens carry the frames: the mirrored clip changes the layer-0 input there and nowhere else
    mirrored = write_clip(tmp_path / "mirrored.mp4", moving_square(8)[:, :, ::-1].copy())
    other = savlens.Example(exs[0].text, videos=[mirrored], n_frames=4, id="video")
    b2 = savlens.Batch.from_examples(model, [other, *exs[1:]])
    assert torch.equal(b2.video_mask, vid)  # type: ignore[arg-type]
    with savlens.trace(model, b2) as t:
        full2 = t.save("blocks.0.hook_resid_pre", positions="all")
    changed = (full2.value - full.value).abs().amax(-1) > 0
    assert bool(changed[0].any()) and not bool((changed & ~vid).any())


@pytest.mark.parametrize("family", core_fast(VIDEO_FAMILIES))
def test_batches_mixing_video_image_and_text_rows_are_batch_invariant(family: str, clip: Path) -> None:
    model = _model(family)
    exs = _mixed(model, clip)
    batch = savlens.Batch.from_examples(model, exs)
    assert len(set(batch.lengths.tolist())) == len(exs)
    z = _z(model, batch)
    single = torch.cat([_z(model, savlens.Batch.from_examples(model, [e])) for e in exs])
    assert single.abs().max() > 0.5
    assert (z - single).abs().max() <= BATCH_TOL_FP32
    for i, ex in enumerate(exs):
        alone = savlens.Batch.from_examples(model, [ex])
        n = int(alone.video_mask[0].sum()) if alone.video_mask is not None else 0
        assert int(batch.video_mask[i].sum()) == n  # type: ignore[index]


@pytest.mark.parametrize(
    "family", core_fast(tuple(f for f in VIDEO_FAMILIES if not tiny(f).resolved.spec.videos_with_images))
)
def test_families_that_cannot_take_images_beside_videos_say_so(family: str, clip: Path) -> None:
    model = tiny(family)
    exs = [
        savlens.Example("what is it ?", videos=[clip], n_frames=4, id="v"),
        savlens.Example("what is it ?", images=sample_images(1), id="i"),
    ]
    with pytest.raises(VideoError, match="cannot take images and videos in one batch"):
        savlens.Batch.from_examples(model, exs)


# end to end -------------------------------------------------------------------------------------------------
def _colour_clips(tmp: Path) -> list[savlens.Example]:
    """Red and blue squares moving at different heights; the label is the colour."""
    exs = []
    for i, (colour, rgb) in enumerate([(c, v) for c, v in (("red", (255, 0, 0)), ("blue", (0, 0, 255)))] * 4):
        frames = moving_square(8, size=(64, 48), square=12 + 2 * (i // 2))
        frames = (frames // 255) * np.array(rgb, np.uint8)
        path = write_clip(tmp / f"{i}.mp4", frames)
        exs.append(savlens.Example("what color is the square ?", videos=[path], n_frames=4, label=colour, id=str(i)))
    return exs


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_videos_extract_fit_and_predict_end_to_end(family: str, tmp_path: Path) -> None:
    model = tiny(family)
    exs = _colour_clips(tmp_path)
    train, test = exs[:6], exs[6:]
    feats = savlens.extract(model, exs, batch_size=3, progress=False)
    assert feats.labels == [e.label for e in exs]
    for i, ex in enumerate(exs[:2]):  # batched extraction equals each clip alone
        alone = savlens.extract(model, [ex], progress=False)
        torch.testing.assert_close(feats.z[i], alone.z[0], atol=BATCH_TOL_FP32, rtol=0)
    sav = savlens.SAV(k=4).fit_model(model, train, batch_size=3)
    assert sav.predict(sav.extract(model, train)) == [e.label for e in train]
    assert sav.predict(sav.extract(model, test)) == [e.label for e in test]
    # the same SAV on the stored features agrees with the model-driven call
    assert sav.predict(feats.subset(list(range(6, 8)))) == [e.label for e in test]


# errors -----------------------------------------------------------------------------------------------------
def test_a_family_without_video_is_a_named_error(clip: Path) -> None:
    for family in ("llama", "llava"):
        with pytest.raises(VideoNotSupportedError, match="takes no video"):
            savlens.Batch.from_examples(tiny(family), [savlens.Example("hi", videos=[clip])])


def test_bad_videos_are_named_errors(tmp_path: Path, clip: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="cannot decode .* as a video"):
        savlens.Example("x", videos=[bad]).load_videos()
    with pytest.raises(VideoError, match="no file at"):
        savlens.Example("x", videos=[tmp_path / "missing.mp4"]).load_videos()
    with pytest.raises(VideoError, match="exceeds total_num_frames=8"):
        savlens.Example("x", videos=[clip], n_frames=9).load_videos()
    with pytest.raises(VideoError, match="channel first"):
        savlens.Example("x", videos=np.zeros((4, 3, 8, 8), np.uint8)).load_videos()
    with pytest.raises(VideoError, match="frames x height x width x 3 uint8"):
        savlens.Example("x", videos=np.zeros((4, 8, 8, 3), np.float32)).load_videos()
    with pytest.raises(VideoError, match="One frame is an image"):
        savlens.Example("x", videos=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(VideoError, match="differ in size"):
        savlens.Example("x", videos=[[np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)]]).load_videos()
    with pytest.raises(VideoError, match="is a int"):
        savlens.Example("x", videos=[3])
    with pytest.raises(VideoError, match="not both"):
        savlens.Example("x", videos=[clip], n_frames=2, fps=1.0)
    with pytest.raises(VideoError, match="n_frames must be a positive int"):
        savlens.Example("x", videos=[clip], n_frames=0)
    with pytest.raises(VideoError, match="no frame rate"):
        savlens.Example("x", videos=moving_square(4), fps=1.0).load_videos()
    assert issubclass(VideoNotSupportedError, VideoError) and issubclass(VideoError, InputError)


def test_a_row_with_images_and_video_on_a_family_that_cannot_tell_them_apart(clip: Path) -> None:
    model = tiny("internvl")  # writes video frames with its image token, and no type ids
    ex = savlens.Example("what is it ?", images=sample_images(1), videos=[clip], n_frames=2)
    with pytest.raises(VideoError, match="cannot be told from its image tokens"):
        savlens.Batch.from_examples(model, [ex])
    both = savlens.Batch.from_examples(tiny("qwen2_vl"), [ex])  # type ids tell them apart
    assert both.video_mask is not None and int(both.video_mask.sum()) > 0 and int(both.image_mask.sum()) > 0


def test_video_positions_without_videos_is_a_position_error() -> None:
    model = tiny("qwen2_vl")
    batch = savlens.Batch.from_examples(model, [savlens.Example("what is it ?", images=sample_images(1))])
    with pytest.raises(PositionError, match="no row of this batch has video tokens"), savlens.trace(model, batch) as t:
        t.save("blocks.0.attn.hook_z", positions="video")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_from_inputs_finds_the_video_tokens(family: str, clip: Path) -> None:
    model = tiny(family)
    ex = savlens.Example("what is it ?", videos=[clip], n_frames=4)
    ref = savlens.Batch.from_examples(model, [ex])
    ((frames, meta),) = ex.load_videos()
    enc = model.processor(
        text=ref.prompts, videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt"
    )
    batch = savlens.Batch.from_inputs(model, enc)
    assert batch.video_mask is not None and torch.equal(batch.video_mask, ref.video_mask)  # type: ignore[arg-type]
    assert torch.equal(batch.image_mask, ref.image_mask)
    assert torch.equal(_z(model, batch), _z(model, ref))
