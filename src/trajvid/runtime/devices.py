"""Where computation runs: the number of CPU threads torch uses, shared among the trainings of
one machine.

With `train.threads: 0` every training takes an equal share of the cores: it holds a slot (a
kernel lock on a file in a machine-local directory, dropped when the process ends however it
ends) and, at the start of every epoch, counts the slots held, i.e. the trainings running here.
Two queued experiments (`dvc queue start -j 2`) on 2 cores then use 1 thread each instead of
2 + 2 fighting over 2 cores, and the survivor takes both cores once the other ends.

The thread count changes the order of floating-point sums, so a run's figures are bitwise
reproducible only for the same count: set `train.threads` to a number for that (config.json
records the counts used).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

SLOTS_DIR_ENV = "TRAJVID_CPU_SLOTS_DIR"
MAX_SLOTS = 64

_slot = None  # this process's slot: an open, locked file
_slot_path: Path | None = None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def slots_dir() -> Path:
    return Path(os.environ.get(SLOTS_DIR_ENV) or Path(tempfile.gettempdir()) / "trajvid-cpu-slots")


def open_lock_file(path: Path):
    """A lock file every user of the machine can lock: the directory is world-writable and
    sticky like /tmp, the file is created 0666 (flock needs only a descriptor, so a file made by
    another user is opened read-only)."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(path.parent, 0o1777)
        except PermissionError:
            pass  # made by another user in the meantime
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            os.fchmod(fd, 0o666)
        except PermissionError:
            pass
        return os.fdopen(fd, "r+")
    except PermissionError:
        return open(path)


def _try_lock(path: Path):
    handle = open_lock_file(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def running_trainings() -> int:
    """Trainings holding a slot on this machine, this one included (it takes one if it has none).
    One scan at a time (scan.lock), so that another scan's brief probe is not counted as a run."""
    global _slot, _slot_path
    directory = slots_dir()
    try:
        with open_lock_file(directory / "scan.lock") as scan:
            fcntl.flock(scan, fcntl.LOCK_EX)
            held = 0
            for i in range(MAX_SLOTS):
                path = directory / f"slot-{i}.lock"
                if _slot is not None and _slot_path == path:
                    held += 1
                    continue
                handle = _try_lock(path)
                if handle is None:
                    held += 1  # another training holds it
                elif _slot is None:
                    _slot, _slot_path = handle, path  # a free slot: ours from now on
                    held += 1
                else:
                    handle.close()  # free, and we have one
    except OSError as error:  # no usable lock directory: do not share rather than fail a training
        print(f"warning: cannot count the trainings on this machine ({error}); using every core", flush=True)
        return 1
    return max(1, held)


def set_threads(threads: int) -> int:
    """Use `threads` torch CPU threads; 0 = this process's share of the available cores (see
    above). Call before any torch op, and again whenever the share may have changed."""
    import torch

    if not threads:
        threads = max(1, available_cores() // running_trainings())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
