"""`Example`: one model input (text, zero or more images and videos, an optional label), model-free."""

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from savlens.errors import InputError, VideoError

#: An image as users have it: a PIL image, a path, a ``height width channel`` uint8 numpy array (or ``height
#: width`` grey), or a ``channel height width`` torch tensor (uint8, or float in [0, 1]).
ImageLike = Image.Image | str | os.PathLike[str] | np.ndarray | Any
#: A video as users have it: a path to a video file (decoded with PyAV, through transformers' ``load_video``), a
#: ``frames height width 3`` uint8 array (numpy or torch; a float torch tensor in [0, 1]), or a list of frames
#: (PIL images or ``height width 3`` arrays).
VideoLike = str | os.PathLike[str] | np.ndarray | Sequence[Any] | Any


@dataclass
class Example:
    """One input to a model: text, zero or more images, an optional label and id.

    Attributes:
        text: the user turn's text (put into the prompt template, then the chat template).
        images: PIL images or paths to image files; placed before the text in the user turn.
        videos: video files or frame arrays (:data:`VideoLike`); placed after the images, before the text.
        n_frames: sample this many frames of each video, uniformly (transformers' ``default_sample_indices_fn``);
            None with ``fps`` None: every frame.
        fps: sample this many frames per second of each video file (from the file's own frame rate).
        label: the class label (str or int) for SAV fitting; None when unlabelled.
        id: a unique id (a string); :func:`savlens.Batch.from_examples` numbers examples without one.
        messages: optional full chat messages (``[{"role": ..., "content": ...}]``, HF format) that replace
            the default single user turn; image items (``{"type": "image"}``) take the ``images`` in order.
        meta: free-form extras kept alongside (source file, answer type, ...).

    Example:
        >>> ex = Example("Is the sky blue?", label="yes")
        >>> ex.n_images
        0
    """

    text: str = ""
    images: Sequence[ImageLike] = field(default_factory=list)
    label: Hashable | None = None
    id: str | None = None
    messages: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    videos: Sequence[VideoLike] | VideoLike = field(default_factory=list)
    n_frames: int | None = None
    fps: float | int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError(f"Example.text must be a str; got {type(self.text).__name__}. Convert it with str(...).")
        if isinstance(self.images, (Image.Image, str, os.PathLike)) or _is_array(self.images):
            self.images = [self.images]
        try:
            self.images = list(self.images)
        except TypeError:
            raise InputError(
                f"Example.images must be a list of PIL images or image paths; got {type(self.images).__name__}."
            ) from None
        for i, im in enumerate(self.images):
            if not isinstance(im, (Image.Image, str, os.PathLike)) and not _is_array(im):
                raise InputError(
                    f"image {i} of example {self.id!r} is a {type(im).__name__}; give a PIL image, a path to an "
                    "image file, a height x width x 3 uint8 numpy array or a 3 x height x width torch tensor."
                )
        if self.messages is not None and not (
            isinstance(self.messages, list | tuple) and all(isinstance(m, dict) for m in self.messages)
        ):
            raise InputError(
                f"Example.messages must be a list of dicts ({{'role': ..., 'content': ...}}); "
                f"got {type(self.messages).__name__}."
            )
        if self.id is not None:
            self.id = str(self.id)
        self.videos = _video_list(self.videos, self.id)
        if self.n_frames is not None and (
            isinstance(self.n_frames, bool) or not isinstance(self.n_frames, int) or self.n_frames < 1
        ):
            raise VideoError(f"example {self.id!r}: n_frames must be a positive int; got {self.n_frames!r}.")
        if self.fps is not None and (
            isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0
        ):
            raise VideoError(f"example {self.id!r}: fps must be a positive number; got {self.fps!r}.")
        if self.n_frames is not None and self.fps is not None:
            raise VideoError(
                f"example {self.id!r}: give n_frames (frames per video) or fps (frames per second), not both."
            )

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_videos(self) -> int:
        return len(self.videos)  # type: ignore[arg-type]

    def load_videos(self, example_id: str | None = None) -> list[tuple[np.ndarray, Any]]:
        """Return each video as ``(frames, metadata)``: a ``frames height width 3`` uint8 array of the sampled
        frames and a ``transformers.video_utils.VideoMetadata`` (source frame count and rate, sampled indices).

        Files are decoded by PyAV through ``transformers.video_utils.load_video`` (the decoder and frame sampler
        the HF video processors use); arrays and frame lists are sampled with the same sampler (``n_frames``
        only: an array has no frame rate). Raises :class:`~savlens.errors.VideoError` on a file that cannot be
        decoded, a bad array, or a sampling request the video cannot meet.
        """
        who = example_id if example_id is not None else self.id
        return [
            _load_video(v, f"video {i} of example {who!r}", self.n_frames, self.fps)
            for i, v in enumerate(self.videos)  # type: ignore[arg-type]
        ]

    def load_images(self, example_id: str | None = None) -> list[Image.Image]:
        """Return the images as RGB PIL images, opening paths; raise :class:`InputError` on a bad file.

        Conversions (docs/errors/input-error.md): grey, palette and CMYK images are converted to RGB;
        transparency is composited onto white (as the HF image processors do); 16-bit images (PIL modes
        ``I;16*`` and ``I``) are scaled from 0..65535 to 0..255. Refused: floating-point images (mode ``F``,
        unknown range), images with a zero side, and images over ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
        (checked from the file header, before decoding; set that to None to lift the limit).

        Args:
            example_id: the id to name in messages (default ``self.id``).
        """
        who = example_id if example_id is not None else self.id
        out = []
        for i, im in enumerate(self.images):
            where = f"image {i} of example {who!r}"
            if _is_array(im):
                im = _array_to_image(im, where)
            if not isinstance(im, Image.Image):
                path = Path(im)  # type: ignore[arg-type]
                if not path.is_file():
                    raise InputError(f"{where}: no file at {str(path)!r}; check the path (and the data file's root).")
                try:
                    with Image.open(path) as f:
                        _check_size(f, f"{where} ({str(path)!r})")
                        f.load()
                        im = f.copy()
                except InputError:
                    raise
                except Image.DecompressionBombError as e:
                    raise InputError(
                        f"{where}: {str(path)!r} is too large to decode safely ({e}); downscale it first (or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file)."
                    ) from e
                except Exception as e:  # PIL raises many types on corrupt files
                    raise InputError(
                        f"{where}: cannot read {str(path)!r} as an image ({e}); the file is corrupt, truncated or "
                        "not an image. Re-save or re-download it, or drop this example."
                    ) from e
            else:
                _check_size(im, where)
            out.append(_to_rgb(im, where))
        return out


