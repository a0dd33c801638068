"""`trajvid status`: one screen for the workspace's training and every experiment of DVC's queue.

Sources, all local files read once (no ssh, no pid files of our own):
- DVC's queue (through its Python API): queued, running, finished and failed experiments, the
  stash commit holding each one's params, and the log of each run (`dvc queue logs NAME`);
- the heartbeat every training writes (`heartbeat.py`): in the workspace, and in the temporary
  directory where DVC runs a queued experiment (named in DVC's executor info file);
- a finished experiment's metrics from its commit.

A run whose heartbeat says "running" but whose process is gone (same host) is reported as
crashed; queued experiments with no queue worker alive are flagged. A file being rewritten is
read as absent, never as an error: the display is for people, the next call shows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import yaml

from trajvid.runtime.heartbeat import RELATIVE_PATH
from trajvid.tools.git import show


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # absent, or caught half-way through a rewrite


def alive(pid: int | None, host: str | None, started: float | None = None) -> bool | None:
    """Whether the process runs; None when it cannot be told from here (another host). A pid
    reused by a process that started after the run (a reboot, a long time) is not the run."""
    if not pid or (host and host != socket.gethostname()):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    began = process_start_time(pid)
    return not (began is not None and started is not None and began > started + 5)


def process_start_time(pid: int) -> float | None:
    """When a process started (Unix time), from /proc; None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def params_at(root: Path, rev: str) -> dict:
    text = show(root, rev, "params.yaml")
    try:
        return yaml.safe_load(text) or {} if text else {}
    except yaml.YAMLError:
        return {}


def from_heartbeat(beat: dict) -> dict:
    """The row fields a heartbeat gives."""
    state = beat.get("status", "running")
    if state == "running" and alive(beat.get("pid"), beat.get("host"), beat.get("started")) is False:
        state = "crashed"
    validation = beat.get("validation") or {}
    return {
        "state": state,
        "backbone": beat.get("backbone"),
        "seed": beat.get("seed"),
        "epoch": _progress(beat, state),
        "step": beat.get("step"),
        "total_steps": beat.get("total_steps"),
        "eta_s": beat.get("eta_s") if state == "running" else None,
        "val_accuracy": validation.get("accuracy"),
        "val_rmse": validation.get("position_rmse"),
        "device": beat.get("device"),
        "pid": beat.get("pid"),
        "updated": beat.get("updated"),
        "note": (beat.get("error") or "") if state == "failed" else
                ("its process is gone (killed?); `dvc exp run` / `dvc repro` resumes from the last checkpoint"
                 if state == "crashed" else ""),
    }


def _progress(beat: dict, state: str) -> str:
    """"3/10 42%": the epoch under way and how far into it; "10/10" once done."""
    epochs, per_epoch, step = beat.get("epochs", "?"), beat.get("steps_per_epoch"), beat.get("step") or 0
    if state != "running" or not per_epoch:
        return f"{beat.get('epoch_done', 0)}/{epochs}"
    epoch, within = divmod(step, per_epoch)
    return f"{epoch + 1}/{epochs} {100 * within // per_epoch}%"


