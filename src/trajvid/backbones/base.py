"""The contract every feature extractor implements, and how the four cameras enter it.

A backbone is a `FeatureExtractor` subclass that declares, as class attributes,
- `Config`: a frozen dataclass of its sizes (the keys of its `models.<name>` block in params.yaml;
  it must have `feature_dim`; `Config.tiny()` gives narrow sizes for tests);
- `coordinates`: whether its input gets the x, y, t coordinate channels (`in_channels` follows);
- `channels_last`: whether it runs in channels-last memory layout;
and implements `encode(x)`: the fused tensor (B, in_channels, T, H, W) -> the pooled features
(B, feature_dim) and a spatial grid (B, grid_channels, T / st, H / sh, W / sw), a feature map or
token grid of its own that still knows where things are, whose stride (st, sh, sw) it states in
`self.grid_stride` and whose channels in `self.grid_channels`. The keypoint head reads the grid
(docs/design.md, "The head"). A backbone with training losses of its own stores them, by any
names, in `self.aux_losses` during `forward`; the multi-task loss adds every one of them and
training logs each by its name. Every backbone is built for the data's size (`InputSize`, read
from the dataset, never from params), so a size is never configured in one place and overwritten
in another.

Why the views are fused, the pixel normalisation and the coordinate channels are explained in
docs/design.md ("Input"): in short, the four cameras are stacked as channels (one backbone pass,
view identity kept, 94 vs 34-39 samples/s on this CPU for a Conv3d prototype); pixels are
(value - background) / 64 so that the static background is 0; convolutional backbones get
coordinate channels, attention backbones have positional embeddings instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from trajvid.backbones import backbone_class
from trajvid.data.scene import BACKGROUND
from trajvid.params import ParamsError, check_positive, from_dict

NUM_COORDINATES = 3  # x, y, t
PIXEL_MEAN = tuple(float(c) for c in BACKGROUND)  # per channel, uint8 units: the static background
PIXEL_SCALE = 64.0  # uint8 units per input unit: the sphere's brightest channel becomes ~3.5


@dataclass(frozen=True)
class BackboneConfig:
    feature_dim: int = 1024
    # Training settings of this backbone, overriding train.learning_rate / train.warmup_epochs:
    # recipes differ (attention models want smaller rates than BatchNorm CNNs at batch 16).
    learning_rate: float | None = None
    warmup_epochs: float | None = None

    @classmethod
    def tiny(cls) -> BackboneConfig:
        """Narrow sizes of the same architecture, for tests of behaviour rather than quality
        (tests/conftest.py builds every backbone with them): override it in each backbone's config."""
        return cls()

    def check(self, path: str) -> None:
        """Reject sizes that cannot build a network, naming the key (params.from_dict calls this)."""
        check_positive(self, path, "feature_dim")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ParamsError(f"{path}.learning_rate={self.learning_rate} is not allowed: must be > 0 (or null)")
        if self.warmup_epochs is not None and not self.warmup_epochs >= 0:
            raise ParamsError(f"{path}.warmup_epochs={self.warmup_epochs} is not allowed: must be >= 0 (or null)")
        if hasattr(self, "dropout") and not 0 <= self.dropout < 1:
            raise ParamsError(f"{path}.dropout={self.dropout} is not allowed: must be in [0, 1)")


@dataclass(frozen=True)
class InputSize:
    """The video size a model is built for; it comes from the dataset (`data/shards.py: read_metadata`)."""

    frames: int = 32
    height: int = 64
    width: int = 64
    cameras: int = 4


def fused_channels(num_cameras: int = 4, channels: int = 3, coordinates: bool = True) -> int:
    return num_cameras * channels + (NUM_COORDINATES if coordinates else 0)


def fused_shape(videos: torch.Tensor, coordinates: bool, channels_last: bool) -> tuple[int, ...]:
    """The shape in memory of the fused input: (B, T, H, W, K) channels-last, else (B, K, T, H, W)."""
    B, V, T, C, H, W = videos.shape
    K = fused_channels(V, C, coordinates)
    return (B, T, H, W, K) if channels_last else (B, K, T, H, W)


