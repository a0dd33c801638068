"""Experiments with real DVC in throw-away git repositories, on tiny data and narrow models:
`dvc exp run` and the queue, the team's flow through a git and an S3 remote, branches compared
with `dvc metrics diff` / `dvc plots diff`, ensembles and reports of experiments and branches.
(`dvc repro` of one workspace, stage invalidation, checkout, resume: tests/test_pipeline.py.)"""

import json
import time

import pytest
import yaml
from conftest import copy_repo, make_repo, run, start_queue, tiny_params

pytestmark = pytest.mark.slow


def test_exp_run_and_the_queue_show_their_experiments_in_exp_show(tmp_path):
    """`dvc exp run` of one backbone, then a `-j 2` queue of another and one of other data (one
    round of two at once). Two backbones, not all five: experiments are this suite's costliest
    steps on 2 cores, and the queue treats every backbone alike; others meet DVC elsewhere
    (magvit in test_branches_compare_with_metrics_diff_and_plots_diff, a new backbone in
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
    first, others = "i3d", ("slowfast",)  # one by `dvc exp run`, one queued
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
    # what four `dvc remote modify --local store KEY VALUE` write, without four dvc starts
    (repo / ".dvc" / "config.local").write_text(
        "['remote \"store\"']\n"
        + "".join(f"    {key} = {value}\n" for key, value in (("endpointurl", endpoint), ("access_key_id", "testing"),
                                                             ("secret_access_key", "testing"), ("region", "us-east-1"))))


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

    same_data = [name for name in records if "-seed7-" not in name]  # not exp-i3d-seed-7 (data and training seed 7)
    combined = run(["trajvid", "ensemble", *same_data], clone)  # from the records' predictions
    assert "ensemble of 2 records" in combined.stdout, combined.stdout
    use_s3_remote(clone, endpoint)  # each member's credentials: .dvc/config.local
    run(["dvc", "exp", "pull", "origin", "--all-commits"], clone)
    listed = run(["dvc", "exp", "list", "--all-commits", "--name-only"], clone).stdout.split()
    assert set(listed) == experiments, listed
    assert (clone / ".dvc" / "cache" / "files" / "md5" / model_md5[:2] / model_md5[2:]).is_file()
    again = run(["trajvid", "collect"], clone).stdout
    assert again.count(" unchanged") == len(experiments) and " written" not in again, again


def test_branches_compare_with_metrics_diff_and_plots_diff(pipeline_run, tmp_path):
    repo = copy_repo(pipeline_run, tmp_path / "branches")  # the pipeline run and committed with i3d
    run(["git", "checkout", "-q", "-b", "i3d"], repo)
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
