"""Independent oracles for the headline figures: what `evaluate`, `baseline`, validation and the
loss report is recomputed here by hand and must be equal.

The oracles read the shards with pyarrow and zstd directly (the format of docs/data.md), not with
`open_split`, and aggregate with numpy, not with `SplitMetrics`; the next position is row 32 of
`positions` (the frame after the 32 visible ones, never rendered). A figure computed on another
split, from another row or with another aggregation differs from the oracle's.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import tiny_params, tiny_sizes

from trajvid.baseline import MODELS, baseline, centroids, fit_motions
from trajvid.evaluate import evaluate
from trajvid.head.geometry import project, projection_matrices, triangulate
from trajvid.head.multitask import Outputs, build_model, multitask_loss
from trajvid.params import HeadParams, parse
from trajvid.train import setup, train, validate

CLASSES = ("linear", "circular", "helical", "parabolic")
NEXT = 32  # the row of `positions` that is the target: frames 0..31 are seen, 32 is the next one
# Predictions of one model on the same inputs agree to the last bit; the figures then differ only
# because `SplitMetrics` squares and sums the float32 errors in float32 where the oracle works in
# float64: a few float32 roundings (6e-8 each) over 5 samples per class in the tiny test split.
# Measured 2026-12-01 on this CPU: relative differences up to 4.8e-9 in the overall figures, and
# beyond 2e-8 in a per-class RMSE of another trained model. The target moved to row 31 changes
# the RMSE by 1.9 %, another split by far more: 1e-6 leaves four orders of magnitude between them.
EXACT = 1e-6
# Validation runs the model in batches of 8, the oracle in one batch of 20 (kernels may sum in
# another order). Measured 2026-12-01: relative differences up to 2.5e-9 (untrained tiny I3D,
# RMSE 0.68); the target moved to row 31 changes the RMSE by 2.7 %.
BATCHED = 1e-6


def read_split(root, split: str) -> dict[str, np.ndarray]:
    """A split straight from its shards: sample ids, labels, positions (N, 33, 3) float32 and
    videos (N, camera, frame, channel, height, width) uint8, in file order."""
    columns = {"sample_id": [], "label": [], "positions": [], "video": []}
    for path in sorted((root / "data").glob(f"{split}-*.arrow")):
        table = pa.ipc.open_stream(path.read_bytes()).read_all()
        shape = json.loads(table.schema.metadata[b"trajvid"])["video_shape"]  # (V, T, H, W, C)
        columns["sample_id"] += table.column("sample_id").to_pylist()
        columns["label"] += table.column("label").to_pylist()
        columns["positions"] += table.column("positions").to_pylist()
        for blob in table.column("video").to_pylist():
            raw = pa.Codec("zstd").decompress(blob, decompressed_size=int(np.prod(shape)))
            columns["video"].append(np.frombuffer(raw, np.uint8).reshape(shape).transpose(0, 1, 4, 2, 3))
    return {"sample_id": np.array(columns["sample_id"]), "label": np.array(columns["label"]),
            "positions": np.array(columns["positions"], dtype=np.float32), "video": np.stack(columns["video"])}


def figures(labels: np.ndarray, predicted_class: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy (overall, per class), next-position RMSE per coordinate (overall, per class), mean
    Euclidean distance, in float64 with numpy."""
    error = predicted.astype(np.float64) - truth.astype(np.float64)  # (N, 3)
    per_class = {name: labels == c for c, name in enumerate(CLASSES)}
    return {
        "accuracy": float(np.mean(predicted_class == labels)),
        "position_rmse": float(np.sqrt(np.mean(error**2))),
        "position_mean_distance": float(np.mean(np.linalg.norm(error, axis=1))),
        "per_class_accuracy": {n: float(np.mean(predicted_class[m] == labels[m])) for n, m in per_class.items()},
        "per_class_position_rmse": {n: float(np.sqrt(np.mean(error[m] ** 2))) for n, m in per_class.items()},
        "samples": len(labels),
    }


