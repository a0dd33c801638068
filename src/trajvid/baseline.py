"""The `baseline` stage: the classical yardstick every learned backbone is compared with.

No learning, only geometry and the known cameras:
1. the sphere's intensity-weighted centroid in every camera and frame (pixels), made robust to
   sensor noise the way a practitioner would: subtract the known static background, estimate the
   noise level from the frames themselves, keep only what stands above 4 noise sigmas, and take
   the centroid in a window round the brightest (3x3-smoothed) spot; on clean data this is the
   plain centroid (noise level 0, the window holds the whole sphere);
2. multi-view triangulation of each frame's four centroids with the camera matrices stored in
   the dataset (linear least squares, the inhomogeneous DLT);
3. one least-squares fit per motion model to the 32 triangulated positions at t = 0..31: a line,
   a horizontal circle at constant angular speed, a helix (the circle plus a steady climb), a
   vertical-plane parabola (horizontal motion linear in t, height quadratic);
4. the class is the model with the lowest BIC (n log(RSS/n) + k log n, with a noise floor added
   to RSS: the simpler model wins unless the extra parameter explains more than noise), and the
   next position (t = 32) is that model extrapolated.

It writes metrics/baseline.json with the keys of metrics/metrics.json (model, test, train) so that
`dvc metrics show` / `diff` and reports put it beside the backbones, plus the copy-last-frame
figure (predicting the last visible position) and the per-frame triangulation error.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from trajvid.data.scene import BACKGROUND, CLASS_NAMES, sphere_reach
from trajvid.data.shards import dataset_fingerprint, open_split, read_metadata
from trajvid.head.geometry import projection_matrices, triangulate
from trajvid.metrics import SplitMetrics
from trajvid.runtime.files import write_json, writing

MODELS = CLASS_NAMES  # one motion model per class, in class-id order
NUM_PARAMETERS = {"linear": 6, "circular": 6, "helical": 7, "parabolic": 7}
# Residuals below this (world units, per coordinate) count as measurement noise, not shape:
# triangulated centroids carry a small, smooth error (0.0016 RMSE on the default data), which a
# model with one more parameter can partly fit. Chosen on the validation split of the default
# dataset (seed 42): floors 0.001 / 0.002 / 0.003 / 0.005 / 0.01 gave accuracy 0.993 / 0.998 /
# 0.999 / 1.000 / 1.000 at the same next-position RMSE (0.0006).
NOISE_FLOOR = 0.005


THRESHOLD_SIGMAS = 4.0  # a pixel counts as sphere where it stands this many noise sigmas above the background
MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a Gaussian is 0.6745 sigma


def noise_sigma(video: np.ndarray) -> float:
    """The sensor noise of a stored video in uint8 levels, from the median absolute deviation of
    its pixels from the background (nearly every pixel is background); 0 for clean renders."""
    sample = video[:, ::4].astype(np.float32) - BACKGROUND  # every fourth frame is plenty
    return MAD_TO_SIGMA * float(np.median(np.abs(sample)))


def centroids(video: np.ndarray, reach: int = 4) -> np.ndarray:
    """Centroids (camera, frame, 2) in pixel coordinates (pixel centres at +0.5) of the sphere in
    a stored video (camera, frame, height, width, channel) uint8: the background-subtracted
    intensity above THRESHOLD_SIGMAS noise sigmas, weighted, in the window of `reach` + 1 pixels
    either side of the brightest 3x3 spot."""
    excess = (video.astype(np.float32) - BACKGROUND).sum(-1)  # (V, T, H, W); the sphere is brighter in every channel
    threshold = THRESHOLD_SIGMAS * math.sqrt(3) * noise_sigma(video)  # noise of a sum of three channels
    weight = np.clip(excess - threshold, 0, None)
    V, T, H, W = weight.shape
    padded = np.pad(weight, ((0, 0), (0, 0), (1, 1), (1, 1)))
    smooth = sum(padded[..., i:i + H, j:j + W] for i in range(3) for j in range(3))
    peak = smooth.reshape(V, T, -1).argmax(-1)
    rows, cols = np.arange(H), np.arange(W)
    near_row = np.abs(rows - (peak // W)[..., None]) <= reach + 1  # (V, T, H)
    near_col = np.abs(cols - (peak % W)[..., None]) <= reach + 1  # (V, T, W)
    window = near_row[..., :, None] * near_col[..., None, :]
    weight = weight * window
    total = weight.sum((-1, -2))
    faint = total == 0  # nothing above the threshold (a sphere faint in that view): the plain excess there
    if faint.any():
        weight[faint] = (np.clip(excess, 0, None) * window)[faint]
        total = weight.sum((-1, -2))
    u = (weight.sum(-2) @ (cols + 0.5)) / total
    v = (weight.sum(-1) @ (rows + 0.5)) / total
    return np.stack([u, v], axis=-1)


def _polynomial(t: np.ndarray, y: np.ndarray, degree: int, t_next: float) -> tuple[np.ndarray, float]:
    coefficients = np.polynomial.polynomial.polyfit(t, y, degree)
    return np.polynomial.polynomial.polyval(t, coefficients), float(np.polynomial.polynomial.polyval(t_next, coefficients))


def _circle(t: np.ndarray, xy: np.ndarray, t_next: float) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal circle at constant angular speed: fitted xy (T, 2) and the next xy (2,)."""
    A = np.column_stack([2 * xy, np.ones(len(xy))])  # algebraic (Kasa) fit of the centre
    cx, cy, c = np.linalg.lstsq(A, (xy**2).sum(1), rcond=None)[0]
    centre = np.array([cx, cy])
    offset = xy - centre
    radius = np.sqrt(max(c + cx**2 + cy**2, 0.0))
    angle = np.unwrap(np.arctan2(offset[:, 1], offset[:, 0]))
    a, omega = np.polynomial.polynomial.polyfit(t, angle, 1)
    fitted = centre + radius * np.stack([np.cos(a + omega * t), np.sin(a + omega * t)], axis=-1)
    following = centre + radius * np.array([np.cos(a + omega * t_next), np.sin(a + omega * t_next)])
    return fitted, following


