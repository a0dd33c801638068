"""Per backbone: parameters, train (forward+backward+AdamW step) and inference samples/s, GFLOP
per sample, achieved GFLOP/s and utilisation against this machine's own best rates, peak memory.

    python bench/models.py                       # every backbone, CPU, fp32, batch 16
    python bench/models.py --backbone magvit --steps 5
    python bench/models.py --bf16                # bf16 autocast (utilisation against the bf16 peak)
    python bench/models.py --profile             # + the top ops by self CPU time of a train step
    python bench/models.py --compile             # the backbone's encoder under torch.compile (inductor)
    python bench/models.py --device cuda --bf16  # on a GPU machine

Each backbone runs in its own process so that its peak memory (max RSS on CPU,
max_memory_allocated on CUDA) is its own. Inputs are random uint8 videos of the stored shape;
the timing excludes 2 warm-up steps.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts (matrix products and
convolutions, forward and backward; elementwise work and the optimizer are not counted), under
the MATH attention backend: torch 2.13 counts the CPU flash-attention kernel as zero. The
machine's best rates are measured in the same run, before the backbones: a 4096 x 4096 matrix
product and a 3 x 3 x 3 convolution (64 -> 64 channels, 8 x 16 x 32 x 32), in fp32 and bf16.
Utilisation = achieved train GFLOP/s / the best of the two rates of the same precision.

With --compile, each backbone's `encode` (everything after the uint8 -> float input fusion, which
stays eager because it writes into a reused buffer) runs under `torch.compile` (inductor; on CPU
it compiles C++ with the system compiler); FLOPs are counted on the eager model, and the first
compiled step's time (compilation of forward and backward) is printed as `compile s`. The eager
and compiled encoders alternate in one process (three rounds of --steps steps each; the median of
each is printed), because this machine's rate drifts between runs by more than many changes gain.
Only train/s is compiled; inference and --profile are measured eager, after the A/B. Peak memory
then covers both encoders and the compilation.

The CPU's model and vector ISA are printed first: sessions land on different CPUs (AMD Zen 5
with AVX512_BF16; AMD Zen 3 with AVX2 only, where bf16 has no native units and its yardsticks
are skipped), and figures compare only on the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def peak_rates(device: str) -> dict:
    """This machine's best measured GFLOP/s for a large matrix product and a large 3D convolution,
    fp32 and bf16 (the yardsticks of utilisation)."""
    import torch
    import torch.nn.functional as F

    def rate(fn, flops: float, repeats: int = 5) -> float:
        fn()  # warm-up (kernel choice, allocation)
        best = float("inf")
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return flops / best / 1e9

    rates = {}
    precisions = [(torch.float32, "fp32")]
    if native_bf16(device):
        precisions.append((torch.bfloat16, "bf16"))
    for dtype, label in precisions:
        a = torch.randn(4096, 4096, device=device, dtype=dtype)
        b = torch.randn(4096, 4096, device=device, dtype=dtype)
        x = torch.randn(8, 64, 16, 32, 32, device=device, dtype=dtype)
        w = torch.randn(64, 64, 3, 3, 3, device=device, dtype=dtype)
        conv_flops = 2 * 8 * 64 * 16 * 32 * 32 * 64 * 27
        rates[f"gemm_{label}"] = rate(lambda: a @ b, 2 * 4096**3)
        rates[f"conv3d_{label}"] = rate(lambda: F.conv3d(x, w, padding=1), conv_flops)
    return {k: round(v, 1) for k, v in rates.items()}


def native_bf16(device: str) -> bool:
    """Whether bf16 matrix products run on native units here. On a CPU without them (AVX2 only,
    e.g. AMD Zen 3) torch 2.13 falls back to a scalar single-threaded GEMM: a 4096 x 4096 bf16
    product then takes minutes, not a second (seen 2026-12-03)."""
    import torch

    return not device.startswith("cpu") or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_name() -> str:
    """The CPU's model name and the vector ISA torch dispatches to (AVX2, AVX512, ...): sessions of
    this project land on different CPUs, and rates compare only on the same one."""
    import torch

    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16('cpu')}"


def profile_step(train_step, rows: int = 15) -> str:
    """The top ops by self CPU time of three train steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def measure(name: str, device: str, bf16: bool, batch: int, steps: int, threads: int, head: str,
            profile: bool = False, compile: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from trajvid.head.multitask import build_model, count_parameters, multitask_loss
    from trajvid.params import HeadParams
    from trajvid.tools.flops import flops_per_sample

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
    forward_gflop, step_gflop = flops_per_sample(model, videos, labels, positions, autocast)

    def timed_rate(n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            train_step()
        sync()
        return batch * n / (time.perf_counter() - start)

    eager_rate = first_step_s = None
    if compile:
        # Interleaved A/B in this one process (this machine's rate drifts by up to ~20 % between
        # runs): eager and compiled encoders alternate, `steps` steps each, three rounds; medians.
        eager_encode = model.backbone.encode
        compiled_encode = torch.compile(eager_encode)
        timed_rate(2)  # eager warm-up
        model.backbone.encode = compiled_encode
        first_step_s = batch / timed_rate(1)  # compiles forward and backward
        timed_rate(1)
        eager_rates, compiled_rates = [], []
        for _ in range(3):
            model.backbone.encode = eager_encode
            eager_rates.append(timed_rate(steps))
            model.backbone.encode = compiled_encode
            compiled_rates.append(timed_rate(steps))
        eager_rate = sorted(eager_rates)[1]
        train_rate = sorted(compiled_rates)[1]
        model.backbone.encode = eager_encode  # inference and the profile below are eager
    else:
        timed_rate(2)  # warm-up
        train_rate = timed_rate(steps)

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
    model.train()
    table = profile_step(train_step) if profile else None
    return {
        "backbone": name,
        "params": count_parameters(model),
        "train_samples_per_s": round(train_rate, 1),
        "infer_samples_per_s": round(infer_rate, 1),
        "forward_gflop_per_sample": round(forward_gflop, 3),
        "train_gflop_per_sample": round(step_gflop, 3),
        "train_gflop_per_s": round(step_gflop * train_rate, 1),
        "infer_gflop_per_s": round(forward_gflop * infer_rate, 1),
        "profile": table,
        "peak_memory_mb": round(peak_mb),
        "device": device,
        "dtype": "bf16" if bf16 else "fp32",
        "compiled": compile,
        "compile_s": None if first_step_s is None else round(first_step_s, 1),
        "eager_train_samples_per_s": None if eager_rate is None else round(eager_rate, 1),
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
    parser.add_argument("--profile", action="store_true", help="print the top ops of a train step per backbone")
    parser.add_argument("--compile", action="store_true", help="run each backbone's encoder under torch.compile")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-peaks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bf16 and not native_bf16(args.device):
        raise SystemExit(f"--bf16 on this CPU ({cpu_name()}): no native bf16 units, torch would use a scalar "
                         "fallback that takes minutes a step; run without --bf16")

    if args.child:
        print(json.dumps(measure(args.backbone[0], args.device, args.bf16, args.batch, args.steps, args.threads, args.head,
                                 args.profile, args.compile)))
        return
    if args.child_peaks:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(peak_rates(args.device)))
        return

    from trajvid.backbones import BACKBONES

    names = args.backbone or list(BACKBONES)
    common = ["--device", args.device, "--threads", str(args.threads)]
    peaks = json.loads(subprocess.run([sys.executable, __file__, "--child-peaks", *common], check=True,
                                      capture_output=True, text=True, env=os.environ).stdout.strip().splitlines()[-1])
    precision = "bf16" if args.bf16 else "fp32"
    best = max(peaks[f"gemm_{precision}"], peaks[f"conv3d_{precision}"])
    if args.json:
        print(json.dumps({"machine_gflop_per_s": peaks, "cpu": cpu_name() if args.device == "cpu" else None}))
    else:
        if args.device == "cpu":
            print(f"CPU: {cpu_name()}")
        print("this machine's best GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in peaks.items())
              + f"; utilisation below is against {best} ({precision})")
        print(f"{'backbone':<12} {'params':>10} {'train/s':>8} {'infer/s':>8} {'GFLOP fwd':>9} {'GFLOP step':>10} "
              f"{'GFLOP/s':>8} {'util':>5} {'peak MB':>8}  device")
    for name in names:
        cmd = [sys.executable, __file__, "--child", "--backbone", name, *common]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--bf16"] if args.bf16 else []
        cmd += ["--profile"] if args.profile else []
        cmd += ["--compile"] if args.compile else []
        cmd += ["--head", args.head]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["utilisation"] = round(row["train_gflop_per_s"] / best, 3)
        profile = row.pop("profile")
        if args.json:
            print(json.dumps({**row, "profile": profile}))
            continue
        print(
            f"{name:<12} {row['params']:>10,} {row['train_samples_per_s']:>8} {row['infer_samples_per_s']:>8} "
            f"{row['forward_gflop_per_sample']:>9} {row['train_gflop_per_sample']:>10} {row['train_gflop_per_s']:>8} "
            f"{row['utilisation']:>5.0%} {row['peak_memory_mb']:>8}  {row['device']} {row['dtype']} batch {row['batch']} "
            f"threads {row['threads']} head {row['head']}"
            + (f" compiled (compile s {row['compile_s']}; eager train/s {row['eager_train_samples_per_s']},"
               " interleaved)" if row["compiled"] else ""), flush=True)
        if profile:
            print(profile, flush=True)


if __name__ == "__main__":
    main()
