"""SlowFast (Feichtenhofer et al., 2019), a ResNet-style two-pathway network sized for CPU.

What defines it, and is kept (facebookresearch/SlowFast, pytorchvideo `create_slowfast`):
- a Slow pathway on every alpha-th frame with many channels, whose temporal kernels are 1 in the
  stem and early stages (res2, res3) and 3 in the late ones (res4, res5);
- a Fast pathway on every frame with beta = 1/8 of the channels, temporal kernel 5 in the stem
  and 3 in every stage, never downsampled in time;
- lateral connections after the stem and after every stage but the last: a Conv3d on the fast
  features, kernel 5x1x1 and stride alpha x 1 x 1, with 2 x C_fast output channels,
  concatenated onto the slow features;
- head: each pathway globally pooled, concatenated, dropout; here a linear projection then maps
  the concatenation to `feature_dim`.
Bottleneck residual blocks (1x1 -> 1x3x3 -> 1x1, the temporal kernel on the first conv).

Changed for the CPU: the stems use spatial stride 4 (stride 2 + the reference's 1x3x3 max-pool),
one block per stage, base width 32.

Shapes for the default input (B, 15, 32, 64, 64), alpha 4, beta 1/8:
  slow input (B, 15, 8, 64, 64)        fast input (B, 15, 32, 64, 64)
  stem  slow (B, 32, 8, 16, 16)        fast (B, 4, 32, 16, 16)     + lateral 8 channels
  res2  slow (B, 128, 8, 16, 16)       fast (B, 16, 32, 16, 16)    + lateral 32
  res3  slow (B, 256, 8, 8, 8)         fast (B, 32, 32, 8, 8)      + lateral 64
  res4  slow (B, 512, 8, 4, 4)         fast (B, 64, 32, 4, 4)      + lateral 128
  res5  slow (B, 1024, 8, 2, 2)        fast (B, 128, 32, 2, 2)
  pooled, concatenated (B, 1152) -> projection (B, feature_dim)
  grid: res3's slow (repeated alpha times in time) and fast features (B, 288, 32, 8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize
from trajvid.backbones.layers import ConvBNReLU, init_weights
from trajvid.params import ParamsError, check_positive


@dataclass(frozen=True)
class SlowFastConfig(BackboneConfig):
    feature_dim: int = 1024
    alpha: int = 4  # frame-rate ratio: the slow pathway sees every alpha-th frame
    beta_inv: int = 8  # channel ratio: the fast pathway has 1/beta_inv of the slow channels
    width: int = 32  # slow stem channels; stage outputs are 4, 8, 16, 32 x width
    lateral_kernel: int = 5
    dropout: float = 0.0

    @classmethod
    def tiny(cls) -> SlowFastConfig:
        return cls(width=8)

    def check(self, path: str) -> None:
        super().check(path)
        check_positive(self, path, "alpha", "beta_inv", "width", "lateral_kernel")
        if self.width < self.beta_inv:
            raise ParamsError(f"{path}.width={self.width} is not allowed: the fast pathway has width / beta_inv "
                              f"= {self.width}/{self.beta_inv} channels, which must be at least 1")


class Bottleneck(nn.Module):
    """Tx1x1 reduce -> 1x3x3 (spatial stride) -> 1x1x1 expand, plus a projected shortcut."""

    def __init__(self, c_in: int, c_out: int, temporal_kernel: int, spatial_stride: int):
        super().__init__()
        inner = c_out // 4
        stride = (1, spatial_stride, spatial_stride)
        self.a = ConvBNReLU(c_in, inner, (temporal_kernel, 1, 1))
        self.b = ConvBNReLU(inner, inner, (1, 3, 3), stride)
        self.c = ConvBNReLU(inner, c_out, (1, 1, 1), relu=False)
        self.shortcut = (
            ConvBNReLU(c_in, c_out, (1, 1, 1), stride, relu=False)
            if c_in != c_out or spatial_stride != 1
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c(self.b(self.a(x))) + self.shortcut(x))


class Lateral(nn.Module):
    """Fast -> slow: time-strided Conv3d to 2 x C_fast channels, to be concatenated onto slow."""

    def __init__(self, c_fast: int, alpha: int, kernel: int):
        super().__init__()
        self.conv = ConvBNReLU(c_fast, 2 * c_fast, (kernel, 1, 1), (alpha, 1, 1))

    def forward(self, fast: torch.Tensor) -> torch.Tensor:
        return self.conv(fast)


class SlowFast(FeatureExtractor):
    Config = SlowFastConfig
    channels_last = True

    def __init__(self, config: SlowFastConfig = SlowFastConfig(), input_size: InputSize = InputSize()):
        super().__init__(config, input_size)
        c, beta_inv, alpha = config.width, config.beta_inv, config.alpha
        if input_size.frames % alpha:
            raise ParamsError(f"models.slowfast.alpha={alpha} is not allowed: it must divide the data's "
                              f"{input_size.frames} frames")
        self.alpha = alpha
        slow_widths = [c, 4 * c, 8 * c, 16 * c, 32 * c]  # stem, res2..res5
        fast_widths = [w // beta_inv for w in slow_widths]
        slow_temporal = [1, 1, 1, 3, 3]  # temporal kernels: 1 early, 3 late (res4, res5)
        spatial_strides = [1, 2, 2, 2]  # res2..res5

        self.slow_stem = ConvBNReLU(self.in_channels, slow_widths[0], (slow_temporal[0], 7, 7), (1, 4, 4))
        self.fast_stem = ConvBNReLU(self.in_channels, fast_widths[0], (5, 7, 7), (1, 4, 4))
        self.laterals = nn.ModuleList([Lateral(fast_widths[0], alpha, config.lateral_kernel)])
        self.slow_stages, self.fast_stages = nn.ModuleList(), nn.ModuleList()
        for i in range(4):
            slow_in = slow_widths[i] + 2 * fast_widths[i]  # the lateral's channels are concatenated
            self.slow_stages.append(Bottleneck(slow_in, slow_widths[i + 1], slow_temporal[i + 1], spatial_strides[i]))
            self.fast_stages.append(Bottleneck(fast_widths[i], fast_widths[i + 1], 3, spatial_strides[i]))
            if i < 3:  # no lateral after the last stage
                self.laterals.append(Lateral(fast_widths[i + 1], alpha, config.lateral_kernel))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.project = nn.Linear(slow_widths[-1] + fast_widths[-1], config.feature_dim)
        # The grid: both pathways after res3 (stride 8 in space), slow repeated to every frame.
        self.grid_stage = 1
        self.grid_channels = slow_widths[2] + fast_widths[2]
        self.grid_stride = (1, 8, 8)
        self.apply(init_weights)
        self.use_channels_last()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slow = self.slow_stem(x[:, :, :: self.alpha])  # (B, C, T/alpha, H/4, W/4)
        fast = self.fast_stem(x)  # (B, C/beta_inv, T, H/4, W/4)
        for i, (slow_stage, fast_stage) in enumerate(zip(self.slow_stages, self.fast_stages)):
            slow = slow_stage(torch.cat([slow, self.laterals[i](fast)], dim=1))
            fast = fast_stage(fast)
            if i == self.grid_stage:  # (B, 256 + 32, T, H/8, W/8)
                grid = torch.cat([slow.repeat_interleave(self.alpha, dim=2), fast], dim=1)
        pooled = torch.cat([self.pool(slow).flatten(1), self.pool(fast).flatten(1)], dim=1)
        return self.project(self.dropout(pooled)), grid  # (B, feature_dim), grid
