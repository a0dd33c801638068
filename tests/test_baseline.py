"""The classical baseline: centroids, triangulation and per-class fits on real rendered data."""

import json

import numpy as np
import pytest
import torch
from conftest import run

from trajvid.baseline import centroids, fit_motions, run_baseline
from trajvid.data import scene
from trajvid.data.shards import open_split, read_metadata
from trajvid.head.geometry import projection_matrices, triangulate


def test_triangulation_recovers_points_from_exact_projections():
    K, R, t = scene.camera_matrices(64)
    P = projection_matrices({"K": K, "R": R, "t": t})
    points = np.random.default_rng(0).uniform(-1.5, 1.5, size=(50, 3))
    uv, _ = scene.to_pixels(points, K, R, t)  # (50, 4, 2)
    assert np.abs(triangulate(torch.from_numpy(uv), P).numpy() - points).max() < 1e-9


def test_each_motion_model_extrapolates_its_own_class_exactly():
    for label, name in enumerate(scene.CLASS_NAMES):
        for sample_id in range(label, 80, 4):
            positions = scene.sample_positions(5, sample_id, 32, 0.0)[1].astype(np.float64)
            fits = fit_motions(positions[:32])
            best = min(fits, key=lambda n: fits[n][0])
            assert best == name, (sample_id, name, {n: round(f[0]) for n, f in fits.items()})
            assert np.abs(fits[best][1] - positions[32]).max() < 1e-4


def test_centroids_triangulate_to_the_true_positions(tiny_dataset):
    split = open_split(tiny_dataset, "test")
    P = projection_matrices(read_metadata(tiny_dataset)["cameras"])
    errors = [triangulate(torch.from_numpy(np.swapaxes(centroids(split.video(i)), 0, 1)), P).numpy()
              - split.positions[i, :32] for i in range(len(split))]
    assert np.sqrt(np.mean(np.square(errors))) < 0.005


def test_baseline_meets_its_targets_and_a_wrong_camera_fails_them(tiny_dataset):
    result = run_baseline(tiny_dataset)
    test = result["test"]
    assert test["accuracy"] >= 0.95 and test["position_rmse"] <= 0.006, test
    assert result["copy_last"]["position_rmse"] > 5 * test["position_rmse"]
    cameras = read_metadata(tiny_dataset)["cameras"]
    swapped = {k: [cameras[k][1], cameras[k][0], *cameras[k][2:]] if k in ("R", "t") else cameras[k]
               for k in ("K", "R", "t")}  # cameras 0 and 1 exchanged
    broken = run_baseline(tiny_dataset, cameras=swapped)["test"]
    assert broken["position_rmse"] > 0.1, broken


@pytest.mark.slow
def test_baseline_command_writes_metrics_in_the_metrics_format(tiny_dataset, tmp_path):
    result = run(["trajvid", "baseline", "--data", str(tiny_dataset), "--out", str(tmp_path / "baseline.json")], tmp_path)
    assert "baseline: test accuracy" in result.stdout
    written = json.loads((tmp_path / "baseline.json").read_text())
    assert {"model", "test", "train", "copy_last", "triangulation"} <= set(written)
    assert written["model"]["name"] == "baseline"
    assert {"accuracy", "position_mse", "position_rmse", "per_class_accuracy"} <= set(written["test"])
