"""Geometry of the four classes and agreement between rendering and cameras."""

import numpy as np
import pytest

from trajvid.data import scene
from trajvid.data.shards import open_split

SAMPLES_PER_CLASS = 200


def positions_of(label: int) -> list[np.ndarray]:
    ids = range(label, 4 * SAMPLES_PER_CLASS, 4)  # sample_id % 4 is the class
    return [scene.sample_positions(3, i, 32, 0.0)[1].astype(np.float64) for i in ids]


def test_every_point_in_the_cube_and_33_positions():
    for label in range(4):
        for p in positions_of(label):
            assert p.shape == (33, 3)
            assert np.all(np.abs(p) <= scene.CUBE_HALF + 1e-6)


def test_linear_is_collinear_with_constant_speed():
    for p in positions_of(0):
        steps = np.diff(p, axis=0)
        assert np.allclose(steps, steps[0], atol=1e-5)  # same displacement every frame
        length = np.linalg.norm(p[-1] - p[0])
        assert 1.5 - 1e-4 <= length <= 2.5 + 1e-4


def _circle_fit(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares circle: centre and each point's distance to it."""
    A = np.column_stack([2 * xy, np.ones(len(xy))])
    b = (xy**2).sum(1)
    cx, cy, _ = np.linalg.lstsq(A, b, rcond=None)[0]
    centre = np.array([cx, cy])
    return centre, np.linalg.norm(xy - centre, axis=1)


def test_circular_has_constant_height_and_radius():
    for p in positions_of(1):
        assert np.ptp(p[:, 2]) < 1e-5
        centre, radius = _circle_fit(p[:, :2])
        assert np.ptp(radius) < 1e-4
        assert 0.5 - 1e-4 <= radius.mean() <= 1.4
        assert np.linalg.norm(centre) <= 0.3 + 1e-4


def test_helical_has_constant_radius_and_monotonic_height():
    for p in positions_of(2):
        _, radius = _circle_fit(p[:, :2])
        assert np.ptp(radius) < 1e-4
        dz = np.diff(p[:, 2])
        assert np.all(dz > 0) or np.all(dz < 0)
        assert np.allclose(dz, dz[0], atol=1e-5)  # steady climb
        assert 0.6 - 1e-4 <= abs(p[-1, 2] - p[0, 2]) <= 2.0 + 1e-4


def test_parabolic_is_a_parabola_in_a_vertical_plane():
    for p in positions_of(3):
        horizontal = p[:, :2] - p[0, :2]
        direction = horizontal[-1] / np.linalg.norm(horizontal[-1])
        s = horizontal @ direction
        off_plane = horizontal - np.outer(s, direction)
        assert np.abs(off_plane).max() < 1e-5  # vertical plane
        a, b, c = np.polyfit(s, p[:, 2], 2)
        assert np.abs(np.polyval([a, b, c], s) - p[:, 2]).max() < 1e-4  # exactly quadratic
        assert 0.3 - 1e-3 <= abs(a) <= 0.8 + 1e-3


def test_noise_keeps_points_in_the_cube_and_changes_them():
    clean = scene.sample_positions(3, 5, 32, 0.0)[1]
    noisy = scene.sample_positions(3, 5, 32, 0.2)[1]
    assert np.all(np.abs(noisy) <= scene.CUBE_HALF)
    assert not np.allclose(clean, noisy)


def test_cameras_look_at_the_origin_from_the_spec_positions():
    K, R, t = scene.camera_matrices(64)
    centres = np.einsum("cji,cj->ci", R, -t)  # C = -R^T t
    assert np.allclose(centres, [[5, 0, 2], [0, 5, 2], [-5, 0, 2], [0, -5, 2]])
    uv, depth = scene.to_pixels(np.zeros(3), K, R, t)
    assert np.allclose(uv, 32.0) and np.all(depth > 0)
    assert K[0, 0, 0] == pytest.approx(32 / np.tan(np.radians(30)))
    # z up renders upright: a higher point appears higher in the image (smaller v)
    up, _ = scene.to_pixels(np.array([0.0, 0.0, 1.0]), K, R, t)
    assert np.all(up[:, 1] < 32)
    # not mirrored: camera 0 at +x looks towards -x, so +y is on its right (larger u)
    right, _ = scene.to_pixels(np.array([0.0, 1.0, 0.0]), K, R, t)
    assert right[0, 0] > 32


def test_rendered_centroid_matches_projection(tiny_dataset):
    """The intensity-weighted centroid of the sphere is within 0.5 px of its projected centre."""
    K, R, t = scene.camera_matrices(64)
    split = open_split(tiny_dataset, "train")
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    worst = 0.0
    for i in range(0, len(split), 3):
        sample = split[i]
        video = sample["video"].numpy().astype(np.float32)  # (4, 32, 3, 64, 64)
        weight = (video - scene.BACKGROUND[None, None, :, None, None]).sum(2)  # (4, 32, 64, 64)
        assert weight.min() >= 0
        total = weight.sum((-1, -2))
        cx, cy = (weight * xs).sum((-1, -2)) / total, (weight * ys).sum((-1, -2)) / total
        uv, _ = scene.to_pixels(sample["positions"].numpy()[:32].astype(np.float64), K, R, t)  # (32, 4, 2)
        error = np.hypot(cx - uv[..., 0].T, cy - uv[..., 1].T)
        worst = max(worst, error.max())
    assert worst < 0.5, worst


def test_sphere_shrinks_with_depth(tiny_dataset):
    K, R, t = scene.camera_matrices(64)
    split = open_split(tiny_dataset, "train")
    areas, depths = [], []
    for i in range(0, len(split), 5):
        sample = split[i]
        lit = (sample["video"].numpy()[:, :, 0].astype(int) - int(scene.BACKGROUND[0])) > 60
        _, depth = scene.to_pixels(sample["positions"].numpy()[:32].astype(np.float64), K, R, t)
        areas.append(lit.sum((-1, -2)).ravel())
        depths.append(depth.T.ravel())
    corr = np.corrcoef(np.concatenate(areas), 1 / np.concatenate(depths) ** 2)[0, 1]
    assert corr > 0.8, corr
