"""The `evaluate` stage: the trained model on the held-out test split -> metrics/ (kept in git).

Writes (each whole or not at all, `files.write_json`)
  metrics/metrics.json         model, test and train figures (docs/data.md, "Outputs")
  metrics/confusion.json       one {actual, predicted} row per test sample (a DVC `confusion` plot)
  metrics/position_error.json  per-class next-position RMSE rows (a DVC bar plot)
  metrics/predictions.parquet  one row per scored sample (`PREDICTION_COLUMNS`): what a run record
                               keeps so that intervals and paired comparisons need no model (tools/records.py)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trajvid.contracts import ContractError, camera_difference, check_meets, use_data_cameras
from trajvid.data.shards import ALL, dataset_fingerprint, open_split, read_card, read_metadata
from trajvid.head.multitask import count_parameters
from trajvid.inference import PREDICTION_COLUMNS, predict
from trajvid.model_files import WEIGHTS, load_trained
from trajvid.runtime.devices import set_threads
from trajvid.runtime.files import atomic_write, write_json, writing


def write_predictions(path: Path, table: dict[str, np.ndarray]) -> None:
    """`table` as one Parquet file (zstd), whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = pa.table({name: table[name] for name in PREDICTION_COLUMNS})
    atomic_write(path, lambda tmp: pq.write_table(columns, tmp, compression="zstd"))


def evaluate(data_dir: str | Path = "data/trajectories", model_dir: str | Path = "models",
             out_dir: str | Path = "metrics", threads: int = 0, num_workers: int = 2, split: str = "test") -> dict:
    """The trained model's figures on `split`: the test split for a run's result (the stage), the
    validation split for design comparisons (`bench/full_run.py --reduced`), under that name."""
    set_threads(threads)
    scored = open_split(data_dir, split)  # checks the shards before any other work
    model, config = load_trained(model_dir)
    meta = read_metadata(data_dir)
    check_meets(config, meta, f"the model in {model_dir}", str(data_dir))  # size and classes, before any output
    if split == ALL and read_card(data_dir)[0] == config.get("data_seed"):
        raise ContractError(f"{data_dir} was drawn with the data seed the model in {model_dir} was trained on "
                            f"({config.get('data_seed')}): --split all would score its training samples; use --split "
                            "test, or data of another seed")
    use_data_cameras(model, meta["cameras"])  # triangulate with the cameras that filmed this data
    metrics, confusion, table = predict(model, scored, num_workers=num_workers)
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
        "data": {"fingerprint": dataset_fingerprint(data_dir), "split": split,  # which samples were scored
                 "cameras_moved_by": camera_difference(config, meta)},  # 0: the training's rig
        "train": {
            "seed": config["seed"],  # the training's
            "data_seed": config.get("data_seed"),
            "time_s": training["time_s"],
            "samples_per_s": training["samples_per_s"],
            "epochs": training["epochs"],
            "device": training["device"],
            "processes": training["processes"],
            # per epoch, comma-separated (DVC's metrics show drops lists): the summation order depends on it
            "threads": ",".join(str(t) for t in training.get("threads") or []) or None,
            "mixed_precision": training.get("mixed_precision"),
            "best_epoch": training.get("best_epoch"),
        },
    }
    out = Path(out_dir)
    with writing("the test metrics", out):
        write_json(out / "confusion.json", confusion)
        write_json(out / "position_error.json",
                   [{"class": name, "rmse": rmse} for name, rmse in figures["per_class_position_rmse"].items()])
        write_predictions(out / "predictions.parquet", table)
        write_json(out / "metrics.json", result)
    return result