def last_error_line(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    ours = [line for line in lines if line.startswith("error:")]  # a stage's own one-line error
    dvc = [line for line in lines if line.startswith("ERROR:")]  # DVC's, e.g. "failed to reproduce"
    return (ours or dvc or lines or [""])[-1]


def queue_rows(root: Path) -> tuple[list[dict], int | None, list[str]]:
    """One row per experiment DVC's queue knows of, and the number of queue workers alive."""
    from dvc.repo import Repo

    rows, problems = [], []
    with Repo(str(root)) as repo:
        queue = repo.experiments.celery_queue

        def row(entry, state: str) -> dict:
            params = params_at(root, entry.stash_rev)
            return {"name": entry.name or entry.stash_rev[:7], "state": state, "backbone": params.get("model"),
                    "seed": (params.get("train") or {}).get("seed"), "epochs": (params.get("train") or {}).get("epochs"),
                    "rev": entry.stash_rev}

        for entry in queue.iter_active():
            r = row(entry, "running")
            info = read_json(Path(queue.get_infofile_path(entry.stash_rev)))
            beat = read_json(Path(info["root_dir"]) / RELATIVE_PATH) if info and info.get("root_dir") else None
            if beat:
                r.update(from_heartbeat(beat))
            else:
                r["note"] = f"starting, or waiting for a free GPU (dvc queue logs {r['name']})"
            rows.append(r)
        for entry in queue.iter_queued():
            r = row(entry, "queued")
            r["epoch"] = f"0/{r['epochs']}"
            rows.append(r)
        for entry, result in _done(queue, problems):
            r = row(entry, "failed" if result is None else "finished")
            if result is not None and result.ref_info is not None:
                r["name"] = result.ref_info.name
                metrics = read_metrics(root, str(result.ref_info))
                r.update(metrics)
            else:
                try:
                    log = Path(queue.proc[entry.stash_rev].stdout)
                except (KeyError, TypeError):
                    log = None
                r["note"] = f"{last_error_line(log)}  (log: dvc queue logs {r['name']})".strip()
            rows.append(r)
        workers = queue_workers(worker_node_prefix(queue.wdir))
        if workers is None:  # no /proc: ask the workers through the broker (a 2 s broadcast)
            try:
                workers = len(queue.worker_status())
            except Exception:  # the broker cannot be asked: say unknown rather than fail
                workers = None
    return rows, workers, problems


def worker_node_prefix(celery_dir: str) -> str:
    """The node-name prefix of the queue workers DVC starts for one repository: DVC names them
    `dvc-exp-<first 6 hex of sha256(<repo>/.dvc/tmp/exps/celery)>-<n>@localhost`
    (dvc/repo/experiments/queue/celery.py, `_spawn_worker`)."""
    return f"dvc-exp-{hashlib.sha256(celery_dir.encode('utf-8')).hexdigest()[:6]}-"


def queue_workers(node_prefix: str) -> int | None:
    """The DVC queue workers (`dvc exp queue-worker <node name>`) whose node name starts with
    `node_prefix`, read from /proc; None where there is no /proc. DVC's own `worker_status()`
    broadcasts to the workers and waits a fixed 2 s for replies, which alone would exceed the
    status screen's budget."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    prefix = node_prefix.encode()
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"queue-worker" in args and any(a.startswith(prefix) for a in args):
            count += 1
    return count


def _done(queue, problems: list[str]):
    """DVC's finished experiments; one it cannot read (e.g. from an older DVC) becomes a note."""
    try:
        yield from queue.iter_done()
    except Exception as error:  # noqa: BLE001 - a status screen shows what it can
        problems.append(f"DVC could not list every finished experiment: {str(error).strip().splitlines()[0]}")


def read_metrics(root: Path, rev: str) -> dict:
    text = show(root, rev, "metrics/metrics.json")
    try:
        test = json.loads(text)["test"] if text else None
    except (ValueError, KeyError):
        test = None
    if not test:
        return {}
    return {"test_accuracy": test.get("accuracy"), "test_rmse": test.get("position_rmse"),
            "note": f"test accuracy {test.get('accuracy', 0):.4f}, next-position RMSE {test.get('position_rmse', 0):.4f}"}


def collect(root: Path | str = ".") -> dict:
    root = Path(root).resolve()
    rows = []
    beat = read_json(root / RELATIVE_PATH)
    if beat:
        rows.append({"name": "workspace", **from_heartbeat(beat)})
    workers, notes = None, []
    if (root / ".dvc").is_dir() and (root / ".git").exists():
        queued, workers, notes = queue_rows(root)
        rows.extend(queued)
    if any(r["state"] == "queued" for r in rows) and workers == 0:
        notes.append("experiments are queued but no queue worker is running: start one with `dvc queue start`")
    return {"root": str(root), "time": time.time(), "runs": rows, "queue_workers": workers, "notes": notes}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def render(status: dict) -> str:
    header = ["NAME", "STATE", "BACKBONE", "TRAIN SEED", "EPOCH", "ETA", "VAL ACC", "VAL RMSE", "DEVICE", "PID", "NOTE"]
    table = [header]
    for r in status["runs"]:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.append([str(r.get("name", "")), r.get("state", ""), str(r.get("backbone") or "-"), fmt(r.get("seed"), ""),
                      r.get("epoch") or "-", _duration(r.get("eta_s")), fmt(r.get("val_accuracy"), ".4f"),
                      fmt(r.get("val_rmse"), ".4f"), str(r.get("device") or "-"), fmt(r.get("pid"), ""),
                      r.get("note") or ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = [f"trajvid status: {status['root']}  ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['time']))})"]
    if len(table) == 1:
        lines.append("no training in the workspace and no experiment in DVC's queue")
    else:
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table]
    workers = status["queue_workers"]
    if workers is not None:
        lines.append(f"queue workers: {workers}")
    lines += [f"note: {note}" for note in status["notes"]]
    return "\n".join(line.rstrip() for line in lines)
