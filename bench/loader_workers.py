"""DataLoader worker processes against compute threads, in real training epochs.

    python bench/loader_workers.py                         # i3d, train.num_workers 0 and 2, 2 rounds
    python bench/loader_workers.py --backbone frame2d --workers 0 1 2 --rounds 3

`train.num_workers` processes decode videos beside `train.threads` compute threads; on 2 cores
they compete for the same cores. This trains the same configuration (params.yaml's, with
--samples samples, --epochs epochs and train.threads 2) once per worker count per round, the
order reversed every other round (this machine's rate drifts between runs by more than many
changes gain), and prints each run's train samples/s (the train epochs' own time, data loading
included, validation not) and the sha256 of the weights it wrote. The worker count is a runtime
setting: it must not change what is computed, so every run, of every worker count and round,
must write the same weights; the script exits 1 if any differ. Runs start in --workdir (their
`.trajvid/` heartbeat stays there, away from a training of the repository).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from full_run import dataset, source_env  # bench/ is this script's directory: on sys.path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="i3d")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2000, help="dataset size (train split: 80 %%)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=".bench-workers")
    args = parser.parse_args()

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] = args.backbone
    params["data"]["num_samples"] = args.samples
    params["train"].update({"epochs": args.epochs, "threads": args.threads})
    env = source_env()
    trajvid = [sys.executable, "-m", "trajvid"]

    data = dataset(work, params, env)

    print(f"{args.backbone}, {args.samples} samples ({int(args.samples * 0.8)} to train on), {args.epochs} "
          f"epoch(s), batch {params['train']['batch_size']}, train.threads {args.threads}, fp32; "
          f"{os.cpu_count()} CPUs", flush=True)
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    weights: dict[int, set[str]] = {w: set() for w in args.workers}
    for round_ in range(args.rounds):
        order = args.workers if round_ % 2 == 0 else args.workers[::-1]
        for workers in order:
            params["train"]["num_workers"] = workers
            params_file = work / f"params-{workers}.yaml"
            params_file.write_text(yaml.safe_dump(params))
            out = work / f"models-{workers}"
            shutil.rmtree(out, ignore_errors=True)  # no checkpoint to resume from
            start = time.perf_counter()
            subprocess.run([*trajvid, "train", "--no-progress", "--live", "none", "--params", str(params_file),
                            "--data", str(data), "--out", str(out)], check=True, env=env, cwd=work,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            training = json.loads((out / "config.json").read_text())["training"]
            digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:16]
            rates[workers].append(training["samples_per_s"])
            weights[workers].add(digest)
            print(f"round {round_ + 1}  num_workers {workers}: {training['samples_per_s']:6.1f} train samples/s "
                  f"({training['time_s']:.1f} s of train epochs, {wall:.1f} s wall with validation and start-up), "
                  f"weights {digest}", flush=True)
    print("median train samples/s: " + ", ".join(f"num_workers {w}: {statistics.median(r):.1f}" for w, r in rates.items()))
    digests = set().union(*weights.values())
    print(f"weights identical across worker counts and rounds: {'yes' if len(digests) == 1 else 'NO: ' + str(weights)}")
    sys.exit(0 if len(digests) == 1 else 1)


if __name__ == "__main__":
    main()
