"""Shifted data (issue 19): sensor noise, a moved rig, faster motions; the default dataset left
byte-identical; the robust baseline; the `shift` and `robustness` stages."""

import hashlib
import json
import math

import numpy as np
import pytest
from conftest import default_params, run, tiny_params, write_params

from trajvid.baseline import BACKGROUND, centroids, run_baseline
from trajvid.data import scene
from trajvid.data.shards import open_split, read_metadata
from trajvid.errors import ParamsError, TrajvidError
from trajvid.generate import generate
from trajvid.params import CameraRigParams, DataParams, parse

# SHA-256 of the SHA256SUMS of the 40-sample dataset below, as the code before the shifts
# existed wrote it (commit 36e5408): the shifts' defaults must leave every byte as it was.
DEFAULT_40_FINGERPRINT = "fb0dda9ae715fe9aef4e9d9c4ea869057cbdab0f3278aa54d4901f0d912cde9b"


def make(tmp_path, name: str, seed: int = 7, **changes) -> tuple:
    data = DataParams(num_samples=40, workers=1, **changes)
    generate(seed, data, tmp_path / name, progress=False)
    return tmp_path / name, open_split(tmp_path / name, "all")


def test_the_default_dataset_is_byte_identical_to_the_one_before_the_shifts(tmp_path):
    out, _ = make(tmp_path, "default")
    assert hashlib.sha256((out / "SHA256SUMS").read_bytes()).hexdigest() == DEFAULT_40_FINGERPRINT
    card = (out / "README.md").read_text()
    assert '"pixel_noise_std"' not in card and '"speed"' not in card and "azimuths 0, 90, 180 and 270" in card


def test_sensor_noise_is_gaussian_deterministic_and_leaves_the_motions_alone(tmp_path):
    _, clean = make(tmp_path, "clean")
    _, noisy = make(tmp_path, "noisy", pixel_noise_std=4.0)
    _, again = make(tmp_path, "again", pixel_noise_std=4.0)
    np.testing.assert_array_equal(noisy.positions, clean.positions)
    np.testing.assert_array_equal(noisy.labels, clean.labels)
    for i in (0, 17):
        np.testing.assert_array_equal(noisy.video(i), again.video(i))  # a pure function of (seed, sample_id)
        difference = noisy.video(i).astype(np.float64) - clean.video(i)
        assert abs(difference.mean()) < 0.05 and difference.std() == pytest.approx(4.0, rel=0.03)
    assert not np.array_equal(noisy.video(0), noisy.video(1))  # each sample's own noise
    assert "Sensor noise: Gaussian of standard deviation 4 uint8 levels" in (tmp_path / "noisy" / "README.md").read_text()


def test_faster_motions_go_further_per_frame_and_stay_in_the_cube(tmp_path):
    _, normal = make(tmp_path, "normal")
    _, faster = make(tmp_path, "faster", speed=1.5)
    np.testing.assert_array_equal(faster.labels, normal.labels)
    assert np.abs(faster.positions).max() <= scene.CUBE_HALF
    step = {name: np.linalg.norm(np.diff(split.positions, axis=1), axis=-1) for name, split in
            (("normal", normal), ("faster", faster))}
    linear = normal.labels == 0  # straight lines at constant speed: the path length / 32 per frame
    bounds = np.array(scene.RANGES["linear"]["path_length"]) / 32
    assert bounds[0] - 1e-6 <= step["normal"][linear].min() and step["normal"][linear].max() <= bounds[1] + 1e-6
    assert 1.5 * bounds[0] - 1e-6 <= step["faster"][linear].min() and step["faster"][linear].max() <= 1.5 * bounds[1] + 1e-6
    circular = normal.labels == 1
    ratio = step["faster"][circular].mean() / step["normal"][circular].mean()
    assert 1.3 < ratio < 1.7, ratio


def test_a_moved_rig_films_the_motions_where_its_cameras_project_them(tmp_path):
    rig = CameraRigParams(azimuth_offset_deg=30.0, distance=6.0, height=2.5, fov_deg=55.0)
    out, moved = make(tmp_path, "moved", cameras=rig)
    meta = read_metadata(out)
    assert meta["cameras"]["azimuth_deg"] == [30, 120, 210, 300]
    K, R, t = scene.camera_matrices(64, rig)
    np.testing.assert_allclose(np.asarray(meta["cameras"]["R"]), R, atol=1e-9)
    for i in range(0, 40, 7):
        expected, _ = scene.to_pixels(moved.positions[i, :32].astype(np.float64), K, R, t)  # (T, C, 2)
        found = centroids(moved.video(i), scene.sphere_reach(meta["cameras"]["K"], meta["cameras"]["t"]))
        assert np.abs(np.swapaxes(found, 0, 1) - expected).max() < 0.25  # pixels: the rendered sphere is there
    assert "radius\n6 at height 2.5, at azimuths 30, 120, 210 and 300 degrees" in (out / "README.md").read_text()


