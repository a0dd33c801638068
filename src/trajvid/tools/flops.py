"""FLOPs per sample of a model, as `torch.utils.flop_counter.FlopCounterMode` counts them: matrix
products and convolutions, forward and backward; elementwise work and the optimizer are not
counted. Attention is counted on the MATH backend: in torch 2.13 the CPU flash-attention kernel is
not in the counter's registry and would count as zero.

Used by `bench/models.py` (beside every measured rate) and by `trajvid collect` (in each run
record, from the run's architecture alone: no weights are needed).
"""

from __future__ import annotations

import contextlib


def flops_per_sample(model, videos, labels, positions, autocast=None) -> tuple[float, float]:
    """(forward, train step = forward + loss + backward) GFLOP per sample of `model` on this batch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trajvid.head.multitask import multitask_loss

    autocast = autocast or contextlib.nullcontext()
    batch = len(videos)
    with sdpa_kernel(SDPBackend.MATH):
        # with autograd on (under no_grad the counter's module tracker trips on the transformer)
        with autocast, FlopCounterMode(display=False) as forward:
            model(videos)
        with FlopCounterMode(display=False) as step:
            with autocast:
                loss, _ = multitask_loss(model, model(videos, full=True), labels, positions)
            loss.backward()
    model.zero_grad(set_to_none=True)
    return forward.get_total_flops() / batch / 1e9, step.get_total_flops() / batch / 1e9


def architecture_gflop(backbone: str, sizes: dict, head: dict, frames: int = 32, image_size: int = 64,
                       cameras: int = 4) -> dict[str, float]:
    """{"forward", "train_step"} GFLOP per sample of a freshly built model of this architecture
    (the counts do not depend on the weights) on random videos of that size."""
    import torch

    from trajvid.backbones.base import InputSize
    from trajvid.head.multitask import build_model
    from trajvid.params import HeadParams

    with torch.random.fork_rng():
        torch.manual_seed(0)
        size = InputSize(frames=frames, height=image_size, width=image_size, cameras=cameras)
        model = build_model(backbone, HeadParams(**head), size, **sizes)
        model.train()
        batch = 2
        videos = torch.randint(0, 256, (batch, cameras, frames, 3, image_size, image_size), dtype=torch.uint8)
        labels = torch.arange(batch) % 4
        positions = torch.rand(batch, frames + 1, 3) * 2 - 1
        forward, step = flops_per_sample(model, videos, labels, positions)
    return {"forward": forward, "train_step": step}
