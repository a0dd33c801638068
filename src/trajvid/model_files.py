"""The trained model on disk: `models/model.safetensors` + `models/config.json`.

config.json holds the backbone's name, its sizes, the head's params and the input size, which is
everything needed to rebuild the network (`load_trained`), plus what the run was (train params,
seed, fingerprint, time, device). The weights are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trajvid.backbones import check_name
from trajvid.backbones.base import InputSize
from trajvid.errors import TrajvidError, first_line
from trajvid.head.multitask import MultiTaskModel, build_model
from trajvid.params import HeadParams, ParamsError, from_dict
from trajvid.runtime.files import atomic_write, write_json, writing

WEIGHTS, CONFIG = "model.safetensors", "config.json"
REMEDY = "restore it with `dvc checkout --force train` (the train stage's outputs; or `dvc pull --force train`), or retrain with `dvc repro train`"


class ModelFileError(TrajvidError):
    """A missing, damaged or foreign model file."""


def contiguous_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with contiguous tensors (channels-last weights are not), as safetensors wants."""
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def input_size_from_shape(video_shape_stored: list[int]) -> InputSize:
    """InputSize from the dataset's stored video shape (camera, frame, height, width, channel)."""
    cameras, frames, height, width, _ = video_shape_stored
    return InputSize(frames=frames, height=height, width=width, cameras=cameras)


def write_model(out_dir: str | Path, model: MultiTaskModel, config: dict) -> None:
    """model.safetensors, then config.json, each written whole under a temporary name first."""
    out_dir = Path(out_dir)
    weights = contiguous_state(model)
    needed = sum(t.numel() * t.element_size() for t in weights.values())
    # metadata with one key: safetensors would order several at random, and the file must be
    # byte-identical for identical weights
    with writing("the trained model", out_dir / WEIGHTS, needed):
        atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    with writing("the model's config", out_dir / CONFIG):
        write_json(out_dir / CONFIG, config)


def load_trained(model_dir: str | Path) -> tuple[MultiTaskModel, dict]:
    """Rebuild a trained model (in eval mode) from model_dir/config.json and model_dir/model.safetensors.

    A missing, damaged or foreign file raises ModelFileError naming the file and the remedy."""
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG, model_dir / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{path} not found; run `dvc repro train` (or `dvc pull`) first")
    config = read_config(config_path)
    try:
        model = build_model(
            config["backbone"],
            from_dict(HeadParams, config["head"], "head"),
            input_size_from_shape(config["input"]["video_shape_stored"]),
            config["input"].get("cameras"),
            **config["sizes"],
        )
    except (ParamsError, TypeError, ValueError, KeyError) as error:
        raise ModelFileError(f"{config_path} does not describe a model this code can build ({error}); {REMEDY}") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{weights_path} is damaged ({first_line(error)}); {REMEDY}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or misshapen:
        problems = [f"{len(names)} {what} (first: {names[0]})" for names, what in
                    ((missing, "missing tensors"), (unexpected, "unexpected tensors"), (misshapen, "tensors of another shape"))
                    if names]
        raise ModelFileError(f"{weights_path} does not fit the {config['backbone']} model of {config_path}: "
                             f"{', '.join(problems)}; {REMEDY}")
    model.load_state_dict(state)
    model.eval()
    return model, config


REQUIRED_KEYS = ("backbone", "sizes", "head", "input", "training")
TRAINING_KEYS = ("time_s", "samples_per_s", "epochs", "device", "processes")


def read_config(path: Path) -> dict:
    """config.json, checked for the keys a rebuild and the evaluation need."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{path} is not valid JSON ({first_line(error)}); {REMEDY}") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} is not a JSON object; {REMEDY}")
    for key in REQUIRED_KEYS:
        if key not in config:
            raise ModelFileError(f"{path} lacks the key '{key}'; {REMEDY}")
    try:
        check_name(config["backbone"], "its 'backbone'")
    except ParamsError as error:
        raise ModelFileError(f"{path} does not describe a model this code can build ({error}); {REMEDY}") from None
    shape = config["input"].get("video_shape_stored") if isinstance(config["input"], dict) else None
    if not (isinstance(shape, list) and len(shape) == 5 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ModelFileError(f"{path} has no valid 'input.video_shape_stored'; {REMEDY}")
    if not isinstance(config["head"], dict) or not isinstance(config["sizes"], dict):
        raise ModelFileError(f"{path} has malformed 'head' or 'sizes'; {REMEDY}")
    training = config["training"]
    for key in TRAINING_KEYS:
        if not isinstance(training, dict) or key not in training:
            raise ModelFileError(f"{path} lacks the key 'training.{key}'; {REMEDY}")
    return config