def assert_figures_equal(reported: dict, expected: dict, rel: float) -> None:
    for key, value in expected.items():
        if isinstance(value, dict):
            assert reported[key] == pytest.approx(value, rel=rel), key
        else:
            assert reported[key] == pytest.approx(value, rel=rel), (key, reported[key], value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    """A tiny I3D trained one epoch on the tiny dataset, and its evaluation."""
    out = tmp_path_factory.mktemp("oracle")
    train(parse(tiny_params(num_samples=200, epochs=1)), tiny_dataset, out / "models", live_dir=None, progress=False)
    evaluate(tiny_dataset, out / "models", out / "metrics", threads=2, num_workers=0)
    return out


def test_evaluate_reports_what_the_model_does_on_the_test_split(trained, tiny_dataset):
    """metrics.json, confusion.json and position_error.json equal the model rebuilt from its
    files and run by hand on the test shards, scored against row 32."""
    from safetensors.torch import load_file

    config = json.loads((trained / "models" / "config.json").read_text())
    model = build_model(config["backbone"], HeadParams(**config["head"]), cameras=config["input"]["cameras"],
                        **config["sizes"])
    model.load_state_dict(load_file(str(trained / "models" / "model.safetensors")))
    model.eval()
    test = read_split(tiny_dataset, "test")
    with torch.no_grad():
        logits, position = model(torch.from_numpy(test["video"]))  # one batch, as evaluate's (32 >= 20)
    predicted_class = logits.argmax(-1).numpy()
    expected = figures(test["label"], predicted_class, position.numpy(), test["positions"][:, NEXT])

    metrics = json.loads((trained / "metrics" / "metrics.json").read_text())
    assert_figures_equal(metrics["test"], expected, EXACT)
    assert metrics["test"]["position_mse"] == pytest.approx(expected["position_rmse"] ** 2, rel=EXACT)
    confusion = json.loads((trained / "metrics" / "confusion.json").read_text())
    assert confusion == [{"actual": CLASSES[a], "predicted": CLASSES[p]} for a, p in zip(test["label"], predicted_class)]
    rows = json.loads((trained / "metrics" / "position_error.json").read_text())
    assert rows == [{"class": n, "rmse": pytest.approx(v, rel=EXACT)} for n, v in expected["per_class_position_rmse"].items()]
    # the per-sample record: the same samples in order, the model's softmax and position, rows 32 and 31
    import pyarrow.parquet as pq

    table = pq.read_table(trained / "metrics" / "predictions.parquet").to_pydict()
    assert table["sample_id"] == test["sample_id"].tolist() and table["label"] == test["label"].tolist()
    probabilities = np.stack([table[f"prob_{n}"] for n in CLASSES], axis=1)
    np.testing.assert_allclose(probabilities, logits.softmax(-1).numpy(), rtol=EXACT, atol=1e-7)
    for name, rows in (("next", position.numpy()), ("target", test["positions"][:, NEXT]),
                       ("last", test["positions"][:, NEXT - 1])):
        np.testing.assert_allclose(np.stack([table[f"{name}_{c}"] for c in "xyz"], axis=1), rows, rtol=EXACT, atol=1e-7)
    assert metrics["data"] == {"fingerprint": hashlib.sha256((tiny_dataset / "SHA256SUMS").read_bytes()).hexdigest(),
                               "split": "test", "cameras_moved_by": 0.0}
    # the control: row 31 (the last visible frame) as the target gives another figure
    wrong = figures(test["label"], predicted_class, position.numpy(), test["positions"][:, NEXT - 1])
    assert abs(wrong["position_rmse"] / expected["position_rmse"] - 1) > 100 * EXACT


def test_the_baseline_and_copy_last_report_what_they_do_on_the_test_split(tiny_dataset, tmp_path):
    """baseline.json equals the classical pipeline (centroids -> triangulation with the stored
    cameras -> the motion model with the lowest BIC, extrapolated) run by hand on the test
    shards, and copy-last equals row 31 scored against row 32."""
    result = baseline(tiny_dataset, tmp_path / "baseline.json")
    assert json.loads((tmp_path / "baseline.json").read_text()) == json.loads(json.dumps(result))
    test = read_split(tiny_dataset, "test")
    P = projection_matrices(json.loads(pa.ipc.open_stream(
        sorted((tiny_dataset / "data").glob("test-*.arrow"))[0].read_bytes()).schema.metadata[b"trajvid"])["cameras"])
    chosen, predicted = [], []
    for video in test["video"]:
        uv = centroids(video.transpose(0, 1, 3, 4, 2))  # the stored layout (camera, frame, H, W, channel)
        points = triangulate(torch.from_numpy(np.swapaxes(uv, 0, 1)), P).numpy()
        fits = fit_motions(points)
        best = min(MODELS, key=lambda name: fits[name][0])
        chosen.append(CLASSES.index(best))
        predicted.append(fits[best][1].astype(np.float32))  # as the baseline reports it
    expected = figures(test["label"], np.array(chosen), np.array(predicted), test["positions"][:, NEXT])
    assert_figures_equal(result["test"], expected, 1e-6)  # the baseline adds float32 predictions
    copy_last = figures(test["label"], test["label"], test["positions"][:, NEXT - 1], test["positions"][:, NEXT])
    for key in ("position_rmse", "position_mean_distance", "per_class_position_rmse"):
        assert result["copy_last"][key] == pytest.approx(copy_last[key], rel=1e-6), key
    assert result["copy_last"]["position_rmse"] > 0.01  # row 31 is not row 32 on this data


def test_validation_reports_what_the_model_does_on_the_validation_split(tiny_dataset, tmp_path):
    """The validation figures of training (DVCLive's val/*, early stopping) equal the prepared
    model run by hand on the validation shards against row 32."""
    run = setup(parse(tiny_params(num_samples=200, epochs=1)), tiny_dataset, tmp_path / "models", None)
    result = validate(run)
    val = read_split(tiny_dataset, "validation")
    run.unwrapped.eval()
    with torch.no_grad():
        logits, position = run.unwrapped(torch.from_numpy(val["video"]))
    expected = figures(val["label"], logits.argmax(-1).numpy(), position.numpy(), val["positions"][:, NEXT])
    assert_figures_equal({k: result[k] for k in expected}, expected, BATCHED)
    wrong = figures(val["label"], logits.argmax(-1).numpy(), position.numpy(), val["positions"][:, NEXT - 1])
    assert abs(wrong["position_rmse"] / expected["position_rmse"] - 1) > 100 * BATCHED


@pytest.mark.parametrize("head", HeadParams.TYPES)
def test_the_loss_targets_row_32_and_the_visible_rows(head):
    """On constructed positions whose rows all differ, outputs equal to the truth give a zero
    position, trajectory and keypoint loss; the next position moved to row 31 does not."""
    torch.manual_seed(0)
    model = build_model("i3d", HeadParams(type=head), **tiny_sizes("i3d"))
    t = torch.linspace(0, 1, 33)
    positions = torch.stack([torch.stack([t - 0.5, 0.5 * t ** 2, 0.2 + 0.1 * t], dim=-1),
                             torch.stack([0.3 * torch.cos(3 * t), 0.3 * torch.sin(3 * t), t - 0.5], dim=-1)])
    model.set_position_stats(positions[:, NEXT].mean(0), torch.tensor([0.5, 0.5, 0.5]))
    labels = torch.tensor([0, 2])
    logits = torch.tensor([[9.0, 0, 0, 0], [0, 0, 9.0, 0]])
    keypoints = None if head == "pooled" else project(positions[:, :NEXT], model.readout.projection)

    def parts(next_position):
        out = Outputs(logits, next_position, positions[:, :NEXT], keypoints)
        return multitask_loss(model, out, labels, positions)[1]

    right = parts(positions[:, NEXT])
    assert right["position_mse_normalised"] == 0 and right["trajectory_mse_normalised"] == 0
    if head == "keypoints":
        assert right["keypoint_distance_px"] < 1e-3  # float32 pixels of float64 projections
    wrong = parts(positions[:, NEXT - 1])
    expected = (((positions[:, NEXT - 1] - positions[:, NEXT]) / 0.5) ** 2).mean()
    assert wrong["position_mse_normalised"] == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 1e-4


def test_the_loss_parts_are_the_documented_formulas():
    """Cross-entropy and the normalised MSEs, recomputed by hand on random outputs."""
    torch.manual_seed(1)
    model = build_model("i3d", HeadParams(type="pooled"), **tiny_sizes("i3d"))
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 0.7, 0.9])
    model.set_position_stats(mean, std)
    positions = torch.rand(3, 33, 3)
    out = Outputs(torch.randn(3, 4), torch.rand(3, 3), torch.rand(3, 32, 3), None)
    labels = torch.tensor([1, 0, 3])
    total, parts = multitask_loss(model, out, labels, positions)
    log_probs = out.logits.log_softmax(-1)
    ce = -log_probs[torch.arange(3), labels].mean()
    pos = (((out.next_position - positions[:, NEXT]) / std) ** 2).mean()
    traj = (((out.trajectory - positions[:, :NEXT]) / std) ** 2).mean()
    assert float(parts["cross_entropy"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(parts["position_mse_normalised"]) == pytest.approx(float(pos), rel=1e-6)
    assert float(parts["trajectory_mse_normalised"]) == pytest.approx(float(traj), rel=1e-6)
    assert float(total) == pytest.approx(float(ce + pos + traj), rel=1e-6)
    assert not math.isclose(float(pos), float((((out.next_position - positions[:, NEXT - 1]) / std) ** 2).mean()))


def test_evaluate_on_the_validation_split_names_it_and_scores_it(trained, tiny_dataset, tmp_path):
    """`trajvid evaluate --split validation` (design comparisons never look at the test split):
    the figures are the validation split's, under its name, and no test figures are written."""
    from trajvid.model_files import load_trained

    result = evaluate(tiny_dataset, trained / "models", tmp_path, threads=2, num_workers=0, split="validation")
    assert "test" not in result and json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    model, _ = load_trained(trained / "models")
    val = read_split(tiny_dataset, "validation")
    with torch.no_grad():
        logits, position = model(torch.from_numpy(val["video"]))
    expected = figures(val["label"], logits.argmax(-1).numpy(), position.numpy(), val["positions"][:, NEXT])
    assert_figures_equal(result["validation"], expected, EXACT)
