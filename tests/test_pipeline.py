"""End-to-end flows with real DVC in throw-away git repositories, on tiny data and narrow models."""

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
from conftest import BIN, ROOT, make_repo, run, start_queue, tiny_params

from trajvid.tools.records import code_fingerprint

pytestmark = pytest.mark.slow


def lock_md5(repo, stage, path):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """`dvc repro` from scratch: 40 samples, 3 epochs of a narrow I3D."""
    repo = make_repo(tmp_path_factory.mktemp("baseline"), tiny_params(num_samples=40, epochs=3))
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    return repo


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
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = repo / "models" / "checkpoints" / "epoch-001"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: dvc and the training
    proc.wait()
    assert first.exists() and not (repo / "models" / "model.safetensors").exists()

    resumed = run(["dvc", "repro"], repo)
    assert "resuming from models/checkpoints/epoch-00" in resumed.stdout + resumed.stderr
    assert lock_md5(repo, "train", "models/model.safetensors") == lock_md5(baseline, "train", "models/model.safetensors")
    ours = json.loads((repo / "metrics" / "metrics.json").read_text())["test"]
    theirs = json.loads((baseline / "metrics" / "metrics.json").read_text())["test"]
    assert ours == theirs
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


def test_exp_run_and_the_queue_show_their_experiments_in_exp_show(tmp_path):
    """`dvc exp run` of one backbone, then a `-j 2` queue of two more and one of other data.
    Three backbones, not all five: experiments are this suite's costliest steps on 2 cores, and
    the queue treats every backbone alike; the other two meet DVC elsewhere (magvit in
    test_branches_compare_with_metrics_diff_and_plots_diff, a new backbone in
    tests/test_structure.py's sixth-backbone test); every backbone trains in tests/test_models.py,
    and transformer is saved and evaluated in tests/test_train.py."""
    raw = tiny_params(num_samples=40, epochs=1)
    raw["train"]["threads"] = 0  # two at once (-j 2) share the cores instead of oversubscribing them
    repo = make_repo(tmp_path / "exps", raw)
    # the team's DVC remote (moto's S3 server) is set before the experiments run: each experiment
    # commit carries the remote's URL, which `dvc exp push` reads to push that experiment's models
    server, endpoint, s3 = s3_server()
    try:
        use_s3_remote(repo, endpoint)
        run(["git", "add", ".dvc/config"], repo)
        run(["git", "commit", "-qm", "the team's DVC remote"], repo)
        queue_report_and_share(repo, tmp_path, endpoint, s3)
    finally:
        server.stop()


