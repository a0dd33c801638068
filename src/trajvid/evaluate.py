"""The `evaluate` stage: the trained model on the held-out test split -> metrics/ (kept in git).

Writes
  metrics/metrics.json      model, test and train figures (SPEC.md section 5)
  metrics/confusion.json    one {actual, predicted} row per test sample (a DVC `confusion` plot)
  metrics/position_error.json  per-class next-position RMSE rows (a DVC bar plot)
each to a temporary name first, then renamed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from trajvid.data import open_split
from trajvid.models import count_parameters
from trajvid.scene import CLASS_NAMES
from trajvid.train import load_trained, set_threads


@torch.no_grad()
def predict(model, dataset, batch_size: int = 32, num_workers: int = 2) -> dict[str, torch.Tensor]:
    """Labels, predicted classes, next-position targets and predictions (world units), on the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    labels, predictions, targets, positions = [], [], [], []
    for batch in loader:
        logits, position = model(batch["video"].to(device))
        labels.append(batch["label"])
        predictions.append(logits.argmax(-1).cpu())
        targets.append(batch["positions"][:, -1])
        positions.append(position.float().cpu())
    return {
        "label": torch.cat(labels),
        "predicted": torch.cat(predictions),
        "target": torch.cat(targets),
        "position": torch.cat(positions),
    }


def compute_metrics(result: dict[str, torch.Tensor]) -> dict:
    labels, predicted = result["label"], result["predicted"]
    squared = ((result["position"] - result["target"]) ** 2).sum(-1)  # (N,) squared distance
    mse = squared.mean().item() / 3  # per coordinate
    per_class = {}
    per_class_rmse = {}
    for c, name in enumerate(CLASS_NAMES):
        mask = labels == c
        per_class[name] = (predicted[mask] == c).float().mean().item() if mask.any() else float("nan")
        per_class_rmse[name] = math.sqrt(squared[mask].mean().item() / 3) if mask.any() else float("nan")
    return {
        "accuracy": (predicted == labels).float().mean().item(),
        "position_mse": mse,
        "position_rmse": math.sqrt(mse),
        "position_mean_distance": squared.sqrt().mean().item(),
        "per_class_accuracy": per_class,
        "per_class_position_rmse": per_class_rmse,
        "samples": len(labels),
    }


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def evaluate(data_dir: str | Path = "data/trajectories", model_dir: str | Path = "models",
             out_dir: str | Path = "metrics", threads: int = 0, num_workers: int = 2) -> dict:
    set_threads(threads)
    model, config = load_trained(model_dir)
    test = open_split(data_dir, "test")
    result = predict(model, test, num_workers=num_workers)
    training = config["training"]
    metrics = {
        "model": {
            "name": config["backbone"],
            "params": count_parameters(model),
            "size_bytes": (Path(model_dir) / "model.safetensors").stat().st_size,
        },
        "test": compute_metrics(result),
        "train": {
            "time_s": training["time_s"],
            "samples_per_s": training["samples_per_s"],
            "epochs": training["epochs"],
            "device": training["device"],
            "processes": training["processes"],
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    confusion = [
        {"actual": CLASS_NAMES[a], "predicted": CLASS_NAMES[p]}
        for a, p in zip(result["label"].tolist(), result["predicted"].tolist())
    ]
    _write_json(out / "confusion.json", confusion)
    _write_json(
        out / "position_error.json",
        [{"class": name, "rmse": rmse} for name, rmse in metrics["test"]["per_class_position_rmse"].items()],
    )
    _write_json(out / "metrics.json", metrics)
    return metrics
