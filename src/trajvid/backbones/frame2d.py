"""frame2d: the control. A per-frame 2D ResNet that never sees two frames together.

Every frame of the fused views (the four cameras' RGB stacked as channels, plus the x, y, t
coordinate channels every convolutional backbone gets) goes through the same 2D network on its
own; the only step that combines frames is the mean of the per-frame features over time (a
"segment consensus", as TSN's), which learns nothing: no layer relates one frame to another
(each frame knows its own t from the coordinate channel, so the mean is not blind to order).
The keypoint head reads the per-frame grid, so a trajectory it triangulates comes from frames
seen one at a time.

What it answers: if this network localises the sphere (validation keypoint error) and predicts
the next position as well as the video backbones, the benchmark compares 2D localisation, not
the understanding of motion; only a backbone that beats it shows temporal modelling paying.

The network is ResNet's (He et al. 2016) in miniature: a patchify stem (a 4 x 4 convolution of
stride 4, as I3D's stem here, because on this CPU the first layer's resolution sets the cost),
then stages of BasicBlocks (3 x 3 conv -> BN -> ReLU -> 3 x 3 conv -> BN, plus the identity or
a strided 1 x 1 projection) at 16 x 16, 8 x 8, 4 x 4 and 2 x 2, doubling the width each time.

Shapes for the default input (B, 15, 32, 64, 64), width 32, frames folded into the batch:
  stem            (B*32,  32, 16, 16)
  stage 1         (B*32,  32, 16, 16)
  stage 2         (B*32,  64,  8,  8)   the grid: (B, 64, 32, 8, 8), stride (1, 8, 8)
  stage 3         (B*32, 128,  4,  4)
  stage 4         (B*32, 256,  2,  2)   pooled per frame -> (B, 32, 256) -> mean over time
  projection      (B, feature_dim)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import init_weights
from trajvid.params import check_positive


@dataclass(frozen=True)
class Frame2DConfig(BackboneConfig):
    feature_dim: int = 512
    width: int = 32  # channels of the stem and stage 1; doubled at each later stage
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)  # BasicBlocks per stage (ResNet-18: 2, 2, 2, 2)
    dropout: float = 0.0  # on the pooled features, before the projection

    def check(self, path: str) -> None:
        super().check(path)
        check_positive(self, path, "width", "blocks")

    @classmethod
    def tiny(cls) -> Frame2DConfig:
        return cls(width=8)


class BasicBlock(nn.Module):
    """ResNet's basic block, 2D: two 3 x 3 convolutions with BatchNorm, and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), *(BasicBlock(c_out, c_out) for _ in range(blocks - 1)))


class Frame2D(FeatureExtractor):
    """(B, K, T, H, W) -> per-frame 2D features; pooled (B, feature_dim) and a grid (B, 2w, T, H/8, W/8)."""

    Config = Frame2DConfig

    def __init__(self, config: Frame2DConfig = Frame2DConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        w = config.width
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, w, 4, 4, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True))
        self.stage1 = stage(w, w, config.blocks[0], 1)
        self.stage2 = stage(w, 2 * w, config.blocks[1], 2)
        self.stage3 = stage(2 * w, 4 * w, config.blocks[2], 2)
        self.stage4 = stage(4 * w, 8 * w, config.blocks[3], 2)
        self.dropout = nn.Dropout(config.dropout)
        self.project = nn.Linear(8 * w, config.feature_dim)
        self.grid_channels, self.grid_stride = 2 * w, (1, 8, 8)
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, K, H, W)  # every frame on its own
        mid = self.stage2(self.stage1(self.stem(frames)))  # (B*T, 2w, H/8, W/8)
        top = self.stage4(self.stage3(mid)).mean((2, 3))  # (B*T, 8w)
        features = self.project(self.dropout(top.view(B, T, -1).mean(1)))  # the only step across frames
        grid = mid.view(B, T, *mid.shape[1:]).transpose(1, 2)  # (B, 2w, T, H/8, W/8)
        return features, grid