@pytest.mark.parametrize("changes, message", [
    ({"cameras": {"distance": 1.0, "height": 1.0}}, "puts the cameras inside the scene"),
    ({"cameras": {"fov_deg": 20.0}}, "does not see the whole cube"),
    ({"cameras": {"fov_deg": 180.0}}, "data.cameras.fov_deg=180.0 is not allowed"),
    ({"speed": 3.0}, "data.speed=3.0 is not allowed"),
    ({"pixel_noise_std": -1.0}, "data.pixel_noise_std=-1.0 is not allowed"),
    ({"cameras": {"zoom": 2}}, "unknown key 'data.cameras.zoom'"),
])
def test_a_rig_or_shift_that_cannot_be_rendered_is_one_line_and_writes_nothing(tmp_path, changes, message):
    params = tiny_params()
    params["data"].update({k: v if k != "cameras" else {**params["data"]["cameras"], **v} for k, v in changes.items()})
    write_params(tmp_path / "params.yaml", params)
    result = run(["trajvid", "generate", "--no-progress"], tmp_path, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


def test_shifts_may_change_only_the_scene_and_name_what_they_got_wrong():
    params = tiny_params()
    params["robustness"]["shifts"] = {"bigger": {"image_size": 96}}
    with pytest.raises(ParamsError, match=r"robustness.shifts.bigger.image_size is not allowed: a shift may change only"):
        parse(params)
    params["robustness"]["shifts"] = {"jitter_0.01": {"noise_std": 0.01}}
    with pytest.raises(ParamsError, match=r"the name 'jitter_0.01' is not allowed"):
        parse(params)
    params["robustness"]["shifts"] = {"fast": {"speed": 9.0}}
    with pytest.raises(ParamsError, match=r"robustness.shifts.fast.speed=9.0 is not allowed"):
        parse(params)
    params["robustness"]["shifts"] = {"moved": {"cameras": []}}
    with pytest.raises(ParamsError, match=r"robustness.shifts.moved.cameras=\[\] is not allowed"):
        parse(params)
    params["robustness"].update({"shifts": {"fresh": {}}, "seed": params["seed"]})
    with pytest.raises(ParamsError, match=r"robustness.seed=42 is not allowed: it is the data's seed"):
        parse(params)
    seed, data = parse(tiny_params()).shifted_data("faster")
    assert (seed, data.num_samples, data.speed, data.pixel_noise_std, data.image_size) == (4242, 40, 1.5, 0.0, 64)


def plain_centroids(video):
    """The baseline's centroid before it was made robust: the intensity above the background,
    weighted over the whole image."""
    weight = np.clip(video.astype(np.float32) - BACKGROUND, 0, None).sum(-1)
    H, W = weight.shape[-2:]
    total = weight.sum((-1, -2))
    return np.stack([(weight.sum(-2) @ (np.arange(W) + 0.5)) / total,
                     (weight.sum(-1) @ (np.arange(H) + 0.5)) / total], axis=-1)


def test_the_robust_centroid_is_the_plain_one_on_clean_data_and_survives_sensor_noise(tmp_path):
    _, clean = make(tmp_path, "clean")
    _, noisy = make(tmp_path, "noisy", pixel_noise_std=8.0)
    for i in range(0, 40, 5):
        truth = plain_centroids(clean.video(i))
        np.testing.assert_allclose(centroids(clean.video(i)), truth, atol=1e-4)
        robust = np.abs(centroids(noisy.video(i)) - truth).max()
        plain = np.abs(plain_centroids(noisy.video(i)) - truth).max()
        assert robust < 0.3 and plain > 3.0, (i, robust, plain)  # pixels


def test_the_robust_baseline_keeps_its_clean_figures_and_holds_under_sensor_noise(tiny_dataset, tmp_path):
    clean = run_baseline(tiny_dataset)["test"]
    assert clean["accuracy"] >= 0.99 and clean["position_rmse"] <= 0.006, clean
    generate(7, DataParams(num_samples=200, shard_size=64, workers=2, pixel_noise_std=2.0), tmp_path / "noisy",
             progress=False)
    noisy = run_baseline(tmp_path / "noisy")["test"]
    assert noisy["accuracy"] >= 0.99 and noisy["position_rmse"] <= 2 * clean["position_rmse"], (clean, noisy)


def test_the_robustness_stage_scores_every_shift_beside_the_baseline(tiny_dataset, tmp_path):
    """The `shift` and `robustness` stages' commands (in process, on a tiny model) for every shift
    of params.yaml: one shifted set and baseline per shift, and metrics/robustness.json with the
    model, the baseline and copy-last on each; a stale baseline is refused before anything is
    written. (The stages' DVC wiring runs in every DVC test of test_pipeline.py and
    test_experiments.py, one shift.)"""
    from trajvid.baseline import baseline
    from trajvid.robustness import robustness
    from trajvid.train import train

    raw = tiny_params(num_samples=200, epochs=1)
    raw["robustness"]["shifts"] = default_params()["robustness"]["shifts"]
    params = parse(raw)
    train(params, tiny_dataset, tmp_path / "models", live_dir=None, progress=False)
    for name in params.robustness.shifts:
        seed, data = params.shifted_data(name)
        generate(seed, data, tmp_path / "robustness" / name, progress=False)
        baseline(tmp_path / "robustness" / name, tmp_path / "baselines" / f"{name}.json", split="all")
    out = tmp_path / "robustness.json"
    result = robustness(params, tmp_path / "models", tmp_path / "robustness", tmp_path / "baselines", out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["shifts"]) == list(raw["robustness"]["shifts"])
    assert result["model"] == {"name": "i3d", "head": "keypoints"}
    for name, shift in result["shifts"].items():
        baseline_figures = json.loads((tmp_path / "baselines" / f"{name}.json").read_text())
        assert shift["baseline"] == baseline_figures["all"] and shift["copy_last"] == baseline_figures["copy_last"]
        assert shift["data"]["samples"] == shift["model"]["samples"] == 40 and shift["data"]["seed"] == 4242
        assert 0 <= shift["model"]["accuracy"] <= 1 and math.isfinite(shift["model"]["position_rmse"])
        assert (shift["data"]["cameras_moved_by"] > 0) == (name == "moved_cameras")
        assert shift["baseline"]["accuracy"] >= 0.95, (name, shift["baseline"])  # the yardstick holds on every shift
    noisy = open_split(tmp_path / "robustness" / "sensor_noise_8", "all")
    fresh = open_split(tmp_path / "robustness" / "fresh_seed", "all")
    np.testing.assert_array_equal(noisy.positions, fresh.positions)  # the same trajectories, other pixels
    assert not np.array_equal(noisy.video(0), fresh.video(0))
    # a baseline of other data (here: another shift's) is refused before anything is written
    (tmp_path / "baselines" / "faster.json").write_text((tmp_path / "baselines" / "jitter.json").read_text())
    before = out.read_bytes()
    with pytest.raises(TrajvidError, match="the baseline's figures for faster are of other data"):
        robustness(params, tmp_path / "models", tmp_path / "robustness", tmp_path / "baselines", out)
    # so is a set made with other params than the shift's (its card says which), and a missing one
    card = tmp_path / "robustness" / "jitter" / "README.md"
    card.write_text(card.read_text().replace('"noise_std": 0.01', '"noise_std": 0.02'))
    with pytest.raises(TrajvidError, match=r"robustness/jitter was made with other params than robustness.shifts.jitter"):
        robustness(params, tmp_path / "models", tmp_path / "robustness", tmp_path / "baselines", out)
    (tmp_path / "robustness" / "fresh_seed").rename(tmp_path / "elsewhere")
    with pytest.raises(TrajvidError, match=r"make the shifted set again: `dvc repro shift@fresh_seed`"):
        robustness(params, tmp_path / "models", tmp_path / "robustness", tmp_path / "baselines", out)
    assert out.read_bytes() == before
    # scoring every sample of the data the model was trained on is refused
    with pytest.raises(TrajvidError, match="--split all would score its training samples"):
        from trajvid.evaluate import evaluate

        evaluate(tiny_dataset, tmp_path / "models", tmp_path / "metrics", split="all")
    assert not (tmp_path / "metrics").exists()
