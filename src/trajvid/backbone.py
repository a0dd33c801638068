"""The interface every feature extractor implements, and how the four cameras enter it.

How views are fused: the four cameras are stacked as channels (early fusion), 4 x RGB = 12
channels, plus three coordinate channels (x, y, t in [-1, 1]). Why:
- The cameras are fixed, so channel k always shows the same camera: the view identity the 3D
  regression needs is kept, and the very first layer can relate the views to one another.
- It costs one backbone pass instead of four. On this 2-core CPU a Conv3d prototype trained at
  94 samples/s with stacked views against 34-39 with the views through a shared backbone
  (shared/BACKBONES.md), and the target is >= 40 samples/s for every backbone.
- The coordinate channels ("CoordConv") tell convolutions where and when they are: the next
  position in world units depends on absolute pixel positions and on which frame is last, which
  translation-equivariant convolutions followed by global pooling would otherwise have to infer
  from padding effects.
The price: views are not pixel-aligned, so early filters see unrelated places of different
cameras at one location; each camera's channels still keep their own spatial layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NUM_COORDINATES = 3  # x, y, t


@dataclass(frozen=True)
class BackboneConfig:
    feature_dim: int = 1024


def fused_channels(num_cameras: int = 4, channels: int = 3) -> int:
    return num_cameras * channels + NUM_COORDINATES


def fuse_views(videos: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, camera, frame, channel, H, W) uint8 or float -> (B, camera*channel + 3, frame, H, W) float.

    uint8 input is scaled to [0, 1]. Written into one preallocated tensor: on a CPU this
    conversion is a visible part of a training step, so it makes as few passes as it can.
    With `channels_last` the result has torch.channels_last_3d memory layout.
    """
    B, V, T, C, H, W = videos.shape
    K = V * C + NUM_COORDINATES
    if channels_last:
        out = torch.empty(B, T, H, W, K, device=videos.device).permute(0, 4, 1, 2, 3)
    else:
        out = torch.empty(B, K, T, H, W, device=videos.device)
    pixels = out[:, : V * C].view(B, V, C, T, H, W)
    pixels.copy_(videos.permute(0, 1, 3, 2, 4, 5))  # camera-major channels, frames second
    if videos.dtype == torch.uint8:
        pixels.div_(255.0)
    coords = [torch.linspace(-1, 1, n, device=videos.device) for n in (W, H, T)]
    out[:, V * C].copy_(coords[0].view(1, 1, 1, W))
    out[:, V * C + 1].copy_(coords[1].view(1, 1, H, 1))
    out[:, V * C + 2].copy_(coords[2].view(1, T, 1, 1))
    return out


class FeatureExtractor(nn.Module):
    """Base of the backbones: videos (B, 4, T, 3, H, W) -> features (B, feature_dim).

    Subclasses implement `encode` on the fused tensor (B, 15, T, H, W). A backbone with an
    auxiliary training loss (MagVIT's quantiser) stores its named terms in `aux_losses` during
    forward; the multi-task model adds them to the loss explicitly.
    """

    Config = BackboneConfig
    # Convolutional backbones with BatchNorm run faster in channels-last layout (measured on this
    # CPU: I3D 33 -> 37 samples/s, SlowFast 17 -> 22); GroupNorm ones (MagVIT) run slower.
    channels_last = False

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        self.aux_losses: dict[str, torch.Tensor] = {}

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        self.aux_losses = {}
        return self.encode(fuse_views(videos, self.channels_last))

    def use_channels_last(self) -> None:
        """Give every Conv3d weight the channels-last layout (call at the end of __init__)."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                module.to(memory_format=torch.channels_last_3d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def init_weights(module: nn.Module) -> None:
    """Explicit initialisation shared by the backbones (applied with `module.apply`)."""
    if isinstance(module, (nn.Conv3d, nn.Conv2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
