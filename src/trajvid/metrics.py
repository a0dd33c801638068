"""One accumulator of a split's figures, shared by training, validation and the `evaluate` stage.

Definitions (docs/design.md, "Metrics"):
- accuracy: share of samples whose arg-max logit is the label; also per class;
- position_mse / position_rmse: the next-frame (row 32) position error in world units, per
  coordinate: mean over samples and x, y, z of the squared difference (RMSE = its root); also
  per class; position_mean_distance: mean Euclidean distance;
- loss parts: sample-weighted means of the multi-task loss and its parts (`models.multitask_loss`).

Sums are kept in one float64 tensor, so that several processes can add theirs with a single
all-reduce (`reduce_across`) before `result()`.
"""

from __future__ import annotations

import math

import torch

from trajvid.data.scene import CLASS_NAMES


class SplitMetrics:
    def __init__(self, num_classes: int = len(CLASS_NAMES)):
        self.num_classes = num_classes
        # per class: count, correct, squared error (sum over x, y, z), Euclidean distance
        self.per_class = torch.zeros(num_classes, 4, dtype=torch.float64)
        self.loss_sums: dict[str, float] = {}

    def add(self, logits: torch.Tensor, labels: torch.Tensor, position: torch.Tensor, target: torch.Tensor,
            losses: dict[str, torch.Tensor] | None = None) -> None:
        """One batch: logits (B, K), labels (B,), next position and its target (B, 3) in world units;
        `losses` are batch means (scalars), weighted here by the batch size."""
        labels = labels.detach().cpu()
        correct = (logits.detach().argmax(-1).cpu() == labels).double()
        squared = ((position.detach().float() - target.detach().float()) ** 2).sum(-1).double().cpu()
        rows = torch.stack([torch.ones_like(correct), correct, squared, squared.sqrt()], dim=1)
        self.per_class.index_add_(0, labels, rows)
        for name, value in (losses or {}).items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + float(torch.as_tensor(value).detach()) * len(labels)

    def reduce_across(self, accelerator) -> None:
        """Sum the counts of every process (an all-reduce; a no-op with one process)."""
        if accelerator.num_processes == 1:
            return
        names = sorted(self.loss_sums)
        flat = torch.cat([self.per_class.flatten(), torch.tensor([self.loss_sums[n] for n in names], dtype=torch.float64)])
        flat = accelerator.reduce(flat.to(accelerator.device), reduction="sum").cpu()
        size = self.per_class.numel()
        self.per_class = flat[:size].view_as(self.per_class).clone()
        self.loss_sums = dict(zip(names, flat[size:].tolist()))

    @property
    def count(self) -> int:
        return int(self.per_class[:, 0].sum())

    def result(self) -> dict:
        count, correct, squared, distance = self.per_class.sum(0).tolist()
        if count == 0:
            raise ValueError("no samples were added")
        per_class_accuracy, per_class_rmse = {}, {}
        for c, name in enumerate(CLASS_NAMES[: self.num_classes]):
            n, right, sq, _ = self.per_class[c].tolist()
            per_class_accuracy[name] = right / n if n else float("nan")
            per_class_rmse[name] = math.sqrt(sq / (3 * n)) if n else float("nan")
        mse = squared / (3 * count)
        return {
            "accuracy": correct / count,
            "position_mse": mse,
            "position_rmse": math.sqrt(mse),
            "position_mean_distance": distance / count,
            "per_class_accuracy": per_class_accuracy,
            "per_class_position_rmse": per_class_rmse,
            "samples": int(count),
            "losses": {name: value / count for name, value in self.loss_sums.items()},
        }
