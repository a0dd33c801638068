"""What a running training tells `trajvid status`: a small JSON file in its working directory.

`.trajvid/heartbeat.json` (git-ignored, never a stage output) is rewritten atomically every few
seconds and at every epoch's end by the main process: backbone, seed, epoch and step, the
measured pace and ETA, the last validation figures, the device, the pid, and at the end
"finished" or "failed" with the error's first line. A run killed without warning leaves
"running" with a pid that no longer exists; `trajvid status` reports it as crashed. In a queued
DVC experiment the working directory is DVC's temporary copy, and `DVC_EXP_NAME` names the run.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from trajvid.errors import first_line
from trajvid.runtime.files import write_json

RELATIVE_PATH = Path(".trajvid") / "heartbeat.json"
EVERY_S = 5.0  # between two writes during an epoch


class Heartbeat:
    def __init__(self, directory: Path | str, enabled: bool, info: dict, total_steps: int, done_steps: int):
        self.path = Path(directory) / RELATIVE_PATH
        self.enabled = enabled
        self.total_steps, self.start_steps = total_steps, done_steps
        self.started = time.time()
        self.last_write = 0.0
        self.state = {
            **info,
            "experiment": os.environ.get("DVC_EXP_NAME"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "status": "running",
            "step": done_steps,
            "total_steps": total_steps,
            "eta_s": None,
            "validation": None,
            "error": None,
        }
        self._write()

    def step(self, epoch: int, step: int) -> None:
        """After each optimizer step (`step` counts over the whole run); writes every EVERY_S seconds."""
        self.state.update(epoch=epoch, step=step, eta_s=self._eta(step))
        if time.time() - self.last_write >= EVERY_S:
            self._write()

    def epoch_end(self, epoch: int, validation: dict) -> None:
        self.state.update(epoch_done=epoch, validation=validation)
        self._write()

    def end(self, error: BaseException | None = None) -> None:
        if error is None:
            self.state.update(status="finished", eta_s=0.0)
        else:
            self.state.update(status="failed", error=f"{type(error).__name__}: {first_line(error)}")
        self._write()

    def _eta(self, step: int) -> float | None:
        """Remaining steps at the pace this process has kept since it started (resumes included)."""
        done = step - self.start_steps
        if done <= 0:
            return None
        return (self.total_steps - step) * (time.time() - self.started) / done

    def _write(self) -> None:
        if not self.enabled:
            return
        self.last_write = time.time()
        self.state["updated"] = self.last_write
        try:
            write_json(self.path, self.state)
        except OSError:
            pass  # a status display must never stop a training (a full disk fails the checkpoint instead)