def queue_report_and_share(repo, tmp_path, endpoint, s3) -> None:
    first, others = "i3d", ("slowfast", "frame2d")  # one by `dvc exp run`, two (the control among them) queued
    run(["dvc", "exp", "run", "-n", f"exp-{first}", "-S", f"model={first}"], repo)
    for name in others:
        run(["dvc", "exp", "run", "--queue", "-n", f"exp-{name}", "-S", f"model={name}"], repo)
    # another data seed and another training seed: other trajectories, so another configuration
    run(["dvc", "exp", "run", "--queue", "-n", "exp-i3d-seed-7", "-S", "model=i3d", "-S", "seed=7", "-S", "train.seed=7"], repo)
    start_queue(repo, 2)
    deadline = time.time() + 600
    workers_seen = []  # `trajvid status` finds DVC's live queue workers (by the node name DVC gives them)
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(state in status for state in ("Queued", "Running")):
            break
        if "Running" in status and not any(workers_seen):
            workers_seen.append(json.loads(run(["trajvid", "status", "--json"], repo).stdout)["queue_workers"])
        time.sleep(2)
    assert any(w and w >= 1 for w in workers_seen), workers_seen
    assert "Failed" not in status, status + run(["dvc", "queue", "logs", "exp-i3d"], repo, check=False).stdout
    # the shifted set is made once, by the first experiment: a queued one of the same data params
    # restores it and its baseline from DVC's run-cache (no uncached out in the stage)
    shift = next(iter(yaml.safe_load((repo / "params.yaml").read_text())["robustness"]["shifts"]))
    logs = run(["dvc", "queue", "logs", f"exp-{others[0]}"], repo, check=False).stdout
    assert f"Stage 'shift@{shift}' is cached - skipping run" in logs, logs
    run(["dvc", "queue", "stop", "--kill"], repo, check=False)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                metrics = rev["data"]["metrics"]["metrics/metrics.json"]["data"]
                found[rev["name"]] = metrics["model"]["name"]
    assert found == {**{f"exp-{n}": n for n in (first, *others)}, "exp-i3d-seed-7": "i3d"}, found
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], repo).stdout
    assert "test.accuracy" in table and f"exp-{first}" in table

    # `trajvid status`: the finished experiments with their test figures
    rows = {r["name"]: r for r in json.loads(run(["trajvid", "status", "--json"], repo).stdout)["runs"]}
    for name in [f"exp-{n}" for n in others] + ["exp-i3d-seed-7"]:
        assert rows[name]["state"] == "finished" and rows[name]["test_accuracy"] is not None, rows
    assert (rows["exp-i3d-seed-7"]["backbone"], rows["exp-i3d-seed-7"]["seed"]) == ("i3d", 7)

    # `trajvid report` over every experiment, before any is recorded: one row each; runs on other
    # data (data seed 7) get a section of their own, never a shared table
    accuracy = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                accuracy[rev["name"]] = rev["data"]["metrics"]["metrics/metrics.json"]["data"]["test"]["accuracy"]
    run(["trajvid", "report"], repo)
    check_report(repo / "reports", accuracy, sections=2)
    live_report = (repo / "reports" / "comparison.md").read_text()
    seven = live_report.split("data seed 7,")[1].split("## Charts")[0]
    assert "exp-i3d-seed-7" in seven and "exp-slowfast" not in seven, seven

    # the team's flow: record the runs in git, push the experiments to a git remote (a bare
    # repository) and their models to a DVC remote (moto's S3 server); a second clone reports from
    # the records alone, then pulls the experiments and finds them recorded
    share_and_report_elsewhere(repo, tmp_path, live_report, set(accuracy), endpoint, s3)

    # `trajvid ensemble` of experiments by name, weighted by their validation RMSE
    run(["trajvid", "ensemble", "exp-i3d", "exp-slowfast", "--weights", "validation"], repo)
    members = json.loads((repo / "metrics" / "ensemble.json").read_text())["ensemble"]["members"]
    inverse = {}
    for m in members:
        ref = run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{m['name']}"], repo).stdout.strip()
        live = json.loads(run(["git", "show", f"{ref}:dvclive/metrics.json"], repo).stdout)
        inverse[m["name"]] = 1 / live["val"]["position_rmse"] ** 2
    for m in members:
        assert m["weight"] == pytest.approx(inverse[m["name"]] / sum(inverse.values()), rel=1e-9), members
    # data seed 7 generated other data: refused, naming it
    other = run(["trajvid", "ensemble", "exp-i3d", "exp-i3d-seed-7"], repo, check=False)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "revision 'exp-i3d-seed-7' was trained on other data" in other.stderr, other.stderr
    twice = run(["trajvid", "ensemble", "exp-i3d", "exp-i3d"], repo, check=False)
    assert twice.returncode == 2 and "are the same commit" in twice.stderr, twice.stderr
    elsewhere = run(["trajvid", "explain", "--rev", "exp-i3d-seed-7", "--out", "explained"], repo, check=False)
    assert elsewhere.returncode == 2 and "was trained on other data" in elsewhere.stderr, elsewhere.stderr


def check_report(reports, accuracy: dict, sections: int = 1) -> None:
    """Every run's accuracy in the table (its row named by where it came from) equals its metrics
    file; the charts are PNGs; the HTML fetches nothing (no http(s) reference: charts are inline)."""
    md = (reports / "comparison.md").read_text()
    for name, value in accuracy.items():
        row = next(line for line in md.splitlines() if line.startswith("| ") and f" | {name} | " in line)
        assert f"| {value:.4f} |" in row, (name, row)
    charts = sorted(reports.glob("*.png"))
    assert len(charts) == 5 * sections and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts)
    html = (reports / "comparison.html").read_text()
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") == 5 * sections


