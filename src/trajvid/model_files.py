"""The trained model on disk: `models/model.safetensors` + `models/config.json`.

config.json holds the backbone's name, its sizes, the head's params and the input size, which is
everything needed to rebuild the network (`load_trained`), plus what the run was (train params,
seed, fingerprint, time, device). The weights are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trajvid.backbone import InputSize
from trajvid.files import atomic_write, write_json
from trajvid.models import MultiTaskModel, build_model
from trajvid.params import HeadParams

WEIGHTS, CONFIG = "model.safetensors", "config.json"


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
    # metadata with one key: safetensors would order several at random, and the file must be
    # byte-identical for identical weights
    atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    write_json(out_dir / CONFIG, config)


def load_trained(model_dir: str | Path) -> tuple[MultiTaskModel, dict]:
    """Rebuild a trained model (in eval mode) from model_dir/config.json and model_dir/model.safetensors."""
    model_dir = Path(model_dir)
    for name in (CONFIG, WEIGHTS):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} not found; run `dvc repro train` (or `dvc pull`) first")
    config = json.loads((model_dir / CONFIG).read_text())
    model = build_model(
        config["backbone"],
        HeadParams(**config["head"]),
        input_size_from_shape(config["input"]["video_shape_stored"]),
        **config["sizes"],
    )
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
    model.eval()
    return model, config
