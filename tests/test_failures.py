"""Damaged files, full disks and interrupted stages: one clear line, a non-zero exit, and nothing
lost (issue: "Damaged files, full disks and interrupted stages fail in one clear line")."""

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import BIN, run, tiny_params, write_params

from trajvid.data.shards import DamagedDataError, open_split
from trajvid.generate import generate
from trajvid.params import DataParams, parse
from trajvid.train import train


def one_error_line(result, code: int, *needles: str) -> str:
    """The command failed with `code` and printed exactly one line `error: ...` with `needles`."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, tiny_dataset):
    """A directory with tiny params and a copy of the tiny dataset at data/trajectories."""
    write_params(tmp_path / "params.yaml", tiny_params(num_samples=200, epochs=1))
    shutil.copytree(tiny_dataset, tmp_path / "data" / "trajectories")
    return tmp_path


def shard(root: Path, split: str = "train") -> Path:
    return sorted((root / "data" / "trajectories" / "data").glob(f"{split}-*.arrow"))[0]


def video_offset(path: Path, row: int) -> int:
    """Where the compressed video of `row` starts inside the shard file."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    blob = table.column("video")[row].as_py()
    return path.read_bytes().index(blob[:64])


# -- data integrity ---------------------------------------------------------------------------

def test_zeroed_bytes_in_a_shard_stop_training_in_one_line(workdir):
    path = shard(workdir)
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    result = run(["trajvid", "train", "--no-progress", "--live", "none"], workdir, check=False)
    one_error_line(result, 2, str(path.relative_to(workdir)), "damaged", "dvc checkout --force data/trajectories", "dvc pull")
    assert not (workdir / "models").exists()


def test_a_truncated_shard_stops_evaluation_in_one_line(workdir):
    path = shard(workdir, "test")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    (workdir / "models").mkdir()
    result = run(["trajvid", "evaluate"], workdir, check=False)
    # the data is checked before the (missing) model is even looked at
    one_error_line(result, 2, str(path.relative_to(workdir)), "dvc checkout --force data/trajectories")


def test_a_sample_that_does_not_decode_names_its_shard_and_id(workdir):
    path = shard(workdir)
    split = open_split(workdir / "data" / "trajectories", "train")
    row = 3
    sample_id = int(split.sample_ids[row])
    offset = video_offset(path, row)
    data = bytearray(path.read_bytes())
    data[offset + 200 : offset + 1200] = bytes(1000)  # inside that sample's zstd frame only
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedDataError, match="damaged"):  # the door check catches it first
        open_split(workdir / "data" / "trajectories", "train")
    unchecked = open_split(workdir / "data" / "trajectories", "train", verify=False)
    unchecked[row + 1]  # other samples still decode
    with pytest.raises(DamagedDataError, match=rf"sample {sample_id} of .*{path.name}.*dvc checkout"):
        unchecked[row]


def test_checking_the_shards_is_cheap(tiny_dataset):
    start = time.perf_counter()
    open_split(tiny_dataset, "train")
    checked = time.perf_counter() - start
    start = time.perf_counter()
    open_split(tiny_dataset, "train", verify=False)
    unchecked = time.perf_counter() - start
    assert checked - unchecked < 0.5, (checked, unchecked)


# -- model files ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("trained")
    write_params(out / "params.yaml", tiny_params(num_samples=200, epochs=1))
    train(parse(tiny_params(num_samples=200, epochs=1)), tiny_dataset, out / "models", live_dir=None, progress=False)
    return out


def damage_weights_header(models: Path) -> None:
    path = models / "model.safetensors"
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])  # a header length of 2^64 - 1


def truncate_weights(models: Path) -> None:
    path = models / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def drop_head_key(models: Path) -> None:
    config = json.loads((models / "config.json").read_text())
    del config["head"]
    (models / "config.json").write_text(json.dumps(config))


def unknown_backbone(models: Path) -> None:
    config = json.loads((models / "config.json").read_text())
    config["backbone"] = "resnet50"
    (models / "config.json").write_text(json.dumps(config))


