"""The multi-task model every backbone feeds, its loss and its optimizer groups.

    videos (B, 4, 32, 3, 64, 64) uint8
      -> backbone            (B, feature_dim)       the one named by params `model` (registry.py)
      -> trunk               (B, head.hidden)       Linear -> GELU -> Dropout(head.dropout), shared
      -> classifier          (B, 4)                 logits of linear / circular / helical / parabolic
      -> position head       (B, 3)                 next-frame position, normalised; the forward
                                                    pass returns it in world units

The head and the loss are identical for every backbone, so the comparison is about backbones.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
import torch.nn.functional as F
from torch import nn

from trajvid.backbone import FeatureExtractor, InputSize
from trajvid.layers import init_weights
from trajvid.params import HeadParams, from_dict
from trajvid.registry import BACKBONES

NUM_CLASSES = 4


class UnknownBackboneError(ValueError):
    pass


def backbone_class(name: str) -> type[FeatureExtractor]:
    """The backbone class registered as `name`, imported on first use."""
    if name not in BACKBONES:
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    module, _, cls = BACKBONES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def backbone_config(name: str, sizes: dict | None = None):
    """The config of backbone `name` from its params block; a bad key or value is a ParamsError."""
    return from_dict(backbone_class(name).Config, dict(sizes or {}), f"models.{name}")


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: FeatureExtractor, head: HeadParams = HeadParams()):
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

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups (as nanoGPT's `configure_optimizers`): decay exactly the weight matrices and
        kernels of Linear and convolution layers; never biases, norms, positional embeddings, CLS
        tokens or anything else. Every trainable parameter lands in exactly one group."""
        decayed = set()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                decayed.add(id(module.weight))
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if id(p) in decayed else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizer(self, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.parameter_groups(weight_decay), lr=learning_rate)


def multitask_loss(
    model: MultiTaskModel,
    logits: torch.Tensor,
    position_normalised: torch.Tensor,
    labels: torch.Tensor,
    next_position: torch.Tensor,
    position_weight: float,
    aux_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one loss of training, validation and early stopping, and its parts:
    cross-entropy + position_weight x MSE(normalised next position) + aux_weight x each backbone loss."""
    ce = F.cross_entropy(logits.float(), labels)
    mse = F.mse_loss(position_normalised.float(), model.normalise(next_position))
    parts = {"cross_entropy": ce, "position_mse_normalised": mse}
    total = ce + position_weight * mse
    for name, value in model.aux_losses.items():
        parts[name] = value
        total = total + aux_weight * value
    return total, parts


def build_model(name: str, head: HeadParams = HeadParams(), input_size: InputSize = InputSize(),
                **sizes) -> MultiTaskModel:
    """The multi-task model on backbone `name`; keyword arguments override its models.<name> sizes."""
    return MultiTaskModel(backbone_class(name)(backbone_config(name, sizes), input_size), head)


def backbone_sizes(model: MultiTaskModel) -> dict:
    """The backbone's config as a params block (what config.json stores to rebuild it)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.backbone.config).items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
