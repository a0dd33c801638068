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
