"""One GPU per run: a training claims a free GPU before CUDA starts, so that queued experiments
(`dvc queue start -j 4`) spread over the machine's GPUs instead of all landing on GPU 0.

DVC starts every queued experiment with the same environment (treeverse/dvc#4586), so the choice
is made here, at run time, and it is not a DVC param: which of several identical GPUs a run uses
does not change its result or its identity.

A claim is a kernel lock (`fcntl.flock`) on a file named after the GPU's UUID in a machine-local
directory. The kernel drops it when the process ends, however it ends (SIGKILL and crashes
included), so no claim goes stale and nothing needs cleaning up. A run that finds every GPU
claimed waits, saying so, until one is free or `TRAJVID_GPU_WAIT_S` seconds have passed.

Only GPUs in an outer `CUDA_VISIBLE_DEVICES` are considered; its indices are read in
nvidia-smi's (PCI bus) order, which is CUDA's too where `CUDA_DEVICE_ORDER=PCI_BUS_ID` or all GPUs
are of one model (CUDA's default puts the fastest first); UUIDs are unambiguous, and a claim sets
`CUDA_VISIBLE_DEVICES` to the claimed GPU's UUID. A run started by torchrun or
`accelerate launch` on several processes claims nothing: its launcher assigns devices by local rank.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trajvid.errors import TrajvidError
from trajvid.runtime.devices import open_lock_file

LOCK_DIR_ENV = "TRAJVID_GPU_LOCK_DIR"
WAIT_ENV = "TRAJVID_GPU_WAIT_S"
DEFAULT_WAIT_S = 24 * 3600.0  # a queued run may wait for the runs ahead of it
POLL_S = 2.0

_held: list = []  # open lock files of this process's claims: closing them releases the claims


class NoFreeGPU(TrajvidError):
    """Every GPU stayed claimed by other runs for longer than the wait allowed."""


@dataclass(frozen=True)
class GPU:
    index: int  # as nvidia-smi numbers it (the machine's numbering)
    uuid: str  # GPU-xxxxxxxx-...: stable, and what the lock file is named after


def lock_dir() -> Path:
    """Machine-local: every run on this machine must see the same locks."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "trajvid-gpu-locks")


def list_gpus() -> list[GPU]:
    """The machine's NVIDIA GPUs, from nvidia-smi (which does not start CUDA in this process)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return []  # no driver or no GPU: a CPU machine
    gpus = []
    for line in out.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit() and uuid:
            gpus.append(GPU(int(index), uuid))
    return gpus


def visible(gpus: list[GPU], cuda_visible_devices: str | None) -> list[GPU]:
    """The GPUs that an outer CUDA_VISIBLE_DEVICES (indices or UUIDs, comma-separated) leaves, in its order."""
    if cuda_visible_devices is None:
        return list(gpus)
    chosen = []
    for item in (part.strip() for part in cuda_visible_devices.split(",")):
        if not item:
            continue
        match = [g for g in gpus if (item.isdigit() and g.index == int(item)) or
                 (not item.isdigit() and g.uuid.startswith(item))]
        if not match:
            break  # CUDA ignores every entry after an invalid one; so do we
        chosen.extend(g for g in match if g not in chosen)
    return chosen


def try_claim(gpu: GPU, directory: Path) -> object | None:
    """An open, locked file if `gpu` was free (keep it open to keep the claim), else None."""
    handle = open_lock_file(directory / f"{gpu.uuid}.lock")  # usable by every user of the machine
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    try:  # for people looking; the lock, not this number, is the claim
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError:
        pass  # opened read-only: another user's file
    return handle


def claim(count: int = 1, gpus: list[GPU] | None = None, environ: dict | None = None,
          wait_s: float | None = None, say=None) -> list[GPU]:
    """Claim `count` free GPUs and point CUDA_VISIBLE_DEVICES at them (in `environ`, by default
    os.environ); returns them. A no-op (returns []) on a machine without GPUs or in a multi-process
    launch. Waits while all are claimed; raises NoFreeGPU after `wait_s`."""
    environ = os.environ if environ is None else environ
    if (environ.get("WORLD_SIZE") or "1").strip() not in ("1", "0"):
        return []  # a multi-process launch: its launcher assigns devices by local rank
    gpus = visible(list_gpus() if gpus is None else gpus, environ.get("CUDA_VISIBLE_DEVICES"))
    if not gpus:
        return []
    if count > len(gpus):
        raise NoFreeGPU(f"{count} GPUs asked for, but only {len(gpus)} are visible here")
    wait_s = float(environ.get(WAIT_ENV, DEFAULT_WAIT_S)) if wait_s is None else wait_s
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    directory = lock_dir()
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        claimed = []
        for gpu in gpus:
            handle = try_claim(gpu, directory)
            if handle is not None:
                claimed.append((gpu, handle))
                if len(claimed) == count:
                    break
        if len(claimed) == count:
            _held.extend(handle for _, handle in claimed)
            chosen = [gpu for gpu, _ in claimed]
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu.uuid for gpu in chosen)
            say(f"using GPU {', '.join(str(g.index) for g in chosen)} ({', '.join(g.uuid for g in chosen)})")
            return chosen
        for _, handle in claimed:  # not enough: give back the partial claim, so two runs cannot deadlock
            handle.close()
        if time.monotonic() >= deadline:
            raise NoFreeGPU(
                f"no free GPU after waiting {wait_s:.0f} s: all {len(gpus)} are claimed by other trajvid runs "
                f"(locks in {directory}); raise {WAIT_ENV} or run fewer jobs at once"
            )
        if not announced:
            say(f"waiting for a free GPU: all {len(gpus)} are claimed by other trajvid runs (locks in {directory})")
            announced = True
        time.sleep(POLL_S)


def release() -> None:
    """Give back this process's claims (they also end with the process)."""
    while _held:
        _held.pop().close()
