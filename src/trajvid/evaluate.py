"""The `evaluate` stage: the trained model on the held-out test split -> metrics/ (kept in git).

Writes (each whole or not at all, `files.write_json`)
  metrics/metrics.json         model, test and train figures (docs/data.md, "Outputs")
  metrics/confusion.json       one {actual, predicted} row per test sample (a DVC `confusion` plot)
  metrics/position_error.json  per-class next-position RMSE rows (a DVC bar plot)
"""

from __future__ import annotations

from pathlib import Path

from trajvid.data.scene import CLASS_NAMES
from trajvid.data.shards import open_split
from trajvid.head.multitask import count_parameters
from trajvid.inference import outputs
from trajvid.metrics import SplitMetrics
from trajvid.model_files import WEIGHTS, load_trained
from trajvid.runtime.devices import set_threads
from trajvid.runtime.files import write_json, writing


def predict(model, dataset, batch_size: int = 32, num_workers: int = 2) -> tuple[SplitMetrics, list[dict]]:
    """The figures of `dataset` and one {actual, predicted} row per sample."""
    metrics, confusion = SplitMetrics(), []
    for batch, [(logits, position)] in outputs([model], dataset, batch_size, num_workers):
        labels = batch["label"]
        metrics.add(logits, labels, position, batch["positions"][:, -1].to(position.device))
        confusion += [{"actual": CLASS_NAMES[a], "predicted": CLASS_NAMES[p]}
                      for a, p in zip(labels.tolist(), logits.argmax(-1).cpu().tolist())]
    return metrics, confusion


def evaluate(data_dir: str | Path = "data/trajectories", model_dir: str | Path = "models",
             out_dir: str | Path = "metrics", threads: int = 0, num_workers: int = 2, split: str = "test") -> dict:
    """The trained model's figures on `split`: the test split for a run's result (the stage), the
    validation split for design comparisons (`bench/full_run.py --reduced`), under that name."""
    set_threads(threads)
    scored = open_split(data_dir, split)  # checks the shards before any other work
    model, config = load_trained(model_dir)
    metrics, confusion = predict(model, scored, num_workers=num_workers)
    figures = metrics.result()
    del figures["losses"]  # none are computed here: only the task figures
    training = config["training"]
    result = {
        "model": {
            "name": config["backbone"],
            "head": config["head"]["type"],
            "params": count_parameters(model),
            "size_bytes": (Path(model_dir) / WEIGHTS).stat().st_size,
        },
        split: figures,
        "train": {
            "seed": config["seed"],  # the training's
            "data_seed": config.get("data_seed"),
            "time_s": training["time_s"],
            "samples_per_s": training["samples_per_s"],
            "epochs": training["epochs"],
            "device": training["device"],
            "processes": training["processes"],
        },
    }
    out = Path(out_dir)
    with writing("the test metrics", out):
        write_json(out / "confusion.json", confusion)
        write_json(out / "position_error.json",
                   [{"class": name, "rmse": rmse} for name, rmse in figures["per_class_position_rmse"].items()])
        write_json(out / "metrics.json", result)
    return result
