"""The interface every feature extractor implements, and how the four cameras enter it.

How views are fused: the four cameras are stacked as channels (early fusion), 4 x RGB = 12
channels. Why:
- The cameras are fixed, so channel k always shows the same camera: the view identity the 3D
  regression needs is kept, and the very first layer can relate the views to one another.
- It costs one backbone pass instead of four. On this 2-core CPU a Conv3d prototype trained at
  94 samples/s with stacked views against 34-39 with the views through a shared backbone
  (shared/BACKBONES.md), and the target is >= 40 samples/s for every backbone.
The price: views are not pixel-aligned, so early filters see unrelated places of different
cameras at one location; each camera's channels still keep their own spatial layout.

Pixels are normalised to background 0: the dataset's mean colour is its static background
(over 99% of pixels), and the sphere's channels come out at about 1-3.5. A constant input
level hurts the attention backbones badly: every token then carries the same large component,
and mean pooling over 128 tokens dilutes the few tokens that see the sphere until the features
hardly differ between samples (measured: the transformer and MagVIT stayed at chance for 10
full epochs with inputs in [0, 1], while the BatchNorm CNNs, which subtract batch means, learned).

Convolutional backbones also get three coordinate channels (x, y, t in [-1, 1], "CoordConv"):
the next position in world units depends on absolute pixel positions and on which frame is
last, which translation-equivariant convolutions followed by global pooling would otherwise have
to infer from padding effects. The attention backbones have positional embeddings instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajvid.scene import BACKGROUND

NUM_COORDINATES = 3  # x, y, t
PIXEL_MEAN = tuple(float(c) for c in BACKGROUND)  # per channel, uint8 units: the static background
PIXEL_SCALE = 64.0  # uint8 units per input unit: the sphere's brightest channel becomes ~3.5


@dataclass(frozen=True)
class BackboneConfig:
    feature_dim: int = 1024


def fused_channels(num_cameras: int = 4, channels: int = 3, coordinates: bool = True) -> int:
    return num_cameras * channels + (NUM_COORDINATES if coordinates else 0)


def fuse_views(videos: torch.Tensor, coordinates: bool = True, channels_last: bool = False) -> torch.Tensor:
    """(B, camera, frame, channel, H, W) uint8 -> (B, camera*channel [+ 3], frame, H, W) float.

    Pixels become (value - background) / PIXEL_SCALE. Written into one preallocated tensor: on a
    CPU this conversion is a visible part of a training step, so it makes as few passes as it can.
    With `channels_last` the result has torch.channels_last_3d memory layout.
    """
    B, V, T, C, H, W = videos.shape
    K = fused_channels(V, C, coordinates)
    if channels_last:
        out = torch.empty(B, T, H, W, K, device=videos.device).permute(0, 4, 1, 2, 3)
    else:
        out = torch.empty(B, K, T, H, W, device=videos.device)
    pixels = out[:, : V * C].view(B, V, C, T, H, W)
    pixels.copy_(videos.permute(0, 1, 3, 2, 4, 5))  # camera-major channels, frames second
    mean = torch.tensor(PIXEL_MEAN, device=videos.device).view(1, 1, C, 1, 1, 1)
    pixels.sub_(mean).div_(PIXEL_SCALE)
    if coordinates:
        ramps = [torch.linspace(-1, 1, n, device=videos.device) for n in (W, H, T)]
        out[:, V * C].copy_(ramps[0].view(1, 1, 1, W))
        out[:, V * C + 1].copy_(ramps[1].view(1, 1, H, 1))
        out[:, V * C + 2].copy_(ramps[2].view(1, T, 1, 1))
    return out


class FeatureExtractor(nn.Module):
    """Base of the backbones: videos (B, 4, T, 3, H, W) -> features (B, feature_dim).

    Subclasses implement `encode` on the fused tensor (B, 12 or 15, T, H, W). A backbone with an
    auxiliary training loss (MagVIT's quantiser) stores its named terms in `aux_losses` during
    forward; the multi-task model adds them to the loss explicitly.
    """

    Config = BackboneConfig
    # Convolutional backbones with BatchNorm run faster in channels-last layout (measured on this
    # CPU: I3D 33 -> 37 samples/s, SlowFast 17 -> 22); GroupNorm ones (MagVIT) run slower.
    channels_last = False
    coordinates = True  # add the x, y, t coordinate channels to the input

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        self.aux_losses: dict[str, torch.Tensor] = {}

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        self.aux_losses = {}
        return self.encode(fuse_views(videos, self.coordinates, self.channels_last))

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
