"""The `robustness` stage: the trained model on every shifted set of params.yaml's
`robustness.shifts` -> metrics/robustness.json (kept in git), the classical baseline and copying
the last position beside it.

Each shifted set is the default dataset's data params with a few changed (sensor noise, moved
cameras, faster motions, ...), drawn with a data seed of its own (`robustness.seed`): none of
its trajectories was seen in training, so every sample of it is scored, whatever split it
lies in. The `shift` stages make the sets (`trajvid generate --shift NAME`) and score the
baseline on them (`trajvid baseline --split all`), once for every model; this stage only runs
the model. A keypoints head triangulates with the cameras of the set it reads
(`contracts.use_data_cameras`): on `moved_cameras` it says whether the model's 2D localisation
transfers to a rig it never saw; a pooled head has no cameras to change.
"""

from __future__ import annotations

import json
from pathlib import Path

from trajvid.contracts import ContractError, camera_difference, check_meets, use_data_cameras
from trajvid.data.shards import (
    ALL,
    DamagedDataError,
    MissingDataError,
    card_params,
    dataset_fingerprint,
    open_split,
    read_card,
    read_metadata,
)
from trajvid.errors import TrajvidError
from trajvid.inference import predict
from trajvid.model_files import load_trained
from trajvid.params import Params
from trajvid.runtime.devices import set_threads
from trajvid.runtime.files import write_json, writing


class StaleShiftError(TrajvidError):
    """A shifted set that is not the one params.yaml describes, or a baseline of other data."""


def check_shifted_set(params: Params, name: str, data_dir: Path, baseline: dict) -> None:
    """The set at `data_dir` must be the one params.yaml describes (its card states its seed and
    data params), and `baseline` must have scored it."""
    remedy = f"regenerate it: `dvc repro shift@{name}` (or `trajvid generate --shift {name}`)"
    seed, data = params.shifted_data(name)
    if read_card(data_dir) != (seed, json.loads(json.dumps(card_params(data)))):
        raise StaleShiftError(f"{data_dir} was made with other params than robustness.shifts.{name} (and "
                              f"robustness.seed, robustness.num_samples) give; {remedy}")
    if baseline.get("data", {}).get("fingerprint") != dataset_fingerprint(data_dir):
        raise StaleShiftError(f"the baseline's figures for {name} are of other data than {data_dir}; {remedy}")


def robustness(params: Params, model_dir: str | Path = "models", data_root: str | Path = "data/robustness",
               baselines: str | Path = "metrics/robustness", out: str | Path = "metrics/robustness.json") -> dict:
    """Score the model of `model_dir` on every shift; every set and baseline is checked before
    anything is scored, and `out` is written whole or not at all."""
    if not params.robustness.shifts:  # (dvc.yaml's foreach needs one too)
        raise ContractError("robustness.shifts is empty: there is no shifted set to score; name at least one "
                            "(fresh_seed: {} changes nothing)")
    set_threads(params.train.threads)
    data_root, baselines = Path(data_root), Path(baselines)
    model, config = load_trained(model_dir)
    if config.get("data_seed") == params.robustness.seed:
        raise ContractError(f"the model in {model_dir} was trained on data of seed {config['data_seed']}, the shifted "
                            "sets' robustness.seed: they would hold its training trajectories; use another robustness.seed")
    shifts = {}
    for name in params.robustness.shifts:  # check everything first: no half-scored file
        data_dir, baseline_file = data_root / name, baselines / f"{name}.json"
        try:
            scored = open_split(data_dir, ALL)
            meta = read_metadata(data_dir)
        except (MissingDataError, DamagedDataError) as error:
            raise StaleShiftError(f"{str(error).split(';')[0]}; make the shifted set again: `dvc repro shift@{name}` "
                                  "(or `dvc checkout` / `dvc pull` it)") from None
        check_meets(config, meta, f"the model in {model_dir}", str(data_dir))
        try:
            baseline = json.loads(baseline_file.read_text())
        except (OSError, ValueError):
            raise ContractError(f"{baseline_file} is missing or unreadable; run `dvc repro shift@{name}`") from None
        check_shifted_set(params, name, data_dir, baseline)
        shifts[name] = (data_dir, scored, meta, baseline)
    result = {"model": {"name": config["backbone"], "head": config["head"]["type"]}, "shifts": {}}
    for name, (data_dir, scored, meta, baseline) in shifts.items():
        use_data_cameras(model, meta["cameras"])  # the cameras that filmed this set
        metrics, _, _ = predict(model, scored, num_workers=params.train.num_workers)
        figures = metrics.result()
        del figures["losses"]
        result["shifts"][name] = {
            "changes": dict(params.robustness.shifts[name] or {}),
            "data": {"fingerprint": dataset_fingerprint(data_dir), "samples": len(scored),
                     "seed": params.robustness.seed, "cameras_moved_by": camera_difference(config, meta)},
            "model": figures,
            "baseline": baseline[ALL],
            "copy_last": baseline["copy_last"],
        }
    with writing("the robustness metrics", out):
        write_json(out, result)
    return result
