"""The one inference loop: trained models over a split, in order, batch by batch.

`evaluate` and `robustness` run it with one model (`predict`), `trajvid ensemble` with several
on one pass over the data (each video decoded once for all of them).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from trajvid.data.scene import CLASS_NAMES
from trajvid.metrics import SplitMetrics


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def outputs(models: list[torch.nn.Module], dataset, batch_size: int = 32,
            num_workers: int = 2) -> Iterator[tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """For each batch of `dataset` in order: the batch (on the CPU) and, per model, its logits
    (B, 4) and next positions (B, 3) on the device. The models are moved to the device."""
    where = device()
    for model in models:
        model.to(where)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        video = batch["video"].to(where)
        yield batch, [model(video) for model in models]


# The per-sample file's columns, all float32 but the first two: the sample, its class index, the
# model's class probabilities, its next position, the true next position (row 32) and the last
# visible one (row 31, what copying the last position predicts), in world units.
PREDICTION_COLUMNS = ("sample_id", "label", *(f"prob_{name}" for name in CLASS_NAMES),
                      "next_x", "next_y", "next_z", "target_x", "target_y", "target_z", "last_x", "last_y", "last_z")


def predict(model, dataset, batch_size: int = 32,
            num_workers: int = 2) -> tuple[SplitMetrics, list[dict], dict[str, np.ndarray]]:
    """The figures of `dataset`, one {actual, predicted} row per sample and the per-sample
    predictions (`PREDICTION_COLUMNS`)."""
    metrics, confusion, ids, labels, values = SplitMetrics(), [], [], [], []
    for batch, [(logits, position)] in outputs([model], dataset, batch_size, num_workers):
        label = batch["label"]
        metrics.add(logits, label, position, batch["positions"][:, -1].to(position.device))
        confusion += [{"actual": CLASS_NAMES[a], "predicted": CLASS_NAMES[p]}
                      for a, p in zip(label.tolist(), logits.argmax(-1).cpu().tolist())]
        ids.append(batch["sample_id"].numpy())
        labels.append(label.numpy())
        values.append(np.concatenate([logits.float().softmax(-1).cpu().numpy(), position.float().cpu().numpy(),
                                      batch["positions"][:, -1].numpy(), batch["positions"][:, -2].numpy()], axis=1))
    values = np.concatenate(values).astype(np.float32)
    table = {"sample_id": np.concatenate(ids).astype(np.int64), "label": np.concatenate(labels).astype(np.int8)}
    table.update({name: values[:, i] for i, name in enumerate(PREDICTION_COLUMNS[2:])})
    return metrics, confusion, table
