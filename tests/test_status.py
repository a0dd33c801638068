"""`trajvid status` on real repositories: empty, queued and failed DVC experiments, a running and
a killed training in the workspace. (Finished experiments: tests/test_experiments.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import BIN, make_repo, run, tiny_params, write_params

from trajvid.runtime.heartbeat import RELATIVE_PATH

pytestmark = pytest.mark.slow


def status(repo) -> dict:
    return json.loads(run(["trajvid", "status", "--json"], repo).stdout)


def workers(repo) -> tuple[int, int]:
    """(active, idle) from `dvc queue status`'s "Worker status: N active, M idle"."""
    line = run(["dvc", "queue", "status"], repo).stdout.split("Worker status:")[-1]
    active, idle = re.match(r"\s*(\d+) active, (\d+) idle", line).groups()
    return int(active), int(idle)


@pytest.mark.alone  # its 2-s limit is a latency target, not to be measured beside the other worker's training
def test_an_empty_repository(tmp_path):
    repo = make_repo(tmp_path / "empty", tiny_params())
    start = time.monotonic()
    shown = run(["trajvid", "status"], repo).stdout
    took = time.monotonic() - start
    assert "no training in the workspace and no experiment in DVC's queue" in shown
    assert status(repo)["runs"] == []
    assert took < 2.0, took  # the target (docs/performance.md); measured 0.84 s here, 2026-12-01


def test_failed_and_queued_experiments_and_no_worker(tmp_path):
    repo = make_repo(tmp_path / "queue", tiny_params())
    # fails at once: too few samples for the splits
    run(["dvc", "exp", "run", "--queue", "-n", "too-small", "-S", "data.num_samples=12"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    deadline = time.time() + 180
    while "Failed" not in run(["dvc", "queue", "status"], repo).stdout and time.time() < deadline:
        time.sleep(1)
    while workers(repo) != (0, 0) and time.time() < deadline:
        time.sleep(1)  # the temporary worker stops once the queue is empty
    run(["dvc", "exp", "run", "--queue", "-n", "later", "-S", "model=magvit", "-S", "train.seed=7"], repo)

    runs = {r["name"]: r for r in status(repo)["runs"]}
    assert runs["too-small"]["state"] == "failed"
    assert "leaves the validation split without" in runs["too-small"]["note"]
    assert "dvc queue logs too-small" in runs["too-small"]["note"]
    assert runs["later"]["state"] == "queued"
    assert (runs["later"]["backbone"], runs["later"]["seed"]) == ("magvit", 7)
    shown = run(["trajvid", "status"], repo).stdout
    assert "no queue worker is running" in shown and "dvc queue start" in shown
    run(["dvc", "queue", "stop", "--kill"], repo, check=False)


def test_a_running_then_killed_training_in_the_workspace(tmp_path, tiny_dataset):
    write_params(tmp_path / "params.yaml", tiny_params(num_samples=200, epochs=50))
    proc = subprocess.Popen(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(tiny_dataset)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    try:
        beat_file = tmp_path / RELATIVE_PATH
        deadline = time.time() + 120
        while time.time() < deadline:
            beat = json.loads(beat_file.read_text()) if beat_file.exists() else {}
            if beat.get("validation"):  # an epoch is done: validation figures and an ETA
                break
            time.sleep(0.2)
        for _ in range(5):  # the figures the training last told, unless an epoch ended in between
            before = json.loads(beat_file.read_text())["validation"]
            (row,) = status(tmp_path)["runs"]
            if json.loads(beat_file.read_text())["validation"] == before:
                break
        assert (row["name"], row["state"], row["backbone"], row["seed"], row["pid"]) == \
            ("workspace", "running", "i3d", 0, proc.pid)  # the training's seed (train.seed)
        assert row["epoch"].split()[0] in {f"{e}/50" for e in range(2, 51)} and row["eta_s"] > 0
        assert (row["val_accuracy"], row["val_rmse"]) == (before["accuracy"], before["position_rmse"])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (row,) = status(tmp_path)["runs"]
        assert row["state"] == "crashed" and "resumes from the last checkpoint" in row["note"]
    finally:
        proc.kill()


def test_a_half_written_heartbeat_is_read_as_absent(tmp_path):
    (tmp_path / RELATIVE_PATH).parent.mkdir()
    (tmp_path / RELATIVE_PATH).write_text('{"backbone": "i3d", "sta')
    assert status(tmp_path)["runs"] == []


def test_queue_workers_are_counted_per_repository_from_proc(tmp_path):
    """A process that looks like DVC's queue worker of one repository (`... queue-worker
    dvc-exp-<hash of its celery dir>-1@localhost`), wherever it was started, counts for that
    repository and for no other."""
    import sys

    from trajvid.tools.status import queue_workers, worker_node_prefix

    ours = worker_node_prefix(str(tmp_path / "ours" / ".dvc" / "tmp" / "exps" / "celery"))
    other = worker_node_prefix(str(tmp_path / "other" / ".dvc" / "tmp" / "exps" / "celery"))
    assert ours != other and queue_workers(ours) == 0
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exp", "queue-worker",
                               f"{ours}1@localhost", "--clean"], cwd=tmp_path)
    try:
        deadline = time.time() + 10
        while queue_workers(ours) != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert queue_workers(ours) == 1 and queue_workers(other) == 0
    finally:
        worker.kill()
        worker.wait()
    assert queue_workers(ours) == 0
