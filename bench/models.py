"""Per backbone: parameters, train (forward+backward+AdamW step) and inference samples/s, peak memory.

    python bench/models.py                       # every backbone, CPU, fp32, batch 16
    python bench/models.py --backbone magvit --steps 5
    python bench/models.py --device cuda --bf16  # on a GPU machine

Each backbone runs in its own process so that its peak memory (max RSS on CPU,
max_memory_allocated on CUDA) is its own. Inputs are random uint8 videos of the stored shape;
the timing excludes 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(name: str, device: str, bf16: bool, batch: int, steps: int, threads: int, head: str) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from trajvid.head.multitask import build_model, count_parameters, multitask_loss
    from trajvid.params import HeadParams

    torch.manual_seed(0)
    model = build_model(name, HeadParams(type=head)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    videos = torch.randint(0, 256, (batch, 4, 32, 3, 64, 64), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 4, (batch,), device=device)
    positions = torch.rand(batch, 33, 3, device=device) * 2 - 1
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def train_step():
        with autocast:
            loss, _ = multitask_loss(model, model(videos, full=True), labels, positions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(2):
        train_step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_rate = batch * steps / (time.perf_counter() - start)

    model.eval()
    with torch.no_grad(), autocast:
        for _ in range(2):
            model(videos)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model(videos)
        sync()
    infer_rate = batch * steps / (time.perf_counter() - start)

    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "backbone": name,
        "params": count_parameters(model),
        "train_samples_per_s": round(train_rate, 1),
        "infer_samples_per_s": round(infer_rate, 1),
        "peak_memory_mb": round(peak_mb),
        "device": device,
        "dtype": "bf16" if bf16 else "fp32",
        "head": head,
        "batch": batch,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", action="append", help="default: every backbone")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--head", default="keypoints", choices=["keypoints", "pooled"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--json", action="store_true", help="print one JSON object per backbone")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.backbone[0], args.device, args.bf16, args.batch, args.steps, args.threads, args.head)))
        return

    from trajvid.backbones import BACKBONES

    names = args.backbone or list(BACKBONES)
    header = f"{'backbone':<12} {'params':>10} {'train/s':>8} {'infer/s':>8} {'peak MB':>8}  device"
    if not args.json:
        print(header)
    for name in names:
        cmd = [sys.executable, __file__, "--child", "--backbone", name, "--device", args.device]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
        cmd += ["--bf16"] if args.bf16 else []
        cmd += ["--head", args.head]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{name:<12} {row['params']:>10,} {row['train_samples_per_s']:>8} {row['infer_samples_per_s']:>8} "
                f"{row['peak_memory_mb']:>8}  {row['device']} {row['dtype']} batch {row['batch']} threads {row['threads']} "
                f"head {row['head']}"
            )


if __name__ == "__main__":
    main()
