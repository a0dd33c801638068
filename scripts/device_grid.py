"""The study's grid on a machine that is not this one (a GPU machine lent for minutes): real
`dvc repro` runs of the missing cells, several at once, brought back as one bundle that
`trajvid collect --bundle` turns into run records here.

On the device machine (no git there, DVC in no-SCM mode; DVC and DVCLive travel as wheels:
docs/usage.md, "A GPU session"):

    python3 scripts/device_grid.py run --revision <commit> --parallel 5 --budget-s 480 --out $OUT

Here, afterwards, on the commit the device ran:

    trajvid collect --bundle <the fetched grid.tar.gz> && trajvid report --publish

`run` generates the dataset and the shifted sets once (every cell restores them from the shared
DVC cache), checks that the dataset is byte for byte the one the records here were scored on,
then runs each cell as a `dvc repro` in a copy of its own, with params.yaml's protocol and the
cell's backbone, head and training seed. Cells go in the study's order (keypoints × every
network × seed 0, then seeds 1 and 2, then the pooled head likewise), skipping those already
recorded on the same kind of device; the first wave starts at once, and later a cell starts only
while the time left exceeds the longest run of its backbone so far (of any backbone, for one not
run yet). The bundle (`grid.tar.gz`: each finished cell's dvc.lock, params.yaml,
models/config.json, metrics/ and dvclive/; a manifest with the SHA-256 of every code file, the
device and every cell's outcome) is rewritten after each cell, and on SIGTERM or the time limit
the running cells are ended, so a stop keeps every finished run. Runs on one GPU share it: each has its own GPU-claim directory
(runtime/gpus.py), so none waits for another.

    python3 scripts/device_grid.py run --cells i3d:keypoints:0,frame2d:pooled:1 ...   # chosen cells
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this repository's code, installed or not
# what a cell's bundle keeps (what `trajvid collect --bundle` reads, never data or models), the code
# files whose SHA-256 the manifest holds, and the grid: the readers of both say
from trajvid.data.shards import dataset_fingerprint  # noqa: E402
from trajvid.tools.records import BUNDLE_CODE as CODE  # noqa: E402
from trajvid.tools.records import BUNDLE_FILES, BUNDLE_FOLDERS, device_kind  # noqa: E402
from trajvid.tools.study import HEADS, SEEDS, networks, protocol  # noqa: E402

BUNDLE = "grid.tar.gz"
FORMAT = 1

# never copied into a run's directory: paths from the repository's root, then names anywhere
SKIPPED = {".git", ".venv", ".whl", ".gl", ".device", ".fullrun", "reports", ".pytest_cache", ".ruff_cache", ".trajvid",
           "data/trajectories", "data/robustness", "models/model.safetensors", "models/config.json",
           "models/checkpoints", ".dvc/cache", ".dvc/tmp", ".dvc/config.local"}
SKIPPED_NAMES = {"__pycache__"}


def skipping(top: Path, paths: set[str]):
    """A copytree `ignore` that leaves out `paths` (relative to `top`) and SKIPPED_NAMES."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).resolve().relative_to(top.resolve())
        return {n for n in names if n in SKIPPED_NAMES or n.endswith(".egg-info") or (here / n).as_posix() in paths}
    return ignore


def study_order(networks: list[str]) -> list[tuple[str, str, int]]:
    """The issue's order: a partial grid already says most."""
    return [(b, h, s) for h in HEADS for s in SEEDS for b in networks]


def protocol_runs(root: Path, params: dict) -> list[tuple[tuple[str, str], dict]]:
    """((backbone, head), run.json) of every record here of params.yaml's protocol."""
    cells = protocol(params)
    runs = [json.loads(p.read_text()) for p in sorted((root / "results" / "runs").glob("*/run.json"))]
    return [(cells[run["config_fingerprint"]], run) for run in runs if run.get("config_fingerprint") in cells]


def recorded_cells(root: Path, params: dict, kind: str) -> set[tuple[str, str, int]]:
    """(backbone, head, seed) of the records here of params.yaml's protocol on this kind of device."""
    return {(*cell, run["train_seed"]) for cell, run in protocol_runs(root, params)
            if device_kind(run) == kind and run.get("train_seed") in SEEDS}


