"""`trajvid ensemble REV [REV ...]`: several trained models as one, on the test split.

Each member is the `models/` of a git revision (branch, tag, commit) or of a DVC experiment, read
without checking anything out (`revisions.py`: DVC's `DVCFileSystem`, local cache or remote).
Members must have been trained on the dataset evaluated here: each revision's dataset fingerprint
(the SHA-256 of its `SHA256SUMS`) must equal the local `data/trajectories`'s, whose shards
`open_split` checks against it.

The ensemble averages the members' class probabilities and their next positions, with equal
weights or (`--weights validation`) weights proportional to 1 / (validation next-position RMSE)^2
(inverse-variance weighting; the same weights apply to the class probabilities), from each
revision's `dvclive/metrics.json` (the last epoch's validation figures).

Writes `metrics/ensemble.json` in the format of `metrics/metrics.json` (model, test, train) plus
`ensemble`: the members with their revision, weight and own test figures, and whether the
ensemble beats the best member. `trajvid report` shows it as a row.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from trajvid.errors import TrajvidError
from trajvid.inference import outputs
from trajvid.runtime.files import write_json, writing
from trajvid.tools.revisions import TrainedAt, check_trained_on, load_trained_at

WEIGHTINGS = ("equal", "validation")


class EnsembleError(TrajvidError):
    """Members that cannot be combined."""


def member_weights(members: list[TrainedAt], weighting: str) -> list[float]:
    """Normalised weights for a weighting of WEIGHTINGS (`ensemble` checks it before loading anything)."""
    if weighting == "equal":
        raw = [1.0] * len(members)
    else:
        missing = [m.name for m in members if not m.val_position_rmse or not math.isfinite(m.val_position_rmse)]
        if missing:
            raise EnsembleError(f"--weights validation needs each member's dvclive/metrics.json with val.position_rmse; "
                                f"{', '.join(missing)} has none (use --weights equal)")
        raw = [1.0 / m.val_position_rmse ** 2 for m in members]
    return [w / sum(raw) for w in raw]


def verdict(rows: list[dict], test: dict) -> dict:
    """ensemble.json's best member figures and whether the ensemble beats them."""
    best_accuracy = max(r["test_accuracy"] for r in rows)
    best_rmse = min(r["test_position_rmse"] for r in rows)
    return {"best_member": {"accuracy": best_accuracy, "position_rmse": best_rmse},
            "beats_best_member": {"accuracy": test["accuracy"] > best_accuracy,
                                  "position_rmse": test["position_rmse"] < best_rmse}}


def member_outputs(members: list[TrainedAt], dataset, batch_size: int = 32, num_workers: int = 2):
    """Per member: class probabilities (N, 4) and next positions (N, 3); and the labels and true
    next positions (N,), (N, 3), from one pass over the data."""
    probabilities = [[] for _ in members]
    positions = [[] for _ in members]
    labels, targets = [], []
    for batch, per_member in outputs([m.model for m in members], dataset, batch_size, num_workers):
        for i, (logits, position) in enumerate(per_member):
            probabilities[i].append(logits.float().softmax(-1).cpu())
            positions[i].append(position.float().cpu())
        labels.append(batch["label"])
        targets.append(batch["positions"][:, -1].float())
    return ([torch.cat(p) for p in probabilities], [torch.cat(p) for p in positions],
            torch.cat(labels), torch.cat(targets))


def combine(probabilities: list[torch.Tensor], positions: list[torch.Tensor], weights: list[float]):
    """The weighted mean of the members' probabilities and positions."""
    probs = sum(w * p.double() for w, p in zip(weights, probabilities))
    position = sum(w * x.double() for w, x in zip(weights, positions))
    return probs, position


