"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman, 2017), sized for 64 x 64 CPU training.

What is kept from the reference (kinetics-i3d `i3d.py`):
- units of Conv3d (no bias) + BatchNorm + ReLU, every k x k kernel a k x k x k one;
- the Inception block: four concatenated branches 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 |
  3x3x3 max-pool (stride 1) -> 1x1x1;
- the schedule of pools: spatial-only 1x3x3 pooling early, then 3x3x3 stride 2 and 2x2x2
  stride 2 (÷8 in time, ÷32 in space overall), Mixed_3b-3c, 4b-4f, 5b-5c;
- Mixed_5c outputs 384 + 384 + 128 + 128 = 1024 channels: the 1024-d feature, globally pooled
  (adaptively: the reference's fixed 2x7x7 average pool assumes 224-px input).

What is changed, and why: the 7x7x7 stride-2 stem becomes a (3, 7, 7) kernel with stride
(2, 4, 4), which also takes the place of the first 1x3x3 max-pool (the reference reaches 1/4
resolution after stem + pool too). On 2 CPU cores the first layer's resolution dominates the
cost (docs/design.md: 8 samples/s with a full-resolution 7x7 stem). All widths before
Mixed_5c are scaled by `width` (the reference is width 1.0).

Shapes for the default input (B, 15, 32, 64, 64):
  stem          (B,  16, 16, 16, 16)
  conv 2b, 2c   (B,  48, 16, 16, 16)
  pool 1x3x3    (B,  48, 16,  8,  8)   Mixed_3b, 3c -> 120 channels: the grid (stride 2, 8, 8)
  pool 3x3x3/2  (B, 120,  8,  4,  4)   Mixed_4b..4f -> 208 channels
  pool 2x2x2/2  (B, 208,  4,  2,  2)   Mixed_5b -> 208, Mixed_5c -> 1024
  pool          (B, 1024)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import ConvBNReLU, init_weights
from trajvid.params import ParamsError, check_positive

# Inception branch widths of the reference, per block: (b0, b1 reduce, b1, b2 reduce, b2, b3).
INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


@dataclass(frozen=True)
class I3DConfig(BackboneConfig):
    feature_dim: int = 1024  # Mixed_5c's output channels, split 3:3:1:1 like 384+384+128+128
    width: float = 0.25  # multiplier of the reference's widths before Mixed_5c
    stem_kernel: tuple[int, int, int] = (3, 7, 7)
    stem_stride: tuple[int, int, int] = (2, 4, 4)
    dropout: float = 0.0

    @classmethod
    def tiny(cls) -> I3DConfig:
        return cls(width=0.125)

    def check(self, path: str) -> None:
        super().check(path)
        check_positive(self, path, "width", "stem_kernel", "stem_stride")
        if self.feature_dim < 8:
            raise ParamsError(f"{path}.feature_dim={self.feature_dim} is not allowed: Mixed_5c's four branches need >= 8")


def unit3d(c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1)) -> ConvBNReLU:
    """The reference's Unit3D: Conv3d (no bias) -> BatchNorm (eps 1e-3, as in kinetics-i3d) -> ReLU."""
    return ConvBNReLU(c_in, c_out, kernel, stride, eps=1e-3)


class InceptionBlock(nn.Module):
    """Four branches, concatenated on channels: out = b0 + b1 + b2 + b3 channels."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        b0, b1r, b1, b2r, b2, b3 = widths
        self.branch0 = unit3d(c_in, b0)
        self.branch1 = nn.Sequential(unit3d(c_in, b1r), unit3d(b1r, b1, (3, 3, 3)))
        self.branch2 = nn.Sequential(unit3d(c_in, b2r), unit3d(b2r, b2, (3, 3, 3)))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), unit3d(c_in, b3))
        self.out_channels = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


def _scaled(widths: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(max(4, round(w * factor)) for w in widths)


class I3D(FeatureExtractor):
    Config = I3DConfig
    channels_last = True

    def __init__(self, config: I3DConfig = I3DConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        w = config.width
        c_stem, c_2c = max(8, round(64 * w)), max(8, round(192 * w))
        layers: list[nn.Module] = [
            unit3d(self.in_channels, c_stem, config.stem_kernel, config.stem_stride),  # Conv3d_1a
            unit3d(c_stem, c_stem),  # Conv3d_2b
            unit3d(c_stem, c_2c, (3, 3, 3)),  # Conv3d_2c
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # MaxPool3d_3a
        ]
        channels = c_2c
        for name, widths in INCEPTION_WIDTHS.items():
            if name == "Mixed_4b":
                # The grid the keypoint head reads: Mixed_3c's output. (Conv3d_2c's, at stride 4,
                # was measured too: keypoints 2.0 px off against 0.9 px here after the reduced
                # protocol's 3 epochs; a softmax over 256 cells learns more slowly than over 64.)
                self.grid_channels = channels
                self.early, layers = nn.Sequential(*layers), []
                layers.append(nn.MaxPool3d(3, stride=2, padding=1))  # MaxPool3d_4a
            if name == "Mixed_5b":
                layers.append(nn.MaxPool3d(2, stride=2))  # MaxPool3d_5a
            if name == "Mixed_5c":  # the last block's four branches make the feature: 3:3:1:1
                d = config.feature_dim
                b0 = b1 = 3 * d // 8
                b3 = d // 8
                b2 = d - b0 - b1 - b3
                widths = (b0, *_scaled(widths[1:2], w), b1, *_scaled(widths[3:4], w), b2, b3)
            else:
                widths = _scaled(widths, w)
            block = InceptionBlock(channels, widths)
            layers.append(block)
            channels = block.out_channels
        self.late = nn.Sequential(*layers)  # MaxPool3d_4a .. Mixed_5c
        self.grid_stride = (config.stem_stride[0], 2 * config.stem_stride[1], 2 * config.stem_stride[2])
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.apply(init_weights)
        self.use_channels_last()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.early(x)  # (B, 120, T/2, H/8, W/8): Mixed_3c
        x = self.late(grid)  # (B, feature_dim, T/8, H/32, W/32): Mixed_5c
        return self.dropout(self.pool(x).flatten(1)), grid  # (B, feature_dim), grid
