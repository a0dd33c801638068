"""`trajvid report`'s reading of revisions, with plain git (the end-to-end report over real DVC
experiments and branches is in test_pipeline.py)."""

import json
from pathlib import Path

from conftest import run

from trajvid.tools.report import ReportedRun, load_ensembles


def ensemble_json(rmse: float) -> str:
    return json.dumps({
        "ensemble": {"weights": "equal", "members": [{"name": "a", "seed": 42}, {"name": "b", "seed": 42}],
                     "beats_best_member": {"accuracy": False, "position_rmse": True}},
        "test": {"accuracy": 0.9, "position_rmse": rmse},
    })


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_an_experiment_does_not_claim_the_ensemble_its_base_commit_holds(tmp_path):
    """A DVC experiment commit carries the workspace's files, metrics/ensemble.json included; the
    report names an ensemble after an experiment only if the experiment changed it."""
    repo = tmp_path
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    base = commit(repo, {"metrics/ensemble.json": ensemble_json(0.02)}, "base: an ensemble")
    kept = commit(repo, {"metrics/metrics.json": "{}"}, "experiment 1: the base's ensemble as it was")
    git(repo, "checkout", "-q", base)
    made = commit(repo, {"metrics/ensemble.json": ensemble_json(0.01)}, "experiment 2: a new ensemble")
    for name, sha in (("kept", kept), ("made", made)):
        git(repo, "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/{name}", sha)
    (repo / "metrics" / "ensemble.json").unlink()  # no workspace ensemble: only the revisions speak

    found = load_ensembles(repo, [ReportedRun("kept", kept, {}, {}), ReportedRun("made", made, {}, {})])
    assert [(e.source, e.metrics["test"]["position_rmse"]) for e in found] == [("made", 0.01)]
    # a branch or commit keeps what it holds, inherited or not
    found = load_ensembles(repo, [ReportedRun("main", base, {}, {}), ReportedRun("kept", kept, {}, {})])
    assert [(e.source, e.metrics["test"]["position_rmse"]) for e in found] == [("main", 0.02)]


def metrics_json(name: str, seed: int, accuracy: float, rmse: float, worst: float) -> str:
    per_class = {"linear": 1.0, "circular": worst, "helical": 1.0, "parabolic": (4 * accuracy - 2 - worst)}
    return json.dumps({
        "model": {"name": name, "head": "keypoints", "params": 1000 + seed, "size_bytes": 4_000_000},
        "test": {"accuracy": accuracy, "position_rmse": rmse, "per_class_accuracy": per_class, "samples": 1000},
        "train": {"seed": seed, "time_s": 600.0 * seed, "samples_per_s": 40.0, "epochs": 10, "device": "cpu",
                  "processes": 1},
    })


def test_the_report_tables_are_the_figures_they_read(tmp_path):
    """Three branches (i3d with two seeds, magvit with one) and a baseline, written by hand: every
    cell of comparison.md equals the metrics it read, and the grouped row is their mean and sample
    standard deviation, computed here with numpy."""
    import numpy as np
    import yaml

    from conftest import default_params
    from trajvid.tools.report import report

    repo = tmp_path
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    baseline = {"test": {"accuracy": 1.0, "position_rmse": 0.0006, "per_class_accuracy": {"linear": 1.0}},
                "copy_last": {"position_rmse": 0.0713}}
    commit(repo, {"metrics/baseline.json": json.dumps(baseline), "README": "x"}, "base")
    figures = {"i3d-1": ("i3d", 1, 0.99, 0.0081, 0.97), "i3d-2": ("i3d", 2, 0.97, 0.0093, 0.93),
               "magvit-1": ("magvit", 1, 0.995, 0.0165, 0.99)}
    for branch, (name, seed, accuracy, rmse, worst) in figures.items():
        git(repo, "checkout", "-q", "-b", branch, "main")
        params = default_params()
        params["model"] = name
        params["train"]["seed"] = seed  # training seeds on the same data: one configuration
        commit(repo, {"params.yaml": yaml.safe_dump(params), "metrics/metrics.json": metrics_json(name, seed, accuracy, rmse, worst)}, branch)
    report(repo, list(figures), repo / "reports")
    md = (repo / "reports" / "comparison.md").read_text()
    cells = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
             for line in md.splitlines() if line.startswith("| ")}
    for branch, (name, seed, accuracy, rmse, worst) in figures.items():
        row = cells[branch]
        assert row[2:5] == [name, "keypoints", str(seed)], row
        assert row[8] == f"{accuracy:.4f}" and row[10] == f"{rmse:.4f}", row
        assert row[9] == f"circular {worst:.3f}" and row[11] == f"{1000 + seed:,}" and row[13] == f"{10.0 * seed:.1f}", row
    i3d = [figures["i3d-1"], figures["i3d-2"]]
    group = cells["i3d (keypoints)"]
    accuracy, rmse, worst = (np.array([f[k] for f in i3d]) for k in (2, 3, 4))
    assert group[1:3] == ["2", "1, 2"], group
    assert group[3] == f"{accuracy.mean():.4f} ± {accuracy.std(ddof=1):.4f} (n=2)", group
    assert group[4] == f"{worst.mean():.3f} ± {worst.std(ddof=1):.3f} (n=2)", group
    assert group[5] == f"{rmse.mean():.4f} ± {rmse.std(ddof=1):.4f} (n=2)", group
    assert cells["magvit (keypoints)"][3:6] == ["0.9950", "0.990", "0.0165"]
    assert cells["classical baseline (triangulate + fit)"][3] == "1.0000"
    assert cells["classical baseline (triangulate + fit)"][5] == "0.0006"
    assert cells["copy the last visible position"][5] == "0.0713"
