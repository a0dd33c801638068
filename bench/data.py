"""Generation speed, size on disk, file count, peak memory, and loader throughput.

    python bench/data.py                      # 10,000 samples (the default dataset)
    python bench/data.py --num-samples 30000  # peak memory must not grow with the dataset

Peak memory is the largest sum of the resident set sizes of the generating process and its
workers, sampled every 50 ms. The loader figures decode every training sample once through a
DataLoader (batch 16) with 0, 1 and 2 worker processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def tree_rss(pid: int) -> int:
    return rss_bytes(pid) + sum(tree_rss(c) for c in children(pid))


def _generate(num_samples: int, out: str) -> None:
    from trajvid.generate import generate
    from trajvid.params import DataParams

    generate(42, DataParams(num_samples=num_samples), out, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--out", help="where to write the dataset (default: a temporary directory)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="trajvid-bench-")
    out = Path(args.out or tmp.name) / "trajectories"
    process = multiprocessing.get_context("fork").Process(target=_generate, args=(args.num_samples, str(out)))
    peak = 0
    start = time.perf_counter()
    process.start()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process.join()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if process.exitcode != 0:
        raise SystemExit(f"generation failed with exit code {process.exitcode}")

    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"generate {args.num_samples} samples: {seconds:.1f} s wall ({args.num_samples / seconds:.0f} samples/s), "
          f"{os.cpu_count()} cores")
    print(f"on disk: {size / 1e6:.1f} MB in {len(files)} files ({size / args.num_samples / 1e3:.1f} KB/sample)")
    print(f"peak memory (generator + workers): {peak / 2**20:.0f} MiB")

    import torch

    from trajvid.data.shards import open_split

    train = open_split(out, "train")
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(train, batch_size=16, num_workers=workers)
        start = time.perf_counter()
        count = sum(len(batch["label"]) for batch in loader)
        seconds = time.perf_counter() - start
        print(f"loader, {workers} workers: {count / seconds:.0f} decoded samples/s (batches of 16, uint8 tensors)")


if __name__ == "__main__":
    main()
