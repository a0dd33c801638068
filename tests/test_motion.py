"""The motion fits of the keypoints head (motion.py) and how the head uses them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_sizes

from trajvid.data import scene
from trajvid.head.motion import next_positions, polynomial_weights
from trajvid.head.multitask import build_model
from trajvid.params import HeadParams


def sampled(label: int, count: int, seed: int = 3) -> torch.Tensor:
    """`count` true trajectories (count, 33, 3) of class `label` from the scene's generator."""
    ids = range(label, 4 * count, 4)  # sample_positions draws class id % 4
    return torch.from_numpy(np.stack([scene.sample_positions(seed, i, 32, 0.0)[1] for i in ids]).astype(np.float64))


@pytest.mark.parametrize("label", range(4), ids=scene.CLASS_NAMES)
def test_each_class_fit_extrapolates_its_own_motion_exactly(label):
    positions = sampled(label, 20)
    assert all(int(scene.sample_positions(3, i, 32, 0.0)[0]) == label for i in range(label, 80, 4))
    predicted = next_positions(positions[:, :32])[:, label]
    assert (predicted - positions[:, 32]).abs().max() < 1e-6


def test_the_circle_fit_beats_any_fixed_polynomial_on_noisy_circles():
    """Per-frame noise like the trained readouts' (0.01 world units): the fitted circle uses all 32
    frames, a fixed extrapolator cannot (the earlier head's degree-4 fit of the last 12 frames,
    ~2.6x noise gain, and the straight line through all frames, biased on a curve)."""
    generator = torch.Generator().manual_seed(0)
    errors = {"circle": [], "degree 4, last 12": [], "line": []}
    weights = torch.zeros(32, dtype=torch.float64)
    t = np.arange(20, 32, dtype=np.float64)
    weights[-12:] = torch.from_numpy(np.vander([32.0], 5) @ np.linalg.pinv(np.vander(t, 5)))[0]
    for label in (1, 2):
        positions = sampled(label, 100)
        noisy = positions[:, :32] + 0.01 * torch.randn(positions[:, :32].shape, generator=generator, dtype=torch.float64)
        truth = positions[:, 32]
        errors["circle"].append(next_positions(noisy)[:, label] - truth)
        errors["degree 4, last 12"].append(torch.einsum("t,btd->bd", weights, noisy) - truth)
        errors["line"].append(torch.einsum("t,btd->bd", polynomial_weights(32, 1), noisy) - truth)
    rmse = {k: float(torch.cat(v).pow(2).mean().sqrt()) for k, v in errors.items()}
    assert rmse["circle"] < 0.008, rmse  # measured 0.005
    assert rmse["circle"] < rmse["degree 4, last 12"] / 3 and rmse["circle"] < rmse["line"] / 3, rmse


def test_each_fit_uses_every_frame_with_the_fewest_parameters():
    """With 0.01 per-frame noise a least-squares fit over all 32 frames extrapolates with a known
    noise gain: a line per coordinate 0.36 (a parabola would give 0.57), the parabolic class's
    horizontal lines and quadratic height 0.44 on average (quadratics everywhere: 0.57), the
    circle's constant height 0.18 (the last height: 1.0). Thresholds sit between those figures."""
    generator = torch.Generator().manual_seed(2)
    rmse = {}
    for label in range(4):
        positions = sampled(label, 200)
        noisy = positions[:, :32] + 0.01 * torch.randn(positions[:, :32].shape, generator=generator, dtype=torch.float64)
        error = next_positions(noisy)[:, label] - positions[:, 32]
        rmse[label] = float(error.pow(2).mean().sqrt())
        if label == 1:
            rmse["circular height"] = float(error[:, 2].pow(2).mean().sqrt())
    assert rmse[0] < 0.0045 and rmse[3] < 0.0051 and rmse["circular height"] < 0.0025, rmse


def test_the_circle_fit_has_bounded_gradients_on_straight_paths():
    """Lines and parabolas go through the circle fit too (their candidates are mixed in by the
    class probabilities): there its centre runs off and its angular speed goes to 0. With the
    speed held fixed the gradient stays under 1 per sample (measured 0.82); differentiated
    through the speed it reached 2e9, which gradient clipping would turn into tiny steps."""
    straight = torch.cat([sampled(0, 30)[:, :32], sampled(3, 30)[:, :32]])
    generator = torch.Generator().manual_seed(3)
    for noise in (0.0, 1e-5, 1e-2):
        x = (straight + noise * torch.randn(straight.shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
        (gradient,) = torch.autograd.grad(next_positions(x)[:, 1:3].sum(), x)
        assert float(gradient.flatten(1).norm(dim=1).max()) < 5, noise


@pytest.mark.parametrize("kind", ["a point", "a line", "noise", "tiny noise"])
def test_every_fit_stays_finite_on_trajectories_it_does_not_describe(kind):
    """Early in training the trajectory is noise; a line or a point gives the circle fit no centre."""
    generator = torch.Generator().manual_seed(1)
    trajectory = {
        "a point": torch.full((3, 32, 3), 0.3, dtype=torch.float64),
        "a line": sampled(0, 3)[:, :32],
        "noise": torch.randn(3, 32, 3, generator=generator, dtype=torch.float64),
        "tiny noise": 1e-5 * torch.randn(3, 32, 3, generator=generator, dtype=torch.float64),
    }[kind].float().requires_grad_(True)
    candidates = next_positions(trajectory)
    assert candidates.shape == (3, 4, 3) and candidates.dtype == torch.float32
    candidates.sum().backward()
    assert torch.isfinite(candidates).all() and torch.isfinite(trajectory.grad).all()
    # every candidate stays near the trajectory (within a few of its own extents)
    extent = float((trajectory.detach().max(1).values - trajectory.detach().min(1).values).max()) + 1e-3
    assert float((candidates - trajectory[:, -1:]).detach().abs().max()) < 5 * extent


def test_the_classifier_reads_the_trajectory_but_does_not_move_the_keypoints():
    """The keypoints head classifies from [pooled features, the trajectory's shape]: the logits
    depend on the trajectory, and the cross-entropy sends no gradient into the readout (only the
    position losses shape the keypoints)."""
    torch.manual_seed(0)
    model = build_model("i3d", HeadParams(type="keypoints"), **tiny_sizes("i3d")).eval()
    videos = torch.randint(0, 256, (2, 4, 32, 3, 64, 64), dtype=torch.uint8)
    out = model(videos, full=True)
    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert model.readout.cell.weight.grad is None or model.readout.cell.weight.grad.abs().max() == 0
    assert model.motion_encoder[0].weight.grad.abs().max() > 0
    # moving one sample's trajectory (its keypoints) changes its logits
    with torch.no_grad():
        model.readout.cell.bias[1::3] += 0.5  # shift every keypoint offset by half a cell
    assert not torch.allclose(model(videos)[0], out.logits.detach())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
def test_the_next_position_is_the_class_mixture_of_the_fits_in_float32(bf16):
    """Under bf16 autocast the backbone runs in bf16, but the fits and their mixture stay in
    float32: bf16 rounding alone (~0.004 near 1.5 world units) would be as large as the fits' error."""
    torch.manual_seed(0)
    model = build_model("transformer", HeadParams(type="keypoints"), **tiny_sizes("transformer")).eval()
    videos = torch.randint(0, 256, (2, 4, 32, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(videos, full=True)
    expected = torch.einsum("bc,bcd->bd", out.logits.float().softmax(-1), next_positions(out.trajectory.float()))
    assert out.next_position.dtype == torch.float32
    assert torch.allclose(out.next_position, expected, atol=1e-6)
