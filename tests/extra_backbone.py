"""A sixth backbone, tiny but real, to prove that adding one takes one file, one registry line and
one params block (tests/test_structure.py copies this file into a repository as
src/trajvid/backbones/tinyconv.py; conftest.py registers it for the generic model tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import ConvBNReLU, init_weights


@dataclass(frozen=True)
class TinyConvConfig(BackboneConfig):
    feature_dim: int = 64
    width: int = 8


class TinyConv(FeatureExtractor):
    """Two strided Conv3d units, pooling to a coarse 2 x 4 x 4 grid (keeps where things are), a projection."""

    Config = TinyConvConfig

    def __init__(self, config: TinyConvConfig = TinyConvConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        self.features = nn.Sequential(
            ConvBNReLU(self.in_channels, config.width, (3, 5, 5), (2, 4, 4)),  # (B, w, T/2, H/4, W/4)
            ConvBNReLU(config.width, 2 * config.width, (3, 3, 3), (2, 2, 2)),  # (B, 2w, T/4, H/8, W/8)
        )
        self.pool = nn.AdaptiveAvgPool3d((2, 4, 4))
        self.project = nn.Linear(2 * config.width * 32, config.feature_dim)
        self.grid_channels, self.grid_stride = 2 * config.width, (4, 8, 8)  # what the keypoint head reads
        self.apply(init_weights)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.features(x)  # (B, 2w, T/4, H/8, W/8)
        return self.project(self.pool(grid).flatten(1)), grid  # (B, feature_dim), grid
