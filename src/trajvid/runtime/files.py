"""Atomic writes: every output of the pipeline appears whole or not at all.

One mechanism for all of them (dataset shards, checkpoints, model files, metrics): write under a
temporary name in the same directory, then `os.replace` / rename it into place. A crash, a full
disk or a kill in between leaves only a dot-named temporary, which no reader ever opens, and the
previous version of the output stays intact until the new one is complete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trajvid.errors import Interrupted, TrajvidError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(TrajvidError):
    """No space left while writing an output (the previous output is left as it was)."""


def free_bytes(path: Path) -> int:
    """Free space on the filesystem of `path` (or of its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} KB"


@contextmanager
def writing(what: str, path: str | Path, needed_bytes: float | None = None) -> Iterator[None]:
    """Name the output being written: a full disk inside becomes a DiskFullError saying what was
    written, where, how much it needs and how much is free; an interrupt (SIGTERM, Ctrl-C) passing
    through is tagged `while_writing` for the one-line message of `cli.py`."""
    path = Path(path)
    try:
        yield
    except (KeyboardInterrupt, Interrupted) as interrupt:
        if not hasattr(interrupt, "while_writing"):
            interrupt.while_writing = f"{what} ({path})"
        raise
    except Exception as error:
        if not is_no_space(error):
            raise
        need = f"it needs about {_megabytes(needed_bytes)}, " if needed_bytes else ""
        raise DiskFullError(
            f"no space left on the device while writing {what} to {path}: {need}"
            f"{_megabytes(free_bytes(path.parent))} are free there; free some space and run again "
            "(the previous outputs are intact)"
        ) from None


def is_no_space(error: BaseException) -> bool:
    """A full disk or quota, also when a library reports it in its own exception (safetensors
    raises `SafetensorError: ... No space left on device (os error 28)`)."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    text = str(error)
    return any(f"os error {code})" in text for code in NO_SPACE) or "No space left on device" in text


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (no window in which
    another thread would create files with a wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, value: Any) -> Path:
    return write_text(path, json.dumps(value, indent=2) + "\n")


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target`.

    An existing `target` is moved aside first and deleted only after the new one is in place;
    on any exception the temporary directory is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the output private
    old = None
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            old.rename(target)  # interrupted between the two renames: put the previous output back
        raise
    if old is not None:
        shutil.rmtree(old)


def is_temporary(path: Path) -> bool:
    """Whether `path` is a leftover of an interrupted atomic write (never a finished output)."""
    return path.name.startswith(".") and (".tmp" in path.name or ".old-" in path.name)
