"""The one inference loop: trained models over a split, in order, batch by batch.

`evaluate` runs it with one model, `trajvid ensemble` with several on one pass over the data
(each video decoded once for all of them).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader


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