def foreign_sizes(models: Path) -> None:
    config = json.loads((models / "config.json").read_text())
    config["sizes"]["width"] = 0.25  # the weights were trained at 0.125
    (models / "config.json").write_text(json.dumps(config))


def not_json(models: Path) -> None:
    (models / "config.json").write_text('{"backbone": "i3d", ')


@pytest.mark.parametrize("damage, needle", [
    (damage_weights_header, "model.safetensors is damaged"),
    (truncate_weights, "model.safetensors is damaged"),
    (drop_head_key, "config.json lacks the key 'head'"),
    (unknown_backbone, "config.json does not describe a model this code can build (its 'backbone': unknown backbone 'resnet50'"),
    (foreign_sizes, "model.safetensors does not fit the i3d model"),
    (not_json, "config.json is not valid JSON"),
])
def test_a_damaged_or_foreign_model_file_is_one_line(trained, tiny_dataset, tmp_path, damage, needle):
    shutil.copytree(trained / "models", tmp_path / "models")
    shutil.copy(trained / "params.yaml", tmp_path / "params.yaml")
    damage(tmp_path / "models")
    result = run(["trajvid", "evaluate", "--data", str(tiny_dataset)], tmp_path, check=False)
    one_error_line(result, 2, needle, "dvc checkout --force train", "dvc pull")
    assert not (tmp_path / "metrics").exists()


def other_data(tmp_path, **data) -> Path:
    """A small dataset generated with other data params (issue 19's contracts)."""
    out = tmp_path / "other" / "trajectories"
    generate(7, DataParams(**{"num_samples": 40, "shard_size": 64, "workers": 1, **data}), out, progress=False)
    return out


def recameraed(models: Path) -> None:
    config = json.loads((models / "config.json").read_text())
    config["input"]["cameras"]["t"][1][2] += 0.2  # one camera moved by 0.2 units along its axis
    (models / "config.json").write_text(json.dumps(config))


