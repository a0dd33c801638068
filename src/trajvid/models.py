"""The backbone registry and the multi-task model every backbone feeds.

    videos (B, 4, 32, 3, 64, 64) uint8
      -> backbone            (B, feature_dim)       one of BACKBONES
      -> trunk               (B, hidden)            Linear -> GELU -> Dropout, shared by both tasks
      -> classifier          (B, 4)                 logits of linear / circular / helical / parabolic
      -> position head       (B, 3)                 next-frame position, normalised; the forward
                                                    pass returns it in world units

The head and the loss are identical for every backbone, so the comparison is about backbones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trajvid.backbone import FeatureExtractor, init_weights
from trajvid.i3d import I3D
from trajvid.magvit import MagVit
from trajvid.slowfast import SlowFast
from trajvid.transformer import VideoTransformer

BACKBONES: dict[str, type[FeatureExtractor]] = {
    "i3d": I3D,
    "slowfast": SlowFast,
    "transformer": VideoTransformer,
    "magvit": MagVit,
}
NUM_CLASSES = 4


class UnknownBackboneError(ValueError):
    pass


def backbone_class(name: str) -> type[FeatureExtractor]:
    if name not in BACKBONES:
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_config(name: str, **sizes):
    """The config of backbone `name` with defaults overridden by `sizes` (unknown keys rejected)."""
    config_cls = backbone_class(name).Config
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise TypeError(f"unknown size {unknown[0]!r} for backbone {name!r}; allowed: {', '.join(sorted(known))}")
    sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}
    return config_cls(**sizes)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 256
    dropout: float = 0.1


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: FeatureExtractor, head: HeadConfig = HeadConfig()):
        super().__init__()
        self.backbone = backbone
        self.trunk = nn.Sequential(nn.Linear(backbone.feature_dim, head.hidden), nn.GELU(), nn.Dropout(head.dropout))
        self.classifier = nn.Linear(head.hidden, NUM_CLASSES)
        self.position_head = nn.Linear(head.hidden, 3)
        self.trunk.apply(init_weights)
        init_weights(self.classifier)
        init_weights(self.position_head)
        # Position normalisation, set from the train split before training and saved with the model.
        self.register_buffer("position_mean", torch.zeros(3))
        self.register_buffer("position_std", torch.ones(3))

    def set_position_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.position_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.position_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, videos: torch.Tensor, normalised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, 4) and the next-frame position (B, 3): in world units, or normalised for the loss."""
        h = self.trunk(self.backbone(videos))
        position = self.position_head(h)
        return self.classifier(h), position if normalised else self.denormalise(position)

    def normalise(self, position: torch.Tensor) -> torch.Tensor:
        return (position - self.position_mean) / self.position_std

    def denormalise(self, position: torch.Tensor) -> torch.Tensor:
        return position.float() * self.position_std + self.position_mean

    @property
    def aux_losses(self) -> dict[str, torch.Tensor]:
        return self.backbone.aux_losses


def multitask_loss(
    model: MultiTaskModel,
    logits: torch.Tensor,
    position_normalised: torch.Tensor,
    labels: torch.Tensor,
    next_position: torch.Tensor,
    position_weight: float,
    aux_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy + weight x MSE on the normalised next position + aux_weight x backbone losses."""
    ce = F.cross_entropy(logits.float(), labels)
    mse = F.mse_loss(position_normalised.float(), model.normalise(next_position))
    parts = {"cross_entropy": ce, "position_mse_normalised": mse}
    total = ce + position_weight * mse
    for name, value in model.aux_losses.items():
        parts[name] = value
        total = total + aux_weight * value
    return total, parts


def build_model(name: str, head: HeadConfig = HeadConfig(), **sizes) -> MultiTaskModel:
    """The multi-task model on backbone `name`; keyword arguments override models.<name> sizes."""
    return MultiTaskModel(backbone_class(name)(backbone_config(name, **sizes)), head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