def _is_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return True
    torch = __import__("sys").modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _array_to_image(x: Any, where: str) -> Image.Image:
    """A numpy ``height width [channel]`` array or a torch ``channel height width`` tensor as a PIL image."""
    if not isinstance(x, np.ndarray):  # a torch tensor: channel first, as torchvision has them
        t = x.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        x = t.numpy()
        if x.dtype.kind == "f":
            if x.size and (x.min() < 0 or x.max() > 1):
                raise InputError(
                    f"{where}: a float tensor must hold values in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                    "undo the normalisation, or give uint8 values."
                )
            x = np.round(x * 255.0).astype(np.uint8)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)):
        raise InputError(
            f"{where}: an array image must be height x width x 3 (or 4, or grey height x width) uint8, or a torch "
            f"tensor 3 x height x width; got shape {tuple(x.shape)} dtype {x.dtype}. A channel-first numpy array "
            "needs .transpose(1, 2, 0); float arrays need np.uint8(255 * x)."
        )
    return Image.fromarray(np.ascontiguousarray(x))


def _check_size(im: Image.Image, where: str) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise InputError(
            f"{where} is {w}x{h} pixels: an image needs at least one pixel on each side; drop or replace it."
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise InputError(
            f"{where} is {w}x{h} = {w * h:,} pixels, over the limit of {int(limit):,} "
            "(PIL.Image.MAX_IMAGE_PIXELS); the processor would shrink it anyway: downscale it first "
            "(or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)."
        )


def _to_rgb(im: Image.Image, where: str) -> Image.Image:
    """Convert to RGB: transparency onto white, 16-bit scaled to 8-bit, floating-point refused."""
    if im.mode == "RGB":
        return im
    if im.mode == "F":
        raise InputError(
            f"{where} is a floating-point image (PIL mode 'F') whose value range is unknown; convert it to "
            "8-bit yourself (e.g. Image.fromarray(np.uint8(255 * x)))."
        )
    if im.mode == "I" or im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64).clip(0, 65535)
        im = Image.fromarray(np.round(arr / 257.0).astype(np.uint8), "L")
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise InputError(f"{where}: PIL cannot convert mode {im.mode!r} to RGB ({e}); convert it yourself.") from e


def _is_frame(x: Any) -> bool:
    return isinstance(x, Image.Image) or (_is_array(x) and getattr(x, "ndim", 0) in (2, 3))