def reclassed(models: Path) -> None:
    config = json.loads((models / "config.json").read_text())
    config["input"]["class_names"] = ["circular", "linear", "helical", "parabolic"]
    (models / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("mismatch, needles", [
    ({"image_size": 96}, ["was built for 32 frames of 64x64 px from 4 cameras", "holds 32 frames of 96x96 px from 4 cameras"]),
    ({"num_frames": 24}, ["was built for 32 frames of 64x64 px", "holds 24 frames of 64x64 px"]),
    (reclassed, ["was trained on the classes ['circular', 'linear'", "has ['linear', 'circular'"]),
])
def test_a_model_given_data_it_was_not_built_for_is_one_line(trained, tiny_dataset, tmp_path, mismatch, needles):
    """Issue 19: evaluate (and explain) compare the model's video size and classes with the
    data's before writing anything; the size mismatches once exited 0 with an RMSE of 1.087 or
    died in a traceback. (The command's one line for the first; the others in-process.)"""
    from trajvid.contracts import ContractError
    from trajvid.evaluate import evaluate
    from trajvid.model_files import load_trained
    from trajvid.tools.explain import explain

    shutil.copytree(trained / "models", tmp_path / "models")
    shutil.copy(trained / "params.yaml", tmp_path / "params.yaml")
    if callable(mismatch):
        mismatch(tmp_path / "models")
        data = tiny_dataset
    else:
        data = other_data(tmp_path, **mismatch)
    if mismatch == {"image_size": 96}:
        result = run(["trajvid", "evaluate", "--data", str(data)], tmp_path, check=False)
        one_error_line(result, 2, *needles, "score the model in models on data generated with its own data params")
    else:
        with pytest.raises(ContractError) as error:
            evaluate(data, tmp_path / "models", tmp_path / "metrics", threads=2, num_workers=0)
        assert "\n" not in str(error.value) and all(n in str(error.value) for n in needles), error.value
        model, config = load_trained(tmp_path / "models")
        with pytest.raises(ContractError, match=needles[0].replace("[", r"\[")):
            explain(model, config, data, "test", [0], tmp_path / "explained")
        assert not (tmp_path / "explained").exists()
    assert not (tmp_path / "metrics").exists()


def test_a_model_triangulates_with_the_cameras_of_the_data_it_scores(trained, tiny_dataset, tmp_path):
    """A model whose config.json names a moved rig, on data filmed by the rig it was trained with:
    evaluate triangulates with the data's cameras, so its figures and per-sample predictions are
    those of the model as trained, and metrics.json says how far the rigs are apart."""
    from trajvid.evaluate import evaluate

    shutil.copytree(trained / "models", tmp_path / "moved")
    recameraed(tmp_path / "moved")
    same = evaluate(tiny_dataset, trained / "models", tmp_path / "same", threads=2, num_workers=0)
    moved = evaluate(tiny_dataset, tmp_path / "moved", tmp_path / "metrics", threads=2, num_workers=0)
    assert moved["data"]["cameras_moved_by"] == pytest.approx(0.2) and same["data"]["cameras_moved_by"] == 0.0
    assert moved["test"] == same["test"]
    assert (tmp_path / "metrics" / "predictions.parquet").read_bytes() == (tmp_path / "same" / "predictions.parquet").read_bytes()
    # the control: triangulating with the moved rig's own matrices gives other positions
    import numpy as np
    import pyarrow.parquet as pq

    from trajvid.contracts import use_data_cameras
    from trajvid.data.shards import open_split
    from trajvid.inference import predict
    from trajvid.model_files import load_trained

    model, config = load_trained(tmp_path / "moved")
    use_data_cameras(model, config["input"]["cameras"])
    _, _, table = predict(model, open_split(tiny_dataset, "test"), num_workers=0)
    stored = pq.read_table(tmp_path / "same" / "predictions.parquet").to_pydict()
    assert np.max(np.abs(table["next_z"] - np.array(stored["next_z"]))) > 1e-3


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(small_dataset, tmp_path):
    """Epochs 1 and 2 checkpointed, the run dies, epoch 2's weights are damaged: the rerun warns,
    resumes from epoch 1 and ends exactly where an uninterrupted run ends."""
    raw = tiny_params(num_samples=40, epochs=3)
    params = parse(raw)
    full = train(params, small_dataset, tmp_path / "full", live_dir=None, progress=False)
    script = f"""
import sys
from trajvid import checkpoint
from trajvid.params import parse
from trajvid.train import train
original = checkpoint.save
def save(directory, epoch, *args, **kwargs):
    path = original(directory, epoch, *args, **kwargs)
    if epoch == 2:
        sys.exit(9)  # the run dies right after its second checkpoint
    return path
checkpoint.save = save
train(parse({raw!r}), {str(small_dataset)!r}, {str(tmp_path / "part")!r}, live_dir=None, progress=False)
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    damage_weights_header(tmp_path / "part" / "checkpoints" / "epoch-002")
    write_params(tmp_path / "params.yaml", raw)
    result = run(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(small_dataset),
                  "--out", str(tmp_path / "part")], tmp_path)
    output = result.stdout + result.stderr
    assert "warning: skipping" in output and "epoch-002" in output
    assert "resuming from" in output and "epoch-001" in output
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "part" / "config.json").read_text())["fingerprint"] == full["fingerprint"]


# -- full disks -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real, small filesystem (tmpfs) mounted at tmp_path/disk; `resize(bytes)` grows it."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def resize(size: int, first: bool = False) -> None:
        options = f"size={size}" if first else f"remount,size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)

    try:
        resize(1_000_000, first=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_generate_onto_a_full_disk_keeps_the_previous_dataset(small_disk, tmp_path):
    disk, _ = small_disk
    out = disk / "trajectories"
    generate(1, DataParams(num_samples=40, shard_size=64, workers=1), out, progress=False)  # ~0.3 MB
    before = digest(out)
    raw = tiny_params(num_samples=400)
    write_params(tmp_path / "params.yaml", raw)
    result = run(["trajvid", "generate", "--no-progress", "--out", str(out)], tmp_path, check=False)
    line = one_error_line(result, 2, "no space left on the device while writing the dataset", str(out),
                          "it needs about 3 MB", "free")
    assert digest(out) == before  # the previous dataset is intact
    assert sorted(p.name for p in disk.iterdir()) == ["trajectories"]  # no temporary left
    assert "previous outputs are intact" in line


def test_a_checkpoint_onto_a_full_disk_fails_in_one_line_and_the_next_run_resumes(small_disk, tmp_path, small_dataset):
    """1 MB: the first checkpoint does not fit; 14 MB: the first (9.5 MB for the tiny I3D, measured
    2026-12-01) fits, the second does not; with room, the next run resumes from the first."""
    disk, resize = small_disk
    raw = tiny_params(num_samples=40, epochs=2)
    write_params(tmp_path / "params.yaml", raw)
    cmd = ["trajvid", "train", "--no-progress", "--live", "none", "--data", str(small_dataset), "--out", str(disk / "models")]
    result = run(cmd, tmp_path, check=False)
    one_error_line(result, 2, "no space left on the device while writing checkpoint epoch-001",
                   "it needs about", "free")
    assert list((disk / "models" / "checkpoints").iterdir()) == []  # nothing half-written
    resize(14_000_000)
    result = run(cmd, tmp_path, check=False)
    one_error_line(result, 2, "no space left on the device while writing checkpoint epoch-002")
    assert [p.name for p in (disk / "models" / "checkpoints").iterdir()] == ["epoch-001"]
    resize(64_000_000)
    result = run(cmd, tmp_path)
    assert "resuming from" in result.stdout + result.stderr and "epoch-001" in result.stdout + result.stderr
    assert (disk / "models" / "model.safetensors").is_file()


def test_evaluate_onto_a_full_disk_keeps_the_previous_metrics(small_disk, trained, tiny_dataset, tmp_path):
    disk, _ = small_disk
    metrics = disk / "metrics"
    metrics.mkdir()
    (metrics / "metrics.json").write_text('{"previous": true}\n')
    (disk / "filler").write_bytes(bytes(disk.stat().st_size or 0))
    with open(disk / "filler", "wb") as f:  # fill the disk
        try:
            while True:
                f.write(bytes(65536))
        except OSError:
            pass
    shutil.copy(trained / "params.yaml", tmp_path / "params.yaml")
    result = run(["trajvid", "evaluate", "--data", str(tiny_dataset), "--model", str(trained / "models"),
                  "--out", str(metrics)], tmp_path, check=False)
    one_error_line(result, 2, "no space left on the device while writing the test metrics")
    assert (metrics / "metrics.json").read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in metrics.iterdir()) == ["metrics.json"]


# -- interrupts ----------------------------------------------------------------------------------

def env_with_path() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def generate_until_its_first_shard(tmp_path) -> subprocess.Popen:
    """`trajvid generate` of 8,000 samples, once its first shard is being written."""
    write_params(tmp_path / "params.yaml", tiny_params(num_samples=8000))
    proc = subprocess.Popen(["trajvid", "generate", "--no-progress"], cwd=tmp_path, env=env_with_path(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "data").glob(".trajectories.tmp-*/data/*.arrow")):
        time.sleep(0.05)
    return proc


def test_sigterm_during_generate_leaves_nothing_and_the_rerun_is_clean(tmp_path):
    proc = generate_until_its_first_shard(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    one_error_line(result, 128 + signal.SIGTERM, "interrupted by SIGTERM while writing the dataset")
    assert list((tmp_path / "data").iterdir()) == []  # no dataset, no temporary
    write_params(tmp_path / "params.yaml", tiny_params(num_samples=40))
    run(["trajvid", "generate", "--no-progress"], tmp_path)
    assert open_split(tmp_path / "data" / "trajectories", "train")[0]["video"].shape == (4, 32, 3, 64, 64)


def test_a_killed_generate_leaves_no_worker_behind(tmp_path):
    """SIGKILL gives the parent no chance to clean up: its workers must still end by themselves
    (their pipe closes), or they would render on for nothing and hold the caller's pipes open."""
    proc = generate_until_its_first_shard(tmp_path)
    workers = children(proc.pid)
    assert len(workers) == 2, workers  # data.workers: 2 in the tiny params
    proc.kill()
    # stdout/stderr reach EOF only once every process holding them (the workers) has exited
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if running(pid)], "a worker outlived its killed parent"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one waiting to be reaped, state Z, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_generate_stopped_early_does_not_wait_for_its_workers(tmp_path):
    """An error in the parent while workers are busy sending results: it stops at once (a
    multiprocessing.Pool could wait for ever in `terminate` here; CI once hung that way)."""
    from trajvid.generate import _Workers

    data = DataParams(num_samples=400, workers=2)
    tasks = [list(range(i, i + 32)) for i in range(0, 384, 32)]
    started = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        with _Workers(2, (0, data)) as pool:
            for _ in pool.map(tasks):
                time.sleep(0.2)  # the workers run ahead and block sending their ~230 KB results
                raise OSError("disk full")
    assert time.monotonic() - started < 10
    assert [p.is_alive() for p, _ in pool.workers] == [False, False]


