"""The multi-task model every backbone feeds, its loss and its optimizer groups.

    videos (B, 4, 32, 3, 64, 64) uint8
      -> backbone                 pooled features (B, feature_dim) and a grid (B, C, T', H', W')
      -> trunk on the pooled      (B, head.hidden)   Linear -> GELU -> Dropout(head.dropout)
      -> by `head.type`:
         keypoints (default): from the grid, per camera and frame, a soft-argmax keypoint over the
             grid cells plus a sub-cell offset (B, 4 cameras, 32 frames, 2 pixels); triangulated
             with the dataset's cameras into the 32 visible positions (B, 32, 3);
             classifier on [trunk, motion encoder of the trajectory's shape]   (B, 4) logits;
             next position: each class's motion model fitted to the 32 positions and extrapolated
             one frame (motion.py), mixed by the class probabilities;
         pooled: classifier on the trunk (B, 4); all 33 positions at once from the trunk (B, 33, 3).

The head and the loss are identical for every backbone, so the comparison is about backbones
(docs/design.md, "The head and the loss").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trajvid.backbones import backbone_class
from trajvid.backbones.base import BackboneConfig, FeatureExtractor, InputSize, backbone_config
from trajvid.backbones.layers import init_weights
from trajvid.data.scene import CLASS_NAMES, cameras_metadata
from trajvid.head.geometry import project, projection_matrices, triangulate
from trajvid.head.motion import next_positions
from trajvid.params import HeadParams

NUM_CLASSES = len(CLASS_NAMES)


class Outputs(NamedTuple):
    """Everything the head computes."""

    logits: torch.Tensor  # (B, 4)
    next_position: torch.Tensor  # (B, 3), world units
    trajectory: torch.Tensor  # (B, T, 3) positions of the visible frames, world units
    keypoints: torch.Tensor | None  # (B, cameras, T, 2) pixels (keypoints head only)


class KeypointReadout(nn.Module):
    """Grid (B, C, T', H', W') -> keypoints (B, V, T, 2) -> visible positions (B, T, 3)."""

    def __init__(self, channels: int, stride: tuple[int, int, int], cameras: dict, num_cameras: int):
        super().__init__()
        self.stride, self.num_cameras = stride, num_cameras
        # per grid cell: for each camera and each of the cell's stride[0] frames, a heat logit and a
        # sub-cell offset (dx, dy) in cell units
        self.cell = nn.Linear(channels, num_cameras * stride[0] * 3)
        init_weights(self.cell)
        self.register_buffer("projection", projection_matrices(cameras), persistent=False)

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Always in float32 (float64 for the triangulation): bf16 spaces values near 64 px
        # 0.25 px apart, which would defeat the sub-pixel keypoints.
        with torch.autocast(device_type=grid.device.type, enabled=False):
            return self._keypoints(grid.float())

    def _keypoints(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, Tg, Hg, Wg = grid.shape
        st, sh, sw = self.stride
        out = self.cell(grid.permute(0, 2, 3, 4, 1))  # (B, T', H', W', V * st * 3)
        out = out.view(B, Tg, Hg * Wg, self.num_cameras, st, 3).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(B, self.num_cameras, Tg * st, Hg * Wg, 3)  # (B, V, T, cells, 3)
        weight = out[..., 0].softmax(-1)  # where the sphere is, over the cells
        rows, cols = torch.meshgrid(torch.arange(Hg, device=grid.device), torch.arange(Wg, device=grid.device),
                                    indexing="ij")
        u = ((cols.flatten() + 0.5 + out[..., 1]) * sw * weight).sum(-1)  # pixels
        v = ((rows.flatten() + 0.5 + out[..., 2]) * sh * weight).sum(-1)
        keypoints = torch.stack([u, v], dim=-1)  # (B, V, T, 2)
        points = triangulate(keypoints.transpose(1, 2), self.projection).float()  # (B, T, 3)
        return keypoints, points


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: FeatureExtractor, head: HeadParams = HeadParams(), cameras: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head_type = head.type
        size = backbone.input_size
        self.trunk = nn.Sequential(nn.Linear(backbone.feature_dim, head.hidden), nn.GELU(), nn.Dropout(head.dropout))
        if head.type == "pooled":
            self.classifier = nn.Linear(head.hidden, NUM_CLASSES)
            self.position_head = nn.Linear(head.hidden, 3 * (size.frames + 1))
        else:
            cameras = cameras or cameras_metadata(size.height)
            self.readout = KeypointReadout(backbone.grid_channels, backbone.grid_stride, cameras, size.cameras)
            # The class is the shape of the motion, which the triangulated trajectory shows directly;
            # from the pooled features alone the transformer separated lines from parabolas slowly
            # (0.80 test accuracy after the full run, while an MLP on its own trajectories reached
            # 1.000: docs/design.md, "The head and the loss").
            self.motion_encoder = nn.Sequential(nn.Linear(3 * size.frames, head.hidden), nn.GELU())
            self.classifier = nn.Linear(2 * head.hidden, NUM_CLASSES)
        for module in (self.trunk, self.classifier, getattr(self, "position_head", None),
                       getattr(self, "motion_encoder", None)):
            if module is not None:
                module.apply(init_weights)
        # Position normalisation, set from the train split before training and saved with the model.
        self.register_buffer("position_mean", torch.zeros(3))
        self.register_buffer("position_std", torch.ones(3))

    def set_position_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.position_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.position_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, videos: torch.Tensor, full: bool = False):
        """Logits (B, 4) and the next-frame position (B, 3) in world units; with `full`, every
        output the loss needs (`Outputs`)."""
        features, grid = self.backbone(videos)
        h = self.trunk(features)  # (B, hidden)
        if self.head_type == "pooled":
            logits = self.classifier(h)
            positions = self.denormalise(self.position_head(h).view(len(h), -1, 3))  # (B, T + 1, 3)
            out = Outputs(logits, positions[:, -1], positions[:, :-1], None)
        else:
            keypoints, trajectory = self.readout(grid)  # (B, V, T, 2), (B, T, 3)
            # The shape of the motion: translation removed, in the positions' normalised units.
            # Detached: only the position losses move the keypoints, the classifier reads them.
            shape = trajectory.detach()
            shape = (shape - shape.mean(1, keepdim=True)) / self.position_std  # (B, T, 3)
            logits = self.classifier(torch.cat([h, self.motion_encoder(shape.flatten(1))], dim=-1))
            with torch.autocast(device_type=trajectory.device.type, enabled=False):  # bf16 would add ~0.004
                candidates = next_positions(trajectory)  # (B, 4, 3), one per class
                next_position = torch.einsum("bc,bcd->bd", logits.float().softmax(-1), candidates)
            out = Outputs(logits, next_position, trajectory, keypoints)
        return out if full else (out.logits, out.next_position)

    def normalise(self, position: torch.Tensor) -> torch.Tensor:
        return (position.float() - self.position_mean) / self.position_std

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


class LossWeights(NamedTuple):
    position: float = 1.0  # next position, MSE of the normalised coordinates
    trajectory: float = 1.0  # the 32 visible positions, same units
    keypoint: float = 1.0  # keypoints, mean distance in pixels (keypoints head)
    aux: float = 1.0  # each of the backbone's own losses


def multitask_loss(model: MultiTaskModel, out: Outputs, labels: torch.Tensor, positions: torch.Tensor,
                   weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one loss of training, validation and early stopping, and its parts:
    cross-entropy + w_position x MSE(next position) + w_trajectory x MSE(visible positions)
    [+ w_keypoint x mean pixel distance(keypoints, the projected true positions)] + w_aux x each backbone loss.
    `positions` are the sample's 33 true positions (B, T + 1, 3); position errors are taken on
    coordinates normalised by the train split's mean and std of the next position."""
    target = model.normalise(positions)
    parts = {
        "cross_entropy": F.cross_entropy(out.logits.float(), labels),
        "position_mse_normalised": F.mse_loss(model.normalise(out.next_position), target[:, -1]),
        "trajectory_mse_normalised": F.mse_loss(model.normalise(out.trajectory), target[:, :-1]),
    }
    total = (parts["cross_entropy"] + weights.position * parts["position_mse_normalised"]
             + weights.trajectory * parts["trajectory_mse_normalised"])
    if out.keypoints is not None:
        truth = project(positions[:, :-1], model.readout.projection)  # (B, V, T, 2)
        # the mean distance in pixels, not a squared error: its gradient does not fade as the
        # keypoints approach sub-pixel precision, which is what the triangulation needs
        parts["keypoint_distance_px"] = (out.keypoints - truth).norm(dim=-1).mean()
        total = total + weights.keypoint * parts["keypoint_distance_px"]
    for name, value in model.aux_losses.items():
        parts[name] = value
        total = total + weights.aux * value
    return total, parts


def build_model(name: str, head: HeadParams = HeadParams(), input_size: InputSize = InputSize(),
                cameras: dict | None = None, **sizes) -> MultiTaskModel:
    """The multi-task model on backbone `name`; keyword arguments override its models.<name> sizes.
    `cameras` (K, R, t as stored in the dataset) default to the scene's cameras."""
    return model_from_config(name, backbone_config(name, sizes), head, input_size, cameras)


def model_from_config(name: str, config: BackboneConfig, head: HeadParams = HeadParams(),
                      input_size: InputSize = InputSize(), cameras: dict | None = None) -> MultiTaskModel:
    """The multi-task model on backbone `name` built with an already checked config."""
    return MultiTaskModel(backbone_class(name)(config, input_size), head, cameras)



def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