def s3_server():
    """moto's S3 server on 127.0.0.1 with a bucket `trajvid`: (server, endpoint, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="trajvid")
    return server, endpoint, s3


def use_s3_remote(repo, endpoint) -> None:
    """The DVC remote `store` (default), its endpoint and credentials in .dvc/config.local only."""
    run(["dvc", "remote", "add", "-f", "-d", "store", "s3://trajvid/cache"], repo)
    for key, value in (("endpointurl", endpoint), ("access_key_id", "testing"),
                       ("secret_access_key", "testing"), ("region", "us-east-1")):
        run(["dvc", "remote", "modify", "--local", "store", key, value], repo)


def share_and_report_elsewhere(repo, tmp_path, live_report: str, experiments: set, endpoint, s3) -> None:
    written = run(["trajvid", "collect"], repo).stdout
    assert written.count(" written") == len(experiments), written  # the workspace is one of the experiments
    assert run(["trajvid", "collect"], repo).stdout.count(" unchanged") == len(experiments) + 1  # safe to rerun
    records = sorted(p.name for p in (repo / "results" / "runs").iterdir())
    assert len(records) == len(experiments)
    for name in records:  # each with the robustness stage's figures of its own model
        shifted = json.loads((repo / "results" / "runs" / name / "robustness.json").read_text())
        assert shifted["model"]["name"] == name.split("-")[0] and list(shifted["shifts"]) == ["faster"]
    # a workspace whose files are not what its dvc.lock ran is no run: one line, nothing written
    params_text, metrics_text = (repo / "params.yaml").read_text(), (repo / "metrics" / "metrics.json").read_text()
    for edit, needle in ((lambda: (repo / "params.yaml").write_text(params_text.replace("hidden: 256", "hidden: 128")),
                          "params.yaml's head is not the value its dvc.lock's train stage ran with"),
                         (lambda: (repo / "metrics" / "metrics.json").write_text(metrics_text.replace('"test"', '"test" ', 1)),
                          "its metrics/metrics.json is not the one its dvc.lock records")):
        edit()
        refused = run(["trajvid", "collect", "workspace"], repo, check=False)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and needle in refused.stderr, refused.stderr
        (repo / "params.yaml").write_text(params_text)
        (repo / "metrics" / "metrics.json").write_text(metrics_text)
    assert sorted(p.name for p in (repo / "results" / "runs").iterdir()) == records
    run(["trajvid", "report"], repo)
    assert (repo / "reports" / "comparison.md").read_text() == live_report  # records say what the runs said
    run(["git", "add", "results"], repo)
    run(["git", "commit", "-qm", "results: the recorded runs"], repo)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    run(["dvc", "exp", "push", "origin", "--all-commits"], repo)  # the experiments' refs, and their models to S3
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="trajvid").get("Contents", [])]
    model_md5 = json.loads((repo / "results" / "runs" / records[0] / "run.json").read_text())["model"]["md5"]
    assert f"cache/files/md5/{model_md5[:2]}/{model_md5[2:]}" in keys

    clone = tmp_path / "elsewhere"
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "models" / "model.safetensors").exists()
    run(["trajvid", "report"], clone)  # git alone: no model, no DVC cache, no experiment
    assert (clone / "reports" / "comparison.md").read_text() == live_report
    assert "access_key" not in (clone / ".dvc" / "config").read_text()

    combined = run(["trajvid", "ensemble", records[0], records[1]], clone)  # from the records' predictions
    assert "ensemble of 2 records" in combined.stdout, combined.stdout
    use_s3_remote(clone, endpoint)  # each member's credentials: .dvc/config.local
    run(["dvc", "exp", "pull", "origin", "--all-commits"], clone)
    listed = run(["dvc", "exp", "list", "--all-commits", "--name-only"], clone).stdout.split()
    assert set(listed) == experiments, listed
    assert (clone / ".dvc" / "cache" / "files" / "md5" / model_md5[:2] / model_md5[2:]).is_file()
    again = run(["trajvid", "collect"], clone).stdout
    assert again.count(" unchanged") == len(experiments) and " written" not in again, again


def test_branches_compare_with_metrics_diff_and_plots_diff(tmp_path):
    repo = make_repo(tmp_path / "branches", tiny_params(num_samples=40, epochs=1))
    run(["git", "checkout", "-q", "-b", "i3d"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "i3d"], repo)
    run(["git", "checkout", "-q", "-b", "magvit"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"] = "magvit"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "magvit"], repo)

    diff = run(["dvc", "metrics", "diff", "i3d", "magvit", "--all", "--json"], repo).stdout
    changes = json.loads(diff)["metrics/metrics.json"]
    for key in ("test.accuracy", "test.position_rmse", "train.time_s", "model.size_bytes"):
        assert key in changes and {"old", "new"} <= set(changes[key]), key
    table = run(["dvc", "metrics", "diff", "i3d", "magvit", "--all", "--md"], repo).stdout
    assert "test.position_rmse" in table
    run(["dvc", "plots", "diff", "i3d", "magvit", "-o", "diff"], repo)
    html = (repo / "diff" / "index.html").read_text()
    assert "confusion" in html.lower() or "predicted" in html

    # `trajvid ensemble` of the two branches, read through DVC without checking either out
    run(["trajvid", "ensemble", "i3d", "magvit"], repo)
    result = json.loads((repo / "metrics" / "ensemble.json").read_text())
    expected = mean_of_outputs(repo, ["i3d", "magvit"])
    assert [m["name"] for m in result["ensemble"]["members"]] == ["i3d", "magvit"]
    assert result["test"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result["test"]["position_rmse"] == pytest.approx(expected["position_rmse"], rel=1e-6)
    assert result["model"]["params"] == sum(
        json.loads(run(["git", "show", f"{b}:metrics/metrics.json"], repo).stdout)["model"]["params"] for b in ("i3d", "magvit"))

    # `trajvid report` of the two branches, by name: the two and their paired difference
    run(["trajvid", "report", "i3d", "magvit"], repo)
    check_report(repo / "reports", {branch: json.loads(run(["git", "show", f"{branch}:metrics/metrics.json"], repo).stdout)
                                    ["test"]["accuracy"] for branch in ("i3d", "magvit")})
    md = (repo / "reports" / "comparison.md").read_text()
    assert "| i3d (keypoints, fp32) | magvit (keypoints, fp32) | " in md, md

    # `trajvid explain --rev`: a branch's model, read the same way
    explained = run(["trajvid", "explain", "--rev", "magvit", "--sample", "1", "--out", "explained"], repo)
    assert "predicted" in explained.stdout
    figures = json.loads((repo / "explained" / "magvit-magvit-test-00001.json").read_text())
    assert figures["revision"] == "magvit" and "attention rollout" in figures["shares"]

    # data regenerated and committed without retraining: the lock no longer vouches for the model
    run(["git", "checkout", "-q", "-b", "stale", "i3d"], repo)
    run(["dvc", "checkout", "-q", "--force"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["noise_std"] = 0.01
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "generate"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "new data, old model"], repo)
    stale = run(["trajvid", "ensemble", "i3d", "stale"], repo, check=False)
    assert stale.returncode == 2 and "revision 'stale' has a model trained on other data" in stale.stderr, stale.stderr

    # a model in neither the cache nor a remote: one line naming the revision and `dvc pull`
    (repo / ".dvc" / "cache").rename(repo / "cache-aside")
    missing = run(["trajvid", "ensemble", "i3d", "magvit"], repo, check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "revision 'i3d'" in missing.stderr and "dvc pull" in missing.stderr, missing.stderr


def mean_of_outputs(repo, branches) -> dict:
    """Accuracy and next RMSE of the plain mean of the branches' probabilities and positions, each
    model checked out and run on its own (what `trajvid ensemble` must equal)."""
    import torch

    from trajvid.data.shards import open_split
    from trajvid.model_files import load_trained

    probabilities, positions = [], []
    for branch in branches:
        run(["git", "checkout", "-q", branch], repo)
        run(["dvc", "checkout", "-q", "--force"], repo)
        model, _ = load_trained(repo / "models")
        test = open_split(repo / "data" / "trajectories", "test")
        with torch.no_grad():
            outputs = [model(test[i]["video"][None]) for i in range(len(test))]
        probabilities.append(torch.cat([logits.softmax(-1) for logits, _ in outputs]).double())
        positions.append(torch.cat([position for _, position in outputs]).double())
        labels = torch.tensor([test[i]["label"] for i in range(len(test))])
        targets = torch.stack([test[i]["positions"][-1] for i in range(len(test))]).double()
    probs, position = sum(probabilities) / len(branches), sum(positions) / len(branches)
    return {"accuracy": (probs.argmax(-1) == labels).double().mean().item(),
            "position_rmse": ((position - targets) ** 2).mean().sqrt().item()}


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
    test_exp_run_and_the_queue_show_their_experiments_in_exp_show, with credentials in .dvc/config.local)."""
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
