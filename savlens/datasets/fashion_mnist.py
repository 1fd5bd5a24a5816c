"""Load Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files) as image examples."""

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from savlens.errors import InputError, LoadError
from savlens.example import Example

__all__ = [
    "APT_INSTALL_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "read_idx",
]

APT_INSTALL_FASHION_MNIST = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names by label index, as in the Fashion-MNIST README."""

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array.

    Header: two zero bytes, a dtype code, the number of dims, then each dim as a big-endian uint32.

    Raises:
        LoadError: a missing file, a bad header, or a size that disagrees with the header.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.idx"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
        >>> read_idx(p).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise LoadError(f"read_idx(): cannot read {str(path)!r} ({e}).") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise LoadError(f"read_idx(): {str(path)!r} does not start with an IDX header.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[raw[2]]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise LoadError(f"read_idx(): {str(path)!r} has {len(raw)} bytes; its header {shape} implies {expected}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(
    split: str = "train",
    text: str = "What is shown in this image?",
    limit: int | None = None,
    root: str | os.PathLike[str] = FASHION_MNIST_DIR,
) -> list[Example]:
    """Load Fashion-MNIST as single-image examples with class-name labels.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        text: the text of every example (the question asked about the image).
        limit: keep only the first ``limit`` images of the split.
        root: the folder with the IDX files (Debian: ``/usr/share/datasets/fashion-mnist``).

    Returns:
        Examples in file order: one 28x28 greyscale (mode ``"L"``) PIL image, label the class name from
        :data:`FASHION_MNIST_CLASSES`, id ``"fashion-mnist/<split>/<index>"``, ``meta["class_index"]``.

    Raises:
        LoadError: the data is not installed (names the apt-get command) or a file is corrupt.
        InputError: an unknown split.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise InputError(f"load_fashion_mnist(split={split!r}): expected 'train' or 'test'.")
    root = Path(root)
    images_file = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_file = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_file.is_file() or not labels_file.is_file():
        raise LoadError(
            f"load_fashion_mnist(): no Fashion-MNIST files in {str(root)!r}; install them with\n"
            f"    {APT_INSTALL_FASHION_MNIST}"
        )
    images = read_idx(images_file)
    labels = read_idx(labels_file)
    if images.ndim != 3 or labels.shape != images.shape[:1] or int(labels.max(initial=0)) >= 10:
        raise LoadError(
            f"load_fashion_mnist(): {images_file.name} {images.shape} and {labels_file.name} {labels.shape} "
            f"do not form an image set with 10 classes."
        )
    n = len(labels) if limit is None else min(limit, len(labels))
    return [
        Example(
            text=text,
            images=[Image.fromarray(images[i])],
            label=FASHION_MNIST_CLASSES[int(labels[i])],
            id=f"fashion-mnist/{split}/{i}",
            meta={"class_index": int(labels[i]), "split": split, "index": i},
        )
        for i in range(n)
    ]