def fit_motions(points: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Each motion model fitted to points (T, 3) at t = 0..T-1: name -> (BIC, position at t = T)."""
    T = len(points)
    t = np.arange(T, dtype=np.float64)
    results = {}
    fits = {}
    for name in MODELS:
        if name in ("linear", "parabolic"):
            columns = [_polynomial(t, points[:, i], 1 if (name == "linear" or i < 2) else 2, T) for i in range(3)]
            fitted = np.stack([c[0] for c in columns], axis=1)
            following = np.array([c[1] for c in columns])
        else:
            xy, xy_next = _circle(t, points[:, :2], T)
            z, z_next = _polynomial(t, points[:, 2], 0 if name == "circular" else 1, T)
            fitted = np.column_stack([xy, z])
            following = np.array([*xy_next, z_next])
        fits[name] = (fitted, following)
    n = points.size
    for name, (fitted, following) in fits.items():
        rss = float(((fitted - points) ** 2).sum()) + n * NOISE_FLOOR**2
        results[name] = (n * np.log(rss / n) + NUM_PARAMETERS[name] * np.log(n), following)
    return results


def run_baseline(data_dir: str | Path, split: str = "test", cameras: dict | None = None) -> dict:
    """The baseline on one split (or "all": every sample), its figures under the split's name as in
    metrics.json, plus its own. `cameras` (K, R, t) default to the ones stored in the dataset."""
    if split not in ("test", "validation", "all"):  # ("train" is its key for timings)
        raise ValueError(f"split {split!r} is not allowed for the baseline: use test, validation or all")
    dataset = open_split(data_dir, split)
    cameras = cameras or read_metadata(data_dir)["cameras"]
    P = projection_matrices(cameras)  # (V, 3, 4)
    reach = sphere_reach(cameras["K"], cameras["t"])  # the window round the sphere
    metrics, copy_last = SplitMetrics(), SplitMetrics()
    triangulation_sq, triangulated_frames = 0.0, 0
    start = time.perf_counter()
    for index in range(len(dataset)):
        positions = dataset.positions[index]  # (T + 1, 3)
        uv = centroids(dataset.video(index), reach)  # (V, T, 2)
        points = triangulate(torch.from_numpy(np.swapaxes(uv, 0, 1)), P).numpy()  # (T, 3)
        triangulation_sq += float(((points - positions[:-1]) ** 2).sum())
        triangulated_frames += len(points)
        fits = fit_motions(points)
        scores = torch.tensor([[-fits[name][0] for name in MODELS]])  # higher is better, as logits
        best = MODELS[int(scores.argmax())]
        label = torch.tensor([int(dataset.labels[index])])
        target = torch.from_numpy(positions[-1:].astype(np.float32))
        metrics.add(scores, label, torch.from_numpy(fits[best][1][None].astype(np.float32)), target)
        copy_last.add(scores, label, torch.from_numpy(positions[-2:-1].astype(np.float32)), target)
    seconds = time.perf_counter() - start
    figures, copied = metrics.result(), copy_last.result()
    del figures["losses"]
    return {
        "model": {"name": "baseline", "params": 0, "size_bytes": 0},
        split: figures,
        "train": {"time_s": seconds, "samples_per_s": len(dataset) / seconds, "epochs": 0, "device": "cpu",
                  "processes": 1},
        "copy_last": {k: copied[k] for k in ("position_mse", "position_rmse", "position_mean_distance",
                                             "per_class_position_rmse")},
        "triangulation": {"position_rmse": float(np.sqrt(triangulation_sq / (3 * triangulated_frames)))},
        "split": split,
        "data": {"fingerprint": dataset_fingerprint(data_dir), "split": split},  # as metrics.json's
    }


def baseline(data_dir: str | Path = "data/trajectories", out: str | Path = "metrics/baseline.json",
             split: str = "test") -> dict:
    result = run_baseline(data_dir, split)
    with writing("the baseline metrics", out):
        write_json(out, result)
    return result