def fuse_views(videos: torch.Tensor, coordinates: bool = True, channels_last: bool = False,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, camera, frame, channel, H, W) uint8 -> (B, camera*channel [+ 3], frame, H, W) float.

    Pixels become (value - background) / PIXEL_SCALE. Written into one tensor (`out`, of
    `fused_shape`, when given): on a CPU this conversion is a visible part of a training step, so
    it makes as few passes as it can. With `channels_last` the result has torch.channels_last_3d
    memory layout.
    """
    B, V, T, C, H, W = videos.shape
    if out is None:
        out = torch.empty(fused_shape(videos, coordinates, channels_last), device=videos.device)
    if channels_last:
        out = out.permute(0, 4, 1, 2, 3)
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
    """Base of the backbones: videos (B, cameras, T, 3, H, W) uint8 -> features (B, feature_dim) and
    a spatial grid (B, grid_channels, T', H', W')."""

    Config: ClassVar[type] = BackboneConfig
    coordinates: ClassVar[bool] = True  # add the x, y, t coordinate channels to the input
    # Convolutional backbones with BatchNorm run faster in channels-last layout (measured on this
    # CPU, 2026-11-28: I3D 33 -> 37 samples/s, SlowFast 17 -> 22); GroupNorm ones (MagVIT) run
    # slower. One run on 2026-12-01 gave I3D 45 channels-last against 50 contiguous: to be
    # re-measured interleaved (docs/performance.md).
    channels_last: ClassVar[bool] = False

    def __init__(self, config: BackboneConfig, input_size: InputSize = InputSize()):
        super().__init__()
        self.config = config
        self.input_size = input_size
        self.feature_dim = config.feature_dim
        self.in_channels = fused_channels(input_size.cameras, 3, self.coordinates)
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.grid_channels: int = 0  # set by the subclass
        self.grid_stride: tuple[int, int, int] = (1, 1, 1)  # (time, height, width) input units per grid cell

    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, feature_dim) and the spatial grid (B, grid_channels, T', H', W')."""
        self.aux_losses = {}
        return self.encode(fuse_views(videos, self.coordinates, self.channels_last, self.input_buffer(videos)))

    def input_buffer(self, videos: torch.Tensor) -> torch.Tensor | None:
        """In training, the one tensor every step's fused input is written into; None (a fresh
        tensor) in eval mode and for inputs that need gradients (saliency).

        A fresh 126 MB tensor a step (batch 16) is mapped anew by the allocator and page-faulted
        in as it is written: fusing a batch took 54 ms that way and 14 ms into a reused tensor
        (channels-last: 142 and 83 ms) on this CPU, 2026-12-01, with identical values. The
        backward pass has read a step's input before the next forward overwrites it (autograd's
        version counter would stop a program that did otherwise); in eval mode (validation,
        `evaluate`, `ensemble`, `explain`) none is used, and `train(False)` lets it go."""
        if not self.training or videos.requires_grad:
            return None
        shape = fused_shape(videos, self.coordinates, self.channels_last)
        buffer = self.__dict__.get("_input_buffer")  # a plain attribute: not in the state dict
        if buffer is None or tuple(buffer.shape) != shape or buffer.device != videos.device:
            buffer = self.__dict__["_input_buffer"] = torch.empty(shape, device=videos.device)
        return buffer

    def train(self, mode: bool = True):
        if not mode:
            self.__dict__.pop("_input_buffer", None)  # eval mode fuses into fresh tensors
        return super().train(mode)

    def use_channels_last(self) -> None:
        """Give every Conv3d weight the channels-last layout (call at the end of __init__)."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                module.to(memory_format=torch.channels_last_3d)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def backbone_config(name: str, sizes: dict | None = None) -> BackboneConfig:
    """The config of backbone `name` from its params block; a bad key or value is a ParamsError."""
    return from_dict(backbone_class(name).Config, dict(sizes or {}), f"models.{name}")


def sizes_block(config: BackboneConfig) -> dict:
    """A backbone's config as its params block (what config.json stores to rebuild it)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
