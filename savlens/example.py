"""`Example`: one model input (text, zero or more images, an optional label), model-free."""

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from savlens.errors import InputError

ImageLike = Image.Image | str | os.PathLike[str]


@dataclass
class Example:
    """One input to a model: text, zero or more images, an optional label and id.

    Attributes:
        text: the user turn's text (put into the prompt template, then the chat template).
        images: PIL images or paths to image files; placed before the text in the user turn.
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

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError(f"Example.text must be a str; got {type(self.text).__name__}.")
        if isinstance(self.images, (Image.Image, str, os.PathLike)):
            self.images = [self.images]
        self.images = list(self.images)
        if self.id is not None:
            self.id = str(self.id)

    @property
    def n_images(self) -> int:
        return len(self.images)

    def load_images(self) -> list[Image.Image]:
        """Return the images as RGB PIL images, opening paths; raise :class:`InputError` on a bad file."""
        out = []
        for i, im in enumerate(self.images):
            if not isinstance(im, Image.Image):
                path = Path(im)
                if not path.is_file():
                    raise InputError(f"image {i} of example {self.id!r}: no file at {str(path)!r}.")
                try:
                    with Image.open(path) as f:
                        f.load()
                        im = f.copy()
                except Exception as e:  # PIL raises many types on corrupt files
                    raise InputError(
                        f"image {i} of example {self.id!r}: cannot read {str(path)!r} as an image ({e})."
                    ) from e
            if im.mode != "RGB":
                im = im.convert("RGB")
            out.append(im)
        return out