def _video_list(videos: Any, who: str | None) -> list[Any]:
    """``videos`` as a list of videos: one path, one array or one list of frames is one video."""
    if isinstance(videos, (str, os.PathLike)) or (_is_array(videos) and getattr(videos, "ndim", 0) == 4):
        return [videos]
    if _is_array(videos):
        raise VideoError(
            f"example {who!r}: a video array must be frames x height x width x 3; got shape {tuple(videos.shape)}. "
            "One frame is an image: pass it in images=."
        )
    try:
        items = list(videos)
    except TypeError:
        raise VideoError(
            f"Example.videos must be a list of video paths, frame arrays or frame lists; got {type(videos).__name__}."
        ) from None
    if items and all(_is_frame(x) for x in items):
        return [items]  # a list of frames is one video
    for i, v in enumerate(items):
        ok = isinstance(v, (str, os.PathLike)) or (_is_array(v) and getattr(v, "ndim", 0) == 4)
        if not ok and isinstance(v, (list, tuple)):
            ok = bool(v) and all(_is_frame(x) for x in v)
        if not ok:
            desc = type(v).__name__ + (f" of shape {tuple(v.shape)}" if _is_array(v) else "")
            raise VideoError(
                f"video {i} of example {who!r} is a {desc}; give a path to a video file, a frames x height x "
                "width x 3 uint8 array (numpy or torch), or a list of frames (PIL images or height x width x 3 "
                "arrays)."
            )
    return items


def _frames_array(v: Any, where: str) -> np.ndarray:
    """A video given as an array or frame list, as a ``frames height width 3`` uint8 numpy array."""
    if isinstance(v, (list, tuple)):
        frames = [np.asarray(_to_rgb(f, where) if isinstance(f, Image.Image) else _array_to_image(f, where)) for f in v]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise VideoError(f"{where}: its frames differ in size ({sorted(shapes)[:3]}); resize them to one size.")
        return np.stack(frames)
    x = v
    if not isinstance(x, np.ndarray):  # torch
        x = x.detach().cpu().numpy()
        if x.dtype.kind == "f":
            if x.size and (x.min() < 0 or x.max() > 1):
                raise VideoError(
                    f"{where}: a float tensor must hold values in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                    "undo the normalisation, or give uint8 values."
                )
            x = np.round(x * 255.0).astype(np.uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
        hint = " (channel first? use .transpose(0, 2, 3, 1))" if x.ndim == 4 and x.shape[1] == 3 else ""
        raise VideoError(
            f"{where}: a video array must be frames x height x width x 3 uint8 with at least one frame; got shape "
            f"{tuple(x.shape)} dtype {x.dtype}{hint}."
        )
    return np.ascontiguousarray(x)


def _load_video(v: Any, where: str, n_frames: int | None, fps: float | int | None) -> tuple[np.ndarray, Any]:
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    if isinstance(v, (str, os.PathLike)):
        return _decode_file(Path(v), where, n_frames, fps)
    frames = _frames_array(v, where)
    if fps is not None:
        raise VideoError(
            f"{where} is a frame array, which has no frame rate: fps sampling needs a video file; give n_frames."
        )
    meta = VideoMetadata(total_num_frames=int(frames.shape[0]), video_backend="array")
    if n_frames is not None:
        if n_frames > frames.shape[0]:
            raise VideoError(f"{where} has {frames.shape[0]} frames; n_frames={n_frames} asks for more.")
        idx = default_sample_indices_fn(meta, num_frames=n_frames)
        frames = frames[idx]
    else:
        idx = np.arange(frames.shape[0])
    meta.frames_indices = [int(i) for i in idx]
    return frames, meta


def _decode_file(path: Path, where: str, n_frames: int | None, fps: float | int | None) -> tuple[np.ndarray, Any]:
    from transformers.video_utils import load_video

    if not path.is_file():
        raise VideoError(f"{where}: no file at {str(path)!r}; check the path (and the data file's root).")
    try:
        import av  # noqa: F401
    except ImportError:
        raise VideoError(
            f"{where}: reading video files needs PyAV: pip install 'savlens[video]' (or pip install av)."
        ) from None
    try:
        frames, meta = load_video(str(path), num_frames=n_frames, fps=fps, backend="pyav")  # type: ignore[arg-type]
    except ValueError as e:
        if "exceeds total_num_frames" in str(e):
            raise VideoError(f"{where} ({str(path)!r}): {e}") from None
        raise VideoError(_unreadable(where, path, e)) from e
    except Exception as e:  # PyAV raises many types on corrupt files
        raise VideoError(_unreadable(where, path, e)) from e
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoError(f"{where}: {str(path)!r} decoded to no frame; re-encode it or drop this example.")
    if len(meta.frames_indices) != frames.shape[0]:
        raise VideoError(
            f"{where}: {str(path)!r} holds fewer frames ({frames.shape[0]}) than its header states "
            f"({meta.total_num_frames}); re-encode it (ffmpeg -i in.mp4 out.mp4) or drop this example."
        )
    return frames, meta


def _unreadable(where: str, path: Path, e: Exception) -> str:
    return (
        f"{where}: cannot decode {str(path)!r} as a video ({type(e).__name__}: {e}); the file is corrupt, truncated "
        "or not a video. Re-encode or re-download it, or drop this example."
    )
