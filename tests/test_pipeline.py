"""End-to-end flows with real DVC in throw-away git repositories, on tiny data and narrow models:
`dvc repro` of one workspace, stage invalidation by code and params, `dvc checkout`, a killed
training resumed, push/pull, a GPU session's grid recorded. (Experiments, the queue, branches and
the team's flow: tests/test_experiments.py.)"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import yaml
from conftest import BIN, ROOT, copy_repo, make_repo, run, tiny_params

from trajvid.tools.records import code_fingerprint

pytestmark = pytest.mark.slow


def lock_md5(repo, stage, path):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


@pytest.fixture(scope="module")
def baseline(pipeline_run, tmp_path_factory):
    """`dvc repro` from scratch (40 samples, 3 epochs of a narrow I3D), committed: a copy of the
    session's run, which this module's tests change as they go."""
    return copy_repo(pipeline_run, tmp_path_factory.mktemp("baseline") / "repo")


def test_repro_from_scratch_then_status_is_clean(baseline):
    status = run(["dvc", "status"], baseline)
    assert "up to date" in status.stdout, status.stdout
    metrics = json.loads((baseline / "metrics" / "metrics.json").read_text())
    assert metrics["model"]["name"] == "i3d" and metrics["train"]["epochs"] == 3
    assert {"accuracy", "position_mse", "position_rmse", "per_class_accuracy"} <= set(metrics["test"])
    assert sorted(p.name for p in (baseline / "models" / "checkpoints").iterdir()) == [
        "epoch-001", "epoch-002", "epoch-003"
    ]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], baseline).stdout)[""]["data"]
    # what DVC shows is what the stages wrote
    assert shown["metrics/metrics.json"]["data"] == metrics
    assert shown["dvclive/metrics.json"]["data"] == json.loads((baseline / "dvclive" / "metrics.json").read_text())
    plots = run(["dvc", "plots", "show", "-o", "plots"], baseline)
    assert (baseline / "plots" / "index.html").is_file(), plots.stdout


def changed_stages(repo) -> set[str]:
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    return set(status)


def test_a_change_to_imported_code_invalidates_the_stages_that_run_it(baseline):
    """src/trajvid/data/shards.py is imported by every stage: changing it must make them all
    stale (through the `src/trajvid/data` directory dep); model_files.py only the stages that
    load a model."""
    path = baseline / "src" / "trajvid" / "data" / "shards.py"
    original = path.read_text()
    try:
        path.write_text(original + "\n# a change\n")
        assert changed_stages(baseline) == {"generate", "baseline", "train", "evaluate", "shift@faster", "robustness"}
        path.write_text(original)
        metrics_file = baseline / "src" / "trajvid" / "model_files.py"  # imported where a model is loaded
        metrics_original = metrics_file.read_text()
        metrics_file.write_text(metrics_original + "\n# a change\n")
        assert changed_stages(baseline) == {"train", "evaluate", "robustness"}
        metrics_file.write_text(metrics_original)
    finally:
        run(["git", "checkout", "--", "src"], baseline)
    assert changed_stages(baseline) == set()


def test_runtime_settings_do_not_invalidate_any_stage(baseline):
    params_file = baseline / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["train"].update(num_workers=1, threads=1, checkpoint_interval=7)
    params["data"]["workers"] = 1
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(baseline) == set()
        params["train"]["learning_rate"] = 0.123  # while a setting that changes results does
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(baseline) == {"train"}
    finally:
        params_file.write_text(original)


def test_dvc_checkout_restores_a_damaged_shard_and_model(baseline):
    """The remedy the one-line errors name works: `dvc checkout` brings back the cached files."""
    shard = sorted((baseline / "data" / "trajectories" / "data").glob("train-*.arrow"))[0]
    weights = baseline / "models" / "model.safetensors"
    good_shard, good_weights = shard.read_bytes(), weights.read_bytes()
    damaged = bytearray(good_shard)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 4096] = bytes(4096)
    shard.write_bytes(bytes(damaged))
    weights.write_bytes(b"\xff" * 8 + good_weights[8:])
    result = run(["trajvid", "train", "--no-progress", "--live", "none", "--out", "scratch-models"], baseline, check=False)
    assert result.returncode == 2 and "dvc checkout --force data/trajectories" in result.stderr, result.stderr
    try:
        run(["dvc", "checkout", "--force", "data/trajectories"], baseline)
        assert shard.read_bytes() == good_shard
        result = run(["trajvid", "evaluate", "--out", "scratch-metrics"], baseline, check=False)
        assert result.returncode == 2 and "dvc checkout --force train" in result.stderr, result.stderr
        run(["dvc", "checkout", "--force", "train"], baseline)
        assert weights.read_bytes() == good_weights
    finally:  # the module's other tests share this repository
        shard.write_bytes(good_shard)
        weights.write_bytes(good_weights)
    assert changed_stages(baseline) == set()
    assert not (baseline / "scratch-models").exists() and not (baseline / "scratch-metrics").exists()


def test_killed_training_resumes_and_ends_where_an_uninterrupted_run_ends(baseline, tmp_path):
    repo = make_repo(tmp_path / "killed", tiny_params(num_samples=40, epochs=3))  # the baseline's params
    run(["dvc", "repro", "generate"], repo)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # the train stage alone: the stages after it would only score the same model (bit for bit) again
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = repo / "models" / "checkpoints" / "epoch-001"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: dvc and the training
    proc.wait()
    assert first.exists() and not (repo / "models" / "model.safetensors").exists()

    resumed = run(["dvc", "repro", "train"], repo)
    assert "resuming from models/checkpoints/epoch-00" in resumed.stdout + resumed.stderr
    assert lock_md5(repo, "train", "models/model.safetensors") == lock_md5(baseline, "train", "models/model.safetensors")
    assert (repo / "dvclive" / "metrics.json").read_text() == (baseline / "dvclive" / "metrics.json").read_text()


def test_a_grid_run_elsewhere_is_recorded_as_the_commit_it_ran(baseline, tmp_path):
    """scripts/device_grid.py (what a GPU machine runs: no git there, DVC in no-SCM mode) makes
    real `dvc repro` runs in copies of the repository and brings them back as one bundle;
    `trajvid collect --bundle` records them as the commit they ran. On this CPU, with the
    workspace's params and threads, the grid's run is the workspace's own run bit for bit (the
    same model, predictions and robustness scores). A bundle whose code is not the commit's, or
    whose tar reaches outside a cell, records nothing."""
    commit = run(["git", "rev-parse", "HEAD"], baseline).stdout.strip()
    out = tmp_path / "out"
    grid = run([sys.executable, str(ROOT / "scripts" / "device_grid.py"), "run", "--repo", str(baseline),
                "--revision", commit, "--cells", "i3d:keypoints:0", "--parallel", "1", "--threads", "2",
                "--num-workers", "0", "--data-workers", "2", "--work", str(tmp_path / "work"), "--out", str(out)], tmp_path)
    assert "1 cells finished, 0 failed" in grid.stdout, grid.stdout
    bundle = out / "grid.tar.gz"
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert manifest["cells"]["i3d-keypoints-seed0"]["state"] == "finished" and manifest["revision"] == commit
    assert not any(n.endswith((".safetensors", ".arrow")) for n in names), names  # records, never data or models

    def tampered(edit):
        target = tmp_path / f"tampered-{len(list(tmp_path.glob('tampered-*')))}.tar.gz"
        with tarfile.open(bundle) as source, tarfile.open(target, "w:gz") as tar:
            for member in source:
                edited = edit(member, source.extractfile(member).read())
                if edited is None:
                    continue  # left out
                member, data = edited
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        return target

    def other_code(member, data):
        if member.name == "manifest.json":
            found = json.loads(data)
            found["code"]["src/trajvid/train.py"] = "0" * 64
            data = json.dumps(found).encode()
        return member, data

    def outside(member, data):
        if member.name.endswith("metrics/metrics.json"):
            member.name = member.name.replace("metrics/metrics.json", "../../metrics/metrics.json")
        return member, data

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    records = baseline / "results" / "runs"
    try:
        for bad, needle in ((tampered(other_code), "its code is not commit"), (tampered(outside), "is not a plain file"),
                            (truncated, "is damaged or truncated")):
            refused = run(["trajvid", "collect", "--bundle", str(bad)], baseline, check=False)
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and needle in refused.stderr, refused.stderr
            assert not records.exists()
        # a cell logs only its own curves: none of the commit's own run (the workspace's dvclive/) creeps in
        curve = "dvclive/plots/metrics/val/keypoint_distance_px.tsv"
        fewer = tampered(lambda m, d: None if m.name.endswith(curve) else (m, d))
        run(["trajvid", "collect", "--bundle", str(fewer)], baseline)
        [only] = records.iterdir()
        assert "val/keypoint_distance_px" not in json.loads((only / "curves.json").read_text())
        shutil.rmtree(records)
        collected = run(["trajvid", "collect", "--bundle", str(bundle)], baseline).stdout
        [name] = [p.name for p in records.iterdir()]
        assert collected == f"grid.tar.gz:i3d-keypoints-seed0: {name} written\n", collected
        model = lock_md5(baseline, "train", "models/model.safetensors")
        assert name == f"i3d-keypoints-fp32-seed0-{model[:8]}"  # the workspace's model, bit for bit
        record = json.loads((records / name / "run.json").read_text())
        assert record["git_revision"] == {"commit": commit, "code_dirty": False, "experiment": None}
        assert record["code_fingerprint"] == code_fingerprint(yaml.safe_load((baseline / "dvc.lock").read_text()))
        assert (records / name / "predictions.parquet").read_bytes() == (baseline / "metrics" / "predictions.parquet").read_bytes()
        assert json.loads((records / name / "robustness.json").read_text()) == json.loads(
            (baseline / "metrics" / "robustness.json").read_text())
        assert run(["git", "worktree", "list"], baseline).stdout.count("\n") == 1  # its checkout is gone
    finally:  # the module's other tests share this repository
        shutil.rmtree(baseline / "results", ignore_errors=True)


def push_then_pull_into_a_clone(repo, clone, remote_args, local_config=()):
    """Push `repo`'s outputs to a remote, clone the git repo, pull them back; returns the clone."""
    run(["dvc", "remote", "add", "-f", "store", *remote_args], repo)
    for key, value in local_config:  # credentials: .dvc/config.local, never committed
        run(["dvc", "remote", "modify", "--local", "store", key, value], repo)
    run(["dvc", "push", "-r", "store"], repo)
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    run(["dvc", "remote", "add", "-f", "store", *remote_args], clone)
    for key, value in local_config:
        run(["dvc", "remote", "modify", "--local", "store", key, value], clone)
    run(["dvc", "pull", "-r", "store"], clone)
    assert (clone / "models" / "model.safetensors").read_bytes() == (repo / "models" / "model.safetensors").read_bytes()
    assert "up to date" in run(["dvc", "status"], clone).stdout
    assert "access_key" not in run(["git", "show", "HEAD:.dvc/config"], clone, check=False).stdout
    return clone


