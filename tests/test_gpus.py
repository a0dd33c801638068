"""GPU claiming, on a CPU machine: an `nvidia-smi` stand-in on PATH lists simulated GPUs, and real
processes race for them through the real kernel locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN, tiny_params, write_params

from trajvid.runtime.gpus import GPU, NoFreeGPU, claim, release, visible

GPUS = [GPU(0, "GPU-0aaa"), GPU(1, "GPU-1bbb")]


@pytest.fixture
def machine(tmp_path):
    """An environment whose nvidia-smi lists two GPUs, and a lock directory of its own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{g.index}, {g.uuid}'\n" for g in GPUS))
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE")}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
                "TRAJVID_GPU_LOCK_DIR": str(tmp_path / "locks")})
    return env


HOLD = """
import sys, time
from trajvid.runtime.gpus import claim
chosen = claim()
print(",".join(g.uuid for g in chosen), flush=True)
time.sleep(float(sys.argv[1]))
"""


def holder(env, seconds: float = 60, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], env={**env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_visible_devices_follow_cuda_rules():
    assert visible(GPUS, None) == GPUS
    assert visible(GPUS, "1") == [GPUS[1]]
    assert visible(GPUS, "GPU-1b,0") == [GPUS[1], GPUS[0]]  # UUID prefixes, in the given order
    assert visible(GPUS, "0,7,1") == [GPUS[0]]  # CUDA stops at the first invalid entry
    assert visible(GPUS, "") == []


def test_a_cpu_machine_and_a_multi_process_launch_claim_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJVID_GPU_LOCK_DIR", str(tmp_path))
    env = {}
    assert claim(gpus=[], environ=env) == [] and env == {}
    env = {"WORLD_SIZE": "2"}
    assert claim(gpus=GPUS, environ=env) == [] and "CUDA_VISIBLE_DEVICES" not in env


def test_racing_processes_get_distinct_gpus_and_a_third_waits_for_a_killed_holder(machine):
    first, second = holder(machine), holder(machine)  # started together: they race for the locks
    third = None
    try:
        of_first, of_second = first.stdout.readline().strip(), second.stdout.readline().strip()
        assert {of_first, of_second} == {"GPU-0aaa", "GPU-1bbb"}
        third = holder(machine, 0, TRAJVID_GPU_WAIT_S="60")
        waiting = third.stderr.readline()  # once it has found both locks held
        assert "waiting for a free GPU: all 2 are claimed" in waiting, waiting + third.stderr.read()
        assert third.poll() is None  # waiting, not sharing
        first.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel drops its lock
        out, err = third.communicate(timeout=30)
        assert third.returncode == 0, err
        assert out.strip() == of_first  # the killed holder's GPU, not the one still held
    finally:
        for p in (first, second, third):
            if p is not None:
                p.kill()
                p.wait()


def test_an_outer_cuda_visible_devices_limits_the_choice_and_waiting_has_a_timeout(machine):
    only_one = {"CUDA_VISIBLE_DEVICES": "1"}
    first = holder(machine, **only_one)
    try:
        assert first.stdout.readline().strip() == "GPU-1bbb"
        start = time.monotonic()
        second = subprocess.run([sys.executable, "-c", HOLD, "0"], env={**machine, **only_one,
                                "TRAJVID_GPU_WAIT_S": "1"}, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and time.monotonic() - start >= 1
        assert "NoFreeGPU: no free GPU after waiting 1 s: all 1 are claimed" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_claims_in_one_process_are_exclusive_and_released(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJVID_GPU_LOCK_DIR", str(tmp_path))
    env = {}
    assert claim(gpus=GPUS, environ=env, say=lambda m: None) == [GPUS[0]]
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0aaa"
    assert claim(gpus=GPUS, environ={}, say=lambda m: None) == [GPUS[1]]
    with pytest.raises(NoFreeGPU, match="no free GPU after waiting 0 s"):
        claim(gpus=GPUS, environ={}, wait_s=0, say=lambda m: None)
    with pytest.raises(NoFreeGPU, match="3 GPUs asked for, but only 2"):
        claim(3, gpus=GPUS, environ={})
    release()
    assert claim(2, gpus=GPUS, environ={}, say=lambda m: None) == GPUS
    release()


@pytest.mark.slow
def test_two_trainings_on_a_one_gpu_machine_run_one_after_the_other(machine, tmp_path, tiny_dataset):
    """`trajvid train` claims before it starts: the second of two queued runs waits for the first."""
    machine = {**machine, "CUDA_VISIBLE_DEVICES": "0"}
    runs, logs = [], []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_params(tmp_path / name / "params.yaml", tiny_params(num_samples=200, epochs=1))
        logs.append(tmp_path / f"{name}.err")
        with open(logs[-1], "w") as err:
            runs.append(subprocess.Popen(["trajvid", "train", "--no-progress", "--live", "none",
                                          "--data", str(tiny_dataset)], cwd=tmp_path / name, env=machine,
                                         stdout=subprocess.DEVNULL, stderr=err))
        deadline = time.time() + 60
        while name == "a" and "using GPU" not in logs[0].read_text() and time.time() < deadline:
            time.sleep(0.1)  # "a" holds the GPU before "b" starts
    for p in runs:
        p.wait(timeout=300)
    errors = [log.read_text() for log in logs]
    assert [p.returncode for p in runs] == [0, 0], errors
    assert "using GPU 0 (GPU-0aaa)" in errors[0] and "waiting" not in errors[0]
    assert "waiting for a free GPU: all 1 are claimed" in errors[1] and "using GPU 0 (GPU-0aaa)" in errors[1]
    # the waiting run started only when the first had released the GPU, i.e. had finished
    assert (tmp_path / "a" / "models" / "model.safetensors").stat().st_mtime <= \
        min(p.stat().st_mtime for p in (tmp_path / "b" / "models" / "checkpoints").rglob("*"))


def test_trainings_on_one_machine_share_its_cores(tmp_path, monkeypatch):
    """threads=0: each running training gets an equal share of the cores, re-counted when one ends."""
    import trajvid.runtime.devices as devices

    monkeypatch.setenv("TRAJVID_CPU_SLOTS_DIR", str(tmp_path))
    monkeypatch.setattr(devices, "_slot", None)
    monkeypatch.setattr(devices, "_slot_path", None)
    cores = devices.available_cores()
    assert devices.running_trainings() == 1 and devices.set_threads(0) == cores
    hold = "from trajvid.runtime.devices import running_trainings as r; import time; print(r(), flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", hold], env=os.environ, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "2"  # it counts us, and itself
        assert devices.running_trainings() == 2
        assert devices.set_threads(0) == max(1, cores // 2)
        assert devices.set_threads(3) == 3  # an explicit count is kept
    finally:
        other.kill()
        other.wait()
    assert devices.running_trainings() == 1 and devices.set_threads(0) == cores
    devices._slot.close()
