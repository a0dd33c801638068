"""Queued experiments, one per backbone of the registry, with `dvc queue start -j 2` against `-j 1`.

    python bench/dvc_queue.py                    # 400 samples, 2 epochs, default model sizes
    python bench/dvc_queue.py --samples 200 --epochs 1

Each run uses a fresh throw-away git + DVC repository holding this checkout's pipeline and code,
with the data generated and committed first (as a user would before queueing), so the timed part
is the experiments: training + evaluation, DVC's bookkeeping included. With train.threads 0
every training takes its share of the cores (runtime/devices.py). Prints the wall times, their ratio and
`trajvid status` timings taken while the queue runs and the time of `trajvid report` afterwards
(over one experiment per backbone, then over twice as many after as many more with another
learning rate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from trajvid.backbones import BACKBONES

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def make_repo(path: Path, samples: int, epochs: int, env: dict) -> None:
    path.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["num_samples"] = samples
    params["train"].update(epochs=epochs, num_workers=0, threads=0)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["dvc", "repro", "generate", "baseline"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        sh(cmd, path, env)


def run_queue(repo: Path, jobs: int, env: dict, suffix: str = "", extra: list[str] = ()) -> tuple[float, list[float]]:
    for name in BACKBONES:
        sh(["dvc", "exp", "run", "--queue", "-n", f"{name}-j{jobs}{suffix}", "-S", f"model={name}", *extra], repo, env)
    start = time.perf_counter()
    # not through a pipe: the queue's detached workers would hold it open until the queue is empty
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_times = []
    while True:
        t = time.perf_counter()
        shown = sh([sys.executable, "-m", "trajvid", "status", "--json"], repo, env)
        status_times.append(time.perf_counter() - t)
        if '"queued"' not in shown and '"running"' not in shown and time.perf_counter() - start > 20:
            break
        time.sleep(5)
    wall = time.perf_counter() - start
    failed = shown.count('"failed"')
    if failed:
        raise SystemExit(f"{failed} experiments failed with -j {jobs}; see `dvc queue logs` in {repo}")
    return wall, status_times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # dvc of this environment
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@trajvid.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@trajvid.invalid"}
    walls = {}
    with tempfile.TemporaryDirectory(prefix="trajvid-queue-") as tmp:
        for jobs in (2, 1):
            repo = Path(tmp) / f"j{jobs}"
            make_repo(repo, args.samples, args.epochs, env)
            walls[jobs], status_times = run_queue(repo, jobs, env)
            t = time.perf_counter()
            sh([sys.executable, "-m", "trajvid", "report"], repo, env)
            report_s = time.perf_counter() - t
            print(f"-j {jobs}: trajvid report over the {len(BACKBONES)} experiments: {report_s:.1f} s", flush=True)
            print(f"-j {jobs}: {len(BACKBONES)} experiments ({args.samples} samples, {args.epochs} epochs, default sizes) in "
                  f"{walls[jobs]:.0f} s wall; trajvid status took {min(status_times):.2f}-{max(status_times):.2f} s "
                  f"({len(status_times)} calls)", flush=True)
        # as many more (another learning rate) in the last repository: `trajvid report` over twice as many
        run_queue(repo, 1, env, suffix="-lr5e-4", extra=["-S", "train.learning_rate=0.0005"])
        t = time.perf_counter()
        sh([sys.executable, "-m", "trajvid", "report"], repo, env)
        print(f"trajvid report over {2 * len(BACKBONES)} experiments: {time.perf_counter() - t:.1f} s", flush=True)
    print(f"-j 2 / -j 1 wall time: {walls[2] / walls[1]:.2f}")


if __name__ == "__main__":
    main()