def test_push_and_pull_through_a_local_remote(baseline, tmp_path):
    """`dvc push` / `dvc pull` of data and models (through S3: the team's flow in
    tests/test_experiments.py's queue test, with credentials in .dvc/config.local)."""
    push_then_pull_into_a_clone(baseline, tmp_path / "clone", [str(tmp_path / "storage")])


def test_a_checkpoint_of_other_code_is_never_resumed(tmp_path):
    """Persistent checkpoints survive `dvc repro`; after a change to the code the stage runs, the
    rerun must start afresh rather than resume (and perhaps finish at once with the old weights)."""
    repo = make_repo(tmp_path / "code", tiny_params(num_samples=40, epochs=1))
    run(["trajvid", "generate", "--no-progress"], repo)
    run(["trajvid", "train", "--no-progress", "--live", "none"], repo)
    again = run(["trajvid", "train", "--no-progress", "--live", "none"], repo)
    assert "resuming from models/checkpoints/epoch-001" in again.stdout + again.stderr  # same code: resumes
    motion = repo / "src" / "trajvid" / "head" / "motion.py"  # in a subpackage: the fingerprint follows it
    motion.write_text(motion.read_text() + "\n# a change\n")
    changed = run(["trajvid", "train", "--no-progress", "--live", "none"], repo)
    output = changed.stdout + changed.stderr
    assert "resuming" not in output and "removed checkpoint epoch-001: it belongs to another configuration" in output