def expected_data(root: Path, params: dict) -> str | None:
    """The data fingerprint of the records here of params.yaml's protocol (None: no record yet)."""
    return next((run["data_fingerprint"] for _, run in protocol_runs(root, params)), None)


def code_hashes(root: Path) -> dict[str, str]:
    out = {}
    for name in CODE:
        path = root / name
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts))  # what pip's install writes there
        for f in files:
            out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    return ", ".join(names) or "cpu"


class Grid:
    def __init__(self, args):
        self.args, self.started = args, time.time()
        self.root = Path(args.repo).resolve()
        self.work = Path(args.work).resolve()
        self.out = Path(args.out).resolve()
        self.bin = self.work / "bin"
        self.cells: dict[str, dict] = {}
        self.bundled: dict[str, dict[str, bytes]] = {}
        self.manifest = {"format": FORMAT, "revision": args.revision, "code": code_hashes(self.root),
                         "device": device_name(), "python": sys.version.split()[0], "cells": self.cells,
                         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))}

    # -- the environment every stage runs in ------------------------------------------------------
    def env(self, where: Path) -> dict:
        site = os.environ.get("PYTHONPATH", "")
        return {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONPATH": f"{where / 'src'}{os.pathsep}{site}", "DVC_NO_ANALYTICS": "1",
                "GIT_PYTHON_REFRESH": "quiet",  # no git there: GitPython must not refuse to import
                "TRAJVID_GPU_LOCK_DIR": str(where / ".gpu-claims"), "PYTHONUNBUFFERED": "1"}

    def commands(self) -> None:
        """`trajvid` and `dvc` on PATH as this interpreter's modules (nothing installed)."""
        self.bin.mkdir(parents=True, exist_ok=True)
        for name, module in (("trajvid", "trajvid"), ("dvc", "dvc")):
            script = self.bin / name
            script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
            script.chmod(0o755)

    def dvc(self, where: Path, *args: str, log=None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin / "dvc"), *args], cwd=where, env=self.env(where), text=True,
                                stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT)
        if check and result.returncode != 0:
            raise SystemExit(f"error: `dvc {' '.join(args)}` failed in {where}:\n{(result.stdout or '')[-3000:]}")
        return result

    # -- the shared base: data, shifted sets and the baseline, once -------------------------------
    def base(self, params: dict) -> Path:
        base = self.work / "base"
        if base.exists():
            shutil.rmtree(base)
        shutil.copytree(self.root, base, ignore=skipping(self.root, SKIPPED), symlinks=True)
        self.dvc(base, "config", "--local", "core.no_scm", "true")
        self.dvc(base, "cache", "dir", "--local", str(self.work / "cache"))
        self.dvc(base, "config", "--local", "cache.type", "hardlink,copy")
        runtime = dict(params)
        runtime["data"] = {**params["data"], "workers": self.args.data_workers}
        (base / "params.yaml").write_text(yaml.safe_dump(runtime, sort_keys=False))
        start = time.time()
        with open(self.work / "base.log", "w") as log:
            result = self.dvc(base, "repro", "--glob", "baseline", "shift@*", log=log, check=False)
        if result.returncode != 0:
            raise SystemExit(f"error: generating the data failed; see {self.work / 'base.log'}:\n"
                             + (self.work / "base.log").read_text()[-3000:])
        self.manifest["data_s"] = round(time.time() - start, 1)
        print(f"data, shifted sets and baseline: {self.manifest['data_s']:.0f} s", flush=True)
        self.manifest["data_fingerprint"] = dataset_fingerprint(base / "data" / "trajectories")
        return base

    # -- one cell --------------------------------------------------------------------------------
    def prepare(self, base: Path, params: dict, cell: tuple[str, str, int]) -> Path:
        backbone, head, seed = cell
        where = self.work / "cells" / name_of(cell)
        if where.exists():
            shutil.rmtree(where)
        shutil.copytree(base, where, symlinks=True, ignore=skipping(base, {"data", ".dvc/tmp", ".trajvid"}))
        shutil.copytree(base / "data", where / "data", copy_function=os.link)  # DVC's cache files: read-only, shared
        chosen = json.loads(json.dumps(params))
        chosen["model"] = backbone
        chosen["head"] = {**chosen["head"], "type": head}
        chosen["train"] = {**chosen["train"], "seed": seed, "threads": self.args.threads,
                           "num_workers": self.args.num_workers}
        chosen["data"] = {**chosen["data"], "workers": self.args.data_workers}
        (where / "params.yaml").write_text(yaml.safe_dump(chosen, sort_keys=False))
        return where

    def keep(self, cell: tuple[str, str, int], where: Path) -> None:
        paths = [where / name for name in BUNDLE_FILES if (where / name).is_file()]
        paths += sorted(p for name in BUNDLE_FOLDERS for p in (where / name).rglob("*") if p.is_file())
        self.bundled[name_of(cell)] = {p.relative_to(where).as_posix(): p.read_bytes() for p in paths}

    def write_bundle(self) -> None:
        self.manifest["wall_s"] = round(time.time() - self.started, 1)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(self.started), 0o644
                tar.addfile(info, io.BytesIO(data))
            add("manifest.json", (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode())
            for cell, files in sorted(self.bundled.items()):
                for path, data in files.items():
                    add(f"cells/{cell}/{path}", data)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{BUNDLE}.tmp"
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(self.out / BUNDLE)  # whole or not at all

    def reap(self, entry) -> None:
        """A cell's process has ended: keep its files (exit 0) or its log's end."""
        cell, proc, began, where = entry
        seconds = time.time() - began
        if proc.returncode == 0:
            self.longest[cell[0]] = max(self.longest.get(cell[0], 0.0), seconds)
            self.keep(cell, where)
            self.cells[name_of(cell)] = {"state": "finished", "seconds": round(seconds, 1)}
        else:
            self.failed += proc.returncode != 0
            log = (where / "run.log").read_text(errors="replace")
            self.cells[name_of(cell)] = {"state": f"failed (exit {proc.returncode})", "seconds": round(seconds, 1),
                                         "log": log[-2000:]}
        print(f"{name_of(cell)}: {self.cells[name_of(cell)]['state']} in {seconds:.0f} s", flush=True)
        self.write_bundle()
        shutil.rmtree(where / "data", ignore_errors=True)

    def stop(self, why: str) -> None:
        """End every running cell (SIGTERM, then SIGKILL after 30 s): what finished meanwhile is kept."""
        for entry in list(self.running):
            cell, proc, began, where = entry
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                self.cells[name_of(cell)] = {"state": why, "seconds": round(time.time() - began, 1)}
                print(f"{name_of(cell)}: {why}", flush=True)
            else:
                self.reap(entry)
        self.running = []
        self.write_bundle()

    def fits(self, backbone: str, left: float) -> bool:
        """Whether a run of `backbone` would end in the time left: its longest run so far and a tenth
        more; one never run here yet, the longest of any backbone (at first, every one may start)."""
        estimate = self.longest.get(backbone, max(self.longest.values(), default=0.0))
        return estimate * 1.1 < left

    def run(self) -> int:
        args = self.args
        params = yaml.safe_load((self.root / "params.yaml").read_text())
        import torch

        if self.manifest["device"] != "cpu" and not torch.cuda.is_available():
            print(f"error: nvidia-smi lists {self.manifest['device']} but torch {torch.__version__} sees no CUDA device",
                  file=sys.stderr)
            return 2
        kind = "cuda" if torch.cuda.is_available() else "cpu"
        self.manifest["torch"] = torch.__version__
        if args.cells:
            todo = list(dict.fromkeys(parse_cell(c, networks(params)) for c in args.cells.split(",")))
        else:
            done = recorded_cells(self.root, params, kind)
            todo = [c for c in study_order(list(networks(params))) if c not in done]
        print(f"{len(todo)} cells to run on {self.manifest['device']}: {', '.join(map(name_of, todo))}", flush=True)
        self.commands()
        self.work.mkdir(parents=True, exist_ok=True)
        self.write_bundle()
        self.longest, self.running, self.failed = {}, [], 0

        def terminated(signum, frame):  # the device tool's time limit: keep what finished, leave no orphan
            self.stop("stopped by a signal")
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminated)
        base = self.base(params)
        expected = expected_data(self.root, params)
        if expected and expected != self.manifest["data_fingerprint"]:
            self.manifest["error"] = (f"this machine generated other data bytes (fingerprint "
                                      f"{self.manifest['data_fingerprint'][:12]}, the records' {expected[:12]}): "
                                      "its runs would not compare with them")
            self.write_bundle()
            print(f"error: {self.manifest['error']}", file=sys.stderr)
            return 2
        deadline = self.started + args.budget_s
        while todo or self.running:
            for entry in list(self.running):
                if entry[1].poll() is not None:
                    self.running.remove(entry)
                    self.reap(entry)
            left = deadline - time.time()
            while len(self.running) < args.parallel:
                cell = next((c for c in todo if self.fits(c[0], left)), None)  # the first in the study's order that fits
                if cell is None:
                    break
                todo.remove(cell)
                where = self.prepare(base, params, cell)
                with open(where / "run.log", "w") as log:  # the process keeps its own copy of the descriptor
                    proc = subprocess.Popen([str(self.bin / "dvc"), "repro"], cwd=where, env=self.env(where),
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                self.running.append((cell, proc, time.time(), where))
                print(f"{name_of(cell)}: started ({len(self.running)} running, {left:.0f} s left)", flush=True)
            if not self.running and todo:
                break  # nothing left that fits
            if time.time() > deadline:
                self.stop("stopped at the time limit")
                break
            time.sleep(2)
        for cell in todo:
            self.cells.setdefault(name_of(cell), {"state": "not started (no time left)"})
        if dataset_fingerprint(base / "data" / "trajectories") != self.manifest["data_fingerprint"]:
            self.manifest["error"] = "the shared dataset changed while the cells ran"  # hard links: one copy for all
        self.write_bundle()
        finished = sum(c["state"] == "finished" for c in self.cells.values())
        print(f"{finished} cells finished, {self.failed} failed, in {time.time() - self.started:.0f} s; "
              f"bundle {self.out / BUNDLE}" + (f"; error: {self.manifest['error']}" if "error" in self.manifest else ""),
              flush=True)
        return 1 if self.failed or "error" in self.manifest else 0


def name_of(cell: tuple[str, str, int]) -> str:
    backbone, head, seed = cell
    return f"{backbone}-{head}-seed{seed}"


def parse_cell(text: str, networks) -> tuple[str, str, int]:
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] not in networks or parts[1] not in HEADS or parts[2] not in {str(s) for s in SEEDS}:
        raise SystemExit(f"error: cell {text!r} is not backbone:head:seed with a backbone of {', '.join(networks)}, "
                         f"a head of {', '.join(HEADS)} and a seed of {', '.join(map(str, SEEDS))}")
    return parts[0], parts[1], int(parts[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the missing cells here and write the bundle")
    run.add_argument("--revision", required=True, help="the commit this copy of the repository is (`git rev-parse HEAD` "
                     "where it was sent from): `trajvid collect --bundle` checks every code file against it")
    run.add_argument("--cells", help="backbone:head:seed,... [default: the study's cells not recorded on this kind of device]")
    run.add_argument("--parallel", type=int, default=4, help="cells at once (they share the GPU)")
    run.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for everything")
    run.add_argument("--threads", type=int, default=2, help="train.threads of each cell")
    run.add_argument("--num-workers", type=int, default=2, help="train.num_workers of each cell")
    run.add_argument("--data-workers", type=int, default=0, help="data.workers (0: one per core)")
    run.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                     help="the repository whose params.yaml and code run [default: this script's]")
    run.add_argument("--work", default="/tmp/trajvid-grid")
    run.add_argument("--out", required=True, help="where grid.tar.gz is written")
    args = parser.parse_args()
    return Grid(args).run()


if __name__ == "__main__":
    sys.exit(main())