def figures(probs: torch.Tensor, position: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> dict:
    from trajvid.metrics import SplitMetrics

    metrics = SplitMetrics()
    metrics.add(probs.clamp_min(1e-12).log(), labels, position, targets)
    result = metrics.result()
    del result["losses"]
    return result


def ensemble(root: Path | str = ".", revisions: list[str] = (), data_dir: Path | str = "data/trajectories",
             out: Path | str = "metrics/ensemble.json", weighting: str = "equal", num_workers: int = 2) -> dict:
    """Average the models of `revisions` on the test split of `data_dir`; write and return the result."""
    from trajvid.data.shards import dataset_fingerprint, open_split

    root = Path(root).resolve()
    if len(revisions) < 2:
        raise EnsembleError(f"an ensemble needs at least two revisions, got {len(revisions)}")
    if weighting not in WEIGHTINGS:
        raise EnsembleError(f"--weights {weighting!r} is not one of: {', '.join(WEIGHTINGS)}")
    data_dir = Path(data_dir) if Path(data_dir).is_absolute() else root / data_dir
    test_split = open_split(data_dir, "test")  # checks the shards against SHA256SUMS
    local = dataset_fingerprint(data_dir)
    members = load_members(root, revisions, data_dir, local)
    weights = member_weights(members, weighting)
    probabilities, positions, labels, targets = member_outputs(members, test_split, num_workers=num_workers)
    test = figures(*combine(probabilities, positions, weights), labels, targets)
    rows = []
    for m, w, p, x in zip(members, weights, probabilities, positions):
        own = figures(p.double(), x.double(), labels, targets)
        rows.append({"name": m.name, "rev": m.commit, "backbone": m.config["backbone"], "head": m.config["head"].get("type", "?"),
                     "seed": m.config.get("seed"), "weight": w, "val_position_rmse": m.val_position_rmse,
                     "test_accuracy": own["accuracy"], "test_position_rmse": own["position_rmse"]})
    result = ensemble_record(members, rows, test, weighting, local)
    out = Path(out) if Path(out).is_absolute() else root / out
    with writing("the ensemble's metrics", out):
        write_json(out, result)
    return result


def load_members(root: Path, revisions: list[str], data_dir: Path, local: str) -> list[TrainedAt]:
    """Each revision's trained model; two names of one commit, or a model trained on other data
    than `data_dir` (fingerprint `local`), stop it naming them."""
    members = [load_trained_at(root, name) for name in revisions]
    seen = {}
    for m in members:
        if m.commit in seen:
            raise EnsembleError(f"revisions {seen[m.commit]!r} and {m.name!r} are the same commit {m.commit[:7]}: "
                                "each member must be another model")
        seen[m.commit] = m.name
    for m in members:
        check_trained_on(m, data_dir, local)
    return members


def ensemble_record(members: list[TrainedAt], rows: list[dict], test: dict, weighting: str, local: str) -> dict:
    """metrics/ensemble.json: metrics.json's keys (model, test, train) plus the members and the verdict."""
    from trajvid.head.multitask import count_parameters

    trainings = [m.config["training"] for m in members]
    return {
        "model": {
            "name": "ensemble",
            "head": "+".join(sorted({r["head"] for r in rows})),
            "params": sum(count_parameters(m.model) for m in members),
            "size_bytes": sum(m.model_bytes for m in members),
        },
        "test": test,
        "train": {
            "seed": [r["seed"] for r in rows],
            "time_s": sum(t["time_s"] for t in trainings),
            "epochs": [t["epochs"] for t in trainings],
            "device": sorted({t["device"] for t in trainings}),
            "processes": [t["processes"] for t in trainings],
        },
        "ensemble": {
            "weights": weighting,
            "data_fingerprint": local,
            "members": rows,
            **verdict(rows, test),
        },
    }


def ensemble_of_records(root: Path | str, names: list[str], out: Path | str = "metrics/ensemble.json",
                        weighting: str = "equal") -> dict:
    """The ensemble of run records (results/runs/<name>/), from their per-sample predictions: no
    model, no data, no DVC cache. The same result as from the models (the members' probabilities
    and positions as evaluate stored them, float32), on the samples they scored."""
    import numpy as np

    from trajvid.data.scene import CLASS_NAMES
    from trajvid.tools.records import load_records

    root = Path(root).resolve()
    if len(names) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(names)}")
    if weighting not in WEIGHTINGS:
        raise EnsembleError(f"--weights {weighting!r} is not one of: {', '.join(WEIGHTINGS)}")
    if len(set(names)) < len(names):
        raise EnsembleError(f"a record is named twice in {', '.join(names)}: each member must be another model")
    records = {r.name: r for r in load_records(root)}
    members = [records[n] for n in names]
    first = members[0]
    for m in members[1:]:
        if m.run["data_fingerprint"] != first.run["data_fingerprint"] or m.run["scored_split"] != first.run["scored_split"]:
            raise EnsembleError(f"records {first.name!r} and {m.name!r} scored other data (data {first.run['data_fingerprint'][:12]} "
                                f"{first.run['scored_split']} vs {m.run['data_fingerprint'][:12]} {m.run['scored_split']}): "
                                "an ensemble's members must score the same samples")
    if weighting == "equal":
        raw = [1.0] * len(members)
    else:
        rmse = [(m.curves.get("val/position_rmse") or [[0, math.nan]])[-1][1] for m in members]
        missing = [m.name for m, r in zip(members, rmse) if not r or not math.isfinite(r)]
        if missing:
            raise EnsembleError(f"--weights validation needs each record's val/position_rmse curve; {', '.join(missing)} "
                                "has none (use --weights equal)")
        raw = [1.0 / r**2 for r in rmse]
    weights = [w / sum(raw) for w in raw]

    def tensors(m):
        p = m.predictions
        return (torch.from_numpy(np.stack([p[f"prob_{c}"] for c in CLASS_NAMES], 1)),
                torch.from_numpy(np.stack([p[f"next_{c}"] for c in "xyz"], 1)))

    outputs_ = [tensors(m) for m in members]
    labels = torch.from_numpy(first.predictions["label"].astype(np.int64))
    targets = torch.from_numpy(np.stack([first.predictions[f"target_{c}"] for c in "xyz"], 1)).double()
    test = figures(*combine([p for p, _ in outputs_], [x for _, x in outputs_], weights), labels, targets)
    rows = []
    for m, w, (p, x) in zip(members, weights, outputs_):
        own = figures(p.double(), x.double(), labels, targets)
        rows.append({"name": m.name, "rev": (m.run["git_revision"] or {}).get("commit"), "backbone": m.run["backbone"],
                     "head": m.run["head"], "seed": m.run["train_seed"], "weight": w,
                     "val_position_rmse": (m.curves.get("val/position_rmse") or [[0, None]])[-1][1],
                     "test_accuracy": own["accuracy"], "test_position_rmse": own["position_rmse"]})
    result = {
        "model": {"name": "ensemble", "head": "+".join(sorted({r["head"] for r in rows})),
                  "params": sum(m.run["parameters"] or 0 for m in members),
                  "size_bytes": sum(m.run["model"]["size_bytes"] or 0 for m in members)},
        "test": test,
        "train": {"seed": [r["seed"] for r in rows], "time_s": sum(m.run["train_time_s"] or 0 for m in members),
                  "epochs": [m.run["epochs"] for m in members], "device": sorted({str(m.run["device"]) for m in members}),
                  "processes": [m.run["processes"] for m in members]},
        "ensemble": {"weights": weighting, "data_fingerprint": first.run["data_fingerprint"], "from": "records",
                     "members": rows, **verdict(rows, test)},
    }
    out = Path(out) if Path(out).is_absolute() else root / out
    with writing("the ensemble's metrics", out):
        write_json(out, result)
    return result
