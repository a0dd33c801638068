"""Where a trained model meets data: the data must be what the model was built for.

A model is built for a video size (cameras, frames, height, width) and four class names in an
order; `check_meets` compares a model's `config.json` "input" block with a dataset's metadata
(`read_metadata`) and raises ContractError naming both values and what to do; callers check
before writing anything (issue 19 measured a test RMSE of 1.087 for a 64-px model on 96-px data,
exit 0, not a word). The data's format version is checked by `open_split` itself.

The cameras are another matter: the keypoints head triangulates its 2D keypoints with a rig's
matrices, and the right rig is the one that filmed the data, which every dataset's metadata
holds. So where a model scores data (`evaluate`, `explain`) it triangulates with the data's
cameras (`use_data_cameras`), and the result says how far they are from the training's
(`camera_difference`): a model scored on a moved rig then tells whether its 2D localisation
transfers. Only `check_meets(..., cameras=True)` refuses other cameras.
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


def check_meets(config: dict, data_meta: dict, model_name: str, data_name: str, complete: bool = True,
                cameras: bool = False) -> None:
    """Raise ContractError unless the data of `data_meta` is what the model of `config` was built
    for: video size, class names, camera matrices (within CAMERA_TOLERANCE). With `complete` (a
    model's config.json) the config must state all three; without it (a model built in code,
    as `explain`'s callers may pass) what it does not state is not checked."""
    remedy = (f"score {model_name} on data generated with its own data params, or train a model on "
              f"{data_name} (`dvc repro` with those data params)")
    built = config.get("input") or {}
    if complete:
        missing = [k for k in ("video_shape_stored", "class_names", "cameras") if built.get(k) is None]
        if missing:
            raise ContractError(f"{model_name}'s config.json does not say {', '.join(missing)} (its input block); "
                                "it cannot be checked against any data: retrain it (`dvc repro train`)")
    model_shape, data_shape = list(built.get("video_shape_stored") or []), list(data_meta.get("video_shape") or [])
    if "video_shape_stored" in built and model_shape[:4] != data_shape[:4]:
        raise ContractError(f"{model_name} was built for {_size(model_shape)}, but {data_name} holds "
                            f"{_size(data_shape)}; {remedy}")
    if "class_names" in built and list(built["class_names"]) != list(data_meta.get("class_names") or []):
        raise ContractError(f"{model_name} was trained on the classes {built.get('class_names')}, but {data_name} has "
                            f"{data_meta.get('class_names')}; {remedy}")
    model_cameras, data_cameras = built.get("cameras"), data_meta.get("cameras")
    if not cameras or model_cameras is None:
        return
    if data_cameras is None:
        raise ContractError(f"{data_name} does not say which cameras filmed it; regenerate it (`dvc repro generate`)")
    for key in ("K", "R", "t"):
        a, b = np.asarray(model_cameras[key], dtype=float), np.asarray(data_cameras[key], dtype=float)
        if a.shape != b.shape or not np.allclose(a, b, rtol=CAMERA_TOLERANCE, atol=CAMERA_TOLERANCE):
            worst = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
            raise ContractError(f"{model_name} triangulates with other cameras than those that filmed {data_name} "
                                f"(camera matrix {key} differs by up to {worst:.3g}); {remedy}")


def camera_difference(config: dict, data_meta: dict) -> float:
    """The largest absolute difference between the training's and the data's camera matrices
    (K, R, t); inf when the rigs differ in shape, 0.0 for the same rig."""
    built, data = (config.get("input") or {}).get("cameras"), data_meta.get("cameras")
    if built is None or data is None:
        return float("inf")
    worst = 0.0
    for key in ("K", "R", "t"):
        a, b = np.asarray(built[key], dtype=float), np.asarray(data[key], dtype=float)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def use_data_cameras(model, cameras: dict) -> None:
    """Make a keypoints head triangulate with `cameras` (a dataset's K, R, t) instead of the ones
    it was built with; a pooled head has no cameras."""
    from trajvid.head.geometry import projection_matrices

    readout = getattr(model, "readout", None)
    if readout is not None:
        old = readout.projection
        readout.projection = projection_matrices(cameras).to(device=old.device, dtype=old.dtype)