def test_sigterm_while_a_checkpoint_is_written_keeps_the_last_complete_one(tmp_path, small_dataset):
    raw = tiny_params(num_samples=40, epochs=3)
    write_params(tmp_path / "params.yaml", raw)
    # SIGTERM arrives in the middle of writing checkpoint epoch-002 (between its two files)
    script = f"""
import os, signal, sys
from trajvid import checkpoint, cli
original = checkpoint.save_file
def save_file(tensors, path, *args, **kwargs):
    original(tensors, path, *args, **kwargs)
    if "epoch-002" in path and path.endswith("model.safetensors"):
        os.kill(os.getpid(), signal.SIGTERM)
checkpoint.save_file = save_file
sys.argv = ["trajvid", "train", "--no-progress", "--live", "none", "--data", {str(small_dataset)!r}]
cli.main()
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    one_error_line(result, 128 + signal.SIGTERM, "interrupted by SIGTERM while writing checkpoint epoch-002")
    assert sorted(p.name for p in (tmp_path / "models" / "checkpoints").iterdir()) == ["epoch-001"]
    resumed = run(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(small_dataset)], tmp_path)
    assert "resuming from models/checkpoints/epoch-001" in resumed.stdout + resumed.stderr
    assert (tmp_path / "models" / "model.safetensors").is_file()


def test_an_interrupted_directory_swap_puts_the_previous_output_back(tmp_path, monkeypatch):
    """Between moving the old output aside and moving the new one in, a failure (a signal, a full
    disk) must leave the old output where it was, not lose it."""
    from trajvid.runtime import files

    target = tmp_path / "out"
    target.mkdir()
    (target / "kept.txt").write_text("previous")
    original = Path.rename

    def rename(self, destination):
        if self.name.startswith(".out.tmp-"):  # the new directory moving in
            raise KeyboardInterrupt("simulated interrupt")
        return original(self, destination)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(Path, "rename", original)
    assert (target / "kept.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("interrupt", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_of_the_whole_process_group_during_training_is_one_line(tmp_path, small_dataset, interrupt):
    """`kill -TERM -PGID` (what a job runner sends) or Ctrl-C (what a terminal sends) also reaches
    the DataLoader workers, and torch then raises its own error while the interrupt is handled:
    still one line. Sent just after the first checkpoint, while the workers of epoch 2 start."""
    raw = tiny_params(num_samples=40, epochs=4)
    raw["train"]["num_workers"] = 2
    write_params(tmp_path / "params.yaml", raw)
    # SIGINT as a terminal's foreground job has it: a suite run in the background (`.ci/run &`)
    # passes its children SIGINT ignored, and trajvid, like Python, keeps it ignored then
    proc = subprocess.Popen(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(small_dataset)],
                            cwd=tmp_path, env=env_with_path(), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "models" / "checkpoints" / "epoch-001"
    deadline = time.time() + 300
    try:
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.killpg(proc.pid, interrupt)
        _, stderr = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, after a failure
        except ProcessLookupError:
            pass
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    one_error_line(result, 128 + interrupt, f"interrupted by {interrupt.name}")
    assert (first / "state.json").is_file() and not (tmp_path / "models" / "model.safetensors").exists()


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the DataLoader forks its workers only "
                    "under the fork start method (Linux's default up to Python 3.13)")
def test_a_sigterm_whose_exception_python_drops_still_ends_the_training_in_one_line(tmp_path, small_dataset):
    """Python runs the SIGTERM handler wherever the main thread is. In an at-fork callback (the
    DataLoader forking its workers runs logging's) or a destructor, the handler's exception is
    printed and dropped: CI's failure of 2026-12-07, where the training went on and died of its
    killed workers with a traceback. Here the signal lands in such a callback every time, and
    only the signal to this process: without the fix the training would finish, exit 0."""
    raw = tiny_params(num_samples=40, epochs=1)
    raw["train"]["num_workers"] = 2
    write_params(tmp_path / "params.yaml", raw)
    script = f"""
import os, signal, sys
from trajvid import cli
forks = []
def after_fork_in_parent():  # the first worker's fork
    forks.append(1)
    if len(forks) > 1:
        return
    print("SIGTERM sent", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecode, where Python runs the handler: inside this callback
        pass
    print("callback finished", flush=True)  # never: the handler's exception ended it
os.register_at_fork(after_in_parent=after_fork_in_parent)
sys.argv = ["trajvid", "train", "--no-progress", "--live", "none", "--data", {str(small_dataset)!r}]
cli.main()
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    one_error_line(result, 128 + signal.SIGTERM, "interrupted by SIGTERM during `trajvid train`")
    assert "SIGTERM sent" in result.stdout and "callback finished" not in result.stdout, result.stdout
    assert not (tmp_path / "models" / "model.safetensors").exists()


def test_the_killed_dataloader_workers_complaint_is_silenced_other_destructor_errors_show(capsys):
    """torch's DataLoader destructor reports workers killed by the same SIGTERM ("Exception ignored
    in ..."), which once broke the one-line message in CI; any other destructor error still shows."""
    from trajvid.cli import _unraisable

    class Dying:
        def __init__(self, message: str):
            self.message = message

        def __del__(self):
            raise RuntimeError(self.message)

    previous = sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        Dying("DataLoader worker (pid 25170) is killed by signal: Terminated. ")
        Dying("a real bug in a destructor")
    finally:
        sys.unraisablehook = previous
    err = capsys.readouterr().err
    assert "killed by signal" not in err and "a real bug in a destructor" in err


def test_after_an_interrupt_what_it_left_half_built_fails_quietly(capsys):
    """An interrupt caught while torch starts DataLoader workers leaves objects whose destructors
    and threads fail (a pipe closed twice): after an interrupt they stay quiet, the one line stays
    one; before one they print as ever."""
    import threading

    from trajvid.cli import _Interrupts, _thread_failed, _unraisable

    class Dying:
        def __del__(self):
            raise OSError(9, "Bad file descriptor")

    def failing_thread():
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()

    hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook, threading.excepthook = _unraisable, _thread_failed
    try:
        _Interrupts.received = None
        Dying()
        failing_thread()
        before = capsys.readouterr().err
        _Interrupts.received = "SIGTERM"
        Dying()
        failing_thread()
        after = capsys.readouterr().err
    finally:
        sys.unraisablehook, threading.excepthook = hooks
        _Interrupts.received = None
    assert "Bad file descriptor" in before and "ZeroDivisionError" in before
    assert after == ""
