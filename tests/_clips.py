"""Short synthetic video clips for the video tests, written with PyAV (the decoder savlens reads them with)."""

from pathlib import Path

import numpy as np


def moving_square(n_frames: int = 8, size: tuple[int, int] = (64, 48), square: int = 16) -> np.ndarray:
    """``n_frames height width 3`` uint8 frames: a white square moving left to right over black."""
    w, h = size
    frames = np.zeros((n_frames, h, w, 3), np.uint8)
    for t in range(n_frames):
        x = int(round(t * (w - square) / max(1, n_frames - 1)))
        frames[t, (h - square) // 2 : (h + square) // 2, x : x + square] = 255
    return frames


def write_clip(path: Path, frames: np.ndarray, fps: int = 4) -> Path:
    """Write ``frames`` to ``path`` (MPEG-4 part 2 in an .mp4 container) with PyAV."""
    import av

    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
