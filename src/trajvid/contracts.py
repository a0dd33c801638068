"""Where a trained model meets data: the data must be what the model was built for.

A model is built for a video size (cameras, frames, height, width), four class names in an
order, and a camera rig: the keypoints head triangulates with the rig's matrices, so a model
scoring data from other cameras computes positions for cameras that did not film it (issue 19
measured a test RMSE of 1.087 for a 64-px model on 96-px data, exit 0, not a word). `check_meets`
compares a model's `config.json` "input" block with a dataset's metadata (`read_metadata`) and
raises ContractError naming both values and what to do; callers check before writing anything.
(The data's format version is checked by `open_split` itself.)
"""

from __future__ import annotations

import numpy as np

from trajvid.errors import TrajvidError

CAMERA_TOLERANCE = 1e-6  # relative, on K, R and t: the JSON round trip keeps them to ~1e-12


class ContractError(TrajvidError):
    """A model given data it was not built for."""


def _size(shape) -> str:
    cameras, frames, height, width = shape[:4]
    return f"{frames} frames of {height}x{width} px from {cameras} cameras"


def check_meets(config: dict, data_meta: dict, model_name: str, data_name: str) -> None:
    """Raise ContractError unless the data of `data_meta` is what the model of `config` was built
    for: video size, class names, camera matrices (within CAMERA_TOLERANCE)."""
    remedy = (f"score {model_name} on data generated with its own data params, or train a model on "
              f"{data_name} (`dvc repro` with those data params)")
    built = config.get("input") or {}
    model_shape, data_shape = list(built.get("video_shape_stored") or []), list(data_meta.get("video_shape") or [])
    if model_shape[:4] != data_shape[:4]:
        raise ContractError(f"{model_name} was built for {_size(model_shape)}, but {data_name} holds "
                            f"{_size(data_shape)}; {remedy}")
    if list(built.get("class_names") or []) != list(data_meta.get("class_names") or []):
        raise ContractError(f"{model_name} was trained on the classes {built.get('class_names')}, but {data_name} has "
                            f"{data_meta.get('class_names')}; {remedy}")
    model_cameras, data_cameras = built.get("cameras"), data_meta.get("cameras")
    if model_cameras is None or data_cameras is None:
        raise ContractError(f"{model_name if model_cameras is None else data_name} does not say which cameras "
                            f"{'it was trained with' if model_cameras is None else 'filmed it'}; {remedy}")
    for key in ("K", "R", "t"):
        a, b = np.asarray(model_cameras[key], dtype=float), np.asarray(data_cameras[key], dtype=float)
        if a.shape != b.shape or not np.allclose(a, b, rtol=CAMERA_TOLERANCE, atol=CAMERA_TOLERANCE):
            worst = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
            raise ContractError(f"{model_name} triangulates with other cameras than those that filmed {data_name} "
                                f"(camera matrix {key} differs by up to {worst:.3g}); {remedy}")
