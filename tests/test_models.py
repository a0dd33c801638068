"""The backbones behind one interface (every one the registry lists), and the multi-task model."""

import pytest
import torch
from conftest import default_params, tiny_sizes

from trajvid.backbones import BACKBONES, backbone_class
from trajvid.data.shards import open_split
from trajvid.head.multitask import build_model, multitask_loss
from trajvid.params import HeadParams, ParamsError

NAMES = list(BACKBONES)  # the study's, plus the extra one conftest.py registers
HEADS = HeadParams.TYPES


def videos(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 32, 3, 64, 64), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_default_feature_dims_and_output_shapes(name):
    """Built with its config's defaults, a backbone gives the feature dimension params.yaml
    declares for the study (I3D 1024, SlowFast 1024, transformer 512, MagVIT 1024, frame2d 512):
    the two places that state it agree, and the network honours it."""
    torch.manual_seed(0)
    model = build_model(name).eval()  # the config's defaults, not params.yaml's block
    declared = default_params()["models"].get(name, {}).get("feature_dim")
    expected = backbone_class(name).Config().feature_dim
    assert declared in (None, expected), (declared, expected)  # None: the test-only extra backbone
    assert model.backbone.feature_dim == expected
    with torch.no_grad():
        features, grid = model.backbone(videos(2))
        logits, position = model(videos(1))  # batch size 1 works
    assert features.shape == (2, expected)
    st, sh, sw = model.backbone.grid_stride
    assert grid.shape == (2, model.backbone.grid_channels, 32 // st, 64 // sh, 64 // sw)
    assert logits.shape == (1, 4) and position.shape == (1, 3)


@pytest.mark.parametrize("name", NAMES)
def test_feature_dim_is_honoured(name):
    model = build_model(name, feature_dim=96, **tiny_sizes(name)).eval()
    with torch.no_grad():
        assert model.backbone(videos(2))[0].shape == (2, 96)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_nonzero_gradient(name, head):
    torch.manual_seed(0)
    model = build_model(name, HeadParams(type=head), **tiny_sizes(name)).train()
    out = model(videos(4), full=True)
    labels = torch.tensor([0, 1, 2, 3])
    loss, parts = multitask_loss(model, out, labels, torch.rand(4, 33, 3) - 0.5)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    # a backbone's own losses, whatever their names, are explicit parts of the loss
    assert set(model.aux_losses) <= set(parts)
    if name == "magvit":
        assert {"lfq_entropy", "lfq_commitment"} <= set(parts)


@pytest.mark.parametrize("name", NAMES)
def test_overfits_a_tiny_fixed_batch(name, tiny_dataset):
    split = open_split(tiny_dataset, "train")
    batch = [split[i] for i in range(8)]  # two samples of each class
    x = torch.stack([b["video"] for b in batch])
    labels = torch.stack([b["label"] for b in batch])
    positions = torch.stack([b["positions"] for b in batch])
    target = positions[:, -1]
    torch.manual_seed(0)
    model = build_model(name, HeadParams(type="pooled"), **tiny_sizes(name)).train()
    model.set_position_stats(target.mean(0), target.std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(60):
        loss, parts = multitask_loss(model, model(x, full=True), labels, positions)
        # judged on the task losses, without the quantiser's terms (its entropy term can be < 0)
        task = (parts["cross_entropy"] + parts["position_mse_normalised"]).item()
        first = task if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert task < first / 10, (first, task)


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_are_deterministic(name):
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(name, **tiny_sizes(name)).eval()
        with torch.no_grad():
            outputs.append(model(videos(2)))  # the default head
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    with torch.no_grad():  # and the same model gives the same output twice
        assert torch.equal(model(videos(2))[0], outputs[1][0])


def test_pooled_positions_come_back_in_world_units():
    model = build_model("i3d", HeadParams(type="pooled"), **tiny_sizes("i3d")).eval()
    model.set_position_stats(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.5, 0.25, 2.0]))
    with torch.no_grad():
        normalised = model.position_head(model.trunk(model.backbone(videos(2))[0])).view(2, 33, 3)[:, -1]
        _, world = model(videos(2))
    assert torch.allclose(world, normalised * torch.tensor([0.5, 0.25, 2.0]) + torch.tensor([1.0, -1.0, 0.5]))


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ParamsError, match=f"valid backbones are {', '.join(BACKBONES)}$"):
        build_model("resnet50")
    with pytest.raises(ParamsError, match="unknown key 'models.i3d.depth'"):
        build_model("i3d", depth=3)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_groups_by_name(name, head):
    """Decay exactly the weights of Linear and convolution layers; nothing else (defect 1 of the
    structure issue: `position_head.weight` was left undecayed and the CLS token decayed)."""
    model = build_model(name, HeadParams(type=head), **tiny_sizes(name))
    decay, no_decay = model.parameter_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = {id(p): n for n, p in model.named_parameters()}
    decayed = {ids[id(p)] for p in decay["params"]}
    not_decayed = {ids[id(p)] for p in no_decay["params"]}
    assert decayed | not_decayed == set(ids.values()) and not decayed & not_decayed
    modules = dict(model.named_modules())
    for pname in ids.values():
        owner, _, leaf = pname.rpartition(".")
        layer = isinstance(modules[owner], (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
        assert (pname in decayed) == (layer and leaf == "weight"), pname
    assert {"classifier.weight", "trunk.0.weight"} <= decayed and "classifier.bias" in not_decayed
    if head == "pooled":
        assert "position_head.weight" in decayed and "position_head.bias" in not_decayed
    else:
        assert {"readout.cell.weight", "motion_encoder.0.weight"} <= decayed
        assert {"readout.cell.bias", "motion_encoder.0.bias"} <= not_decayed
    if name in ("transformer", "magvit"):
        encoder = "backbone.encoder" if name == "transformer" else "backbone.transformer"
        assert {f"{encoder}.cls", f"{encoder}.time_position", f"{encoder}.space_position"} <= not_decayed
    assert not any("norm" in n or ".bn" in n for n in decayed)


def test_divided_attention_variant_runs():
    model = build_model("transformer", attention="divided", **tiny_sizes("transformer"))
    logits, position = model(videos(2))
    assert logits.shape == (2, 4) and position.shape == (2, 3)


def test_magvit_is_causal_in_time():
    """Changing the last frames must not change the token ids of earlier time steps."""
    torch.manual_seed(0)
    model = build_model("magvit", **tiny_sizes("magvit")).eval()
    a = videos(1, seed=3)
    b = a.clone()
    b[:, :, 28:] = 255 - b[:, :, 28:]  # change frames 28..31 only
    with torch.no_grad():
        model(a)
        ids_a = model.backbone.last_token_ids.clone()
        model(b)
        ids_b = model.backbone.last_token_ids
    # token time step k covers frames up to 4k+3 (two stride-2 causal downsamplings)
    assert torch.equal(ids_a[:, :6], ids_b[:, :6])
    assert not torch.equal(ids_a, ids_b)


def test_magvit_quantises_in_float32_under_bf16_autocast():
    """MagVIT's lookup-free quantiser (signs, the entropy over all 2^bits codes, the commitment)
    runs in float32 under bf16 autocast: the figures of float32 on the same latent. Autocast would
    otherwise run the logits' product over the codes in bf16, and the entropy loss from them (the
    bf16 guard failed for MagVIT alone, docs/performance.md); the entropy is what this tells apart."""
    from trajvid.backbones.magvit import LookupFreeQuantizer, MagVitConfig

    c = MagVitConfig()
    quantizer = LookupFreeQuantizer(c.codebook_bits, c.entropy_weight, c.commitment_weight, c.diversity_gamma)
    torch.manual_seed(0)
    z = torch.randn(1024, c.codebook_bits).bfloat16()  # what the encoder's last convolution gives under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantised, ids, aux = quantizer(z)
    expected_quantised, expected_ids, expected_aux = quantizer(z.float())
    assert quantised.dtype == torch.float32 and torch.equal(quantised, expected_quantised)
    assert torch.equal(ids, expected_ids)
    for name, value in aux.items():
        assert value.dtype == torch.float32 and torch.equal(value, expected_aux[name]), name


def test_triangulation_and_projection_invert_each_other():
    from trajvid.data.scene import cameras_metadata
    from trajvid.head.geometry import project, projection_matrices, triangulate

    P = projection_matrices(cameras_metadata(64))
    points = torch.rand(2, 5, 3, dtype=torch.float64) * 3 - 1.5
    pixels = project(points, P)  # (2, 4, 5, 2)
    assert torch.allclose(triangulate(pixels.transpose(1, 2).double(), P), points, atol=1e-4)


def test_the_keypoint_head_overfits_a_few_real_samples(tiny_dataset):
    """Four real samples, a narrow transformer, 300 steps with a decaying rate: the next-position
    error (world units, per coordinate) must fall to the order of 1e-4, which only a readout that
    localises the sphere in every view to a small fraction of a pixel can reach. Measured on this
    CPU (2026-12-01): 5.9e-5, 6.5e-5 two days before (the earlier learned extrapolators reached 0.0015, keypoints 0.002 px
    off). The threshold is 3x that. With the training target moved to row 31 it still ends below
    1e-4 (measured the same day), so this test cannot tell the target's row: tests/test_oracles.py
    checks it exactly."""
    split = open_split(tiny_dataset, "train")
    batch = [split[i] for i in range(4)]
    x = torch.stack([b["video"] for b in batch])
    labels = torch.stack([b["label"] for b in batch])
    positions = torch.stack([b["positions"] for b in batch])
    torch.manual_seed(0)
    model = build_model("transformer", HeadParams(type="keypoints"), **tiny_sizes("transformer")).train()
    model.set_position_stats(positions[:, -1].mean(0), positions[:, -1].std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 300)
    for _ in range(300):
        loss, _ = multitask_loss(model, model(x, full=True), labels, positions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        _, predicted = model(x)
    rmse = ((predicted - positions[:, -1]) ** 2).mean().sqrt().item()
    assert rmse < 2e-4, rmse


@pytest.mark.parametrize("name", NAMES)
def test_the_reused_input_tensor_never_gives_a_silent_wrong_gradient(name):
    """In training the fused input is written into one tensor per model (`input_buffer`): a
    forward pass on other videos before the backward of the first must either stop with
    autograd's in-place error or leave the first pass's gradients exactly as they were."""
    torch.manual_seed(0)
    model = build_model(name, **tiny_sizes(name)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    first, second = videos(2, seed=1), videos(2, seed=2)
    reference = torch.autograd.grad(model(first)[1].sum(), params, allow_unused=True)
    pending = model(first)[1].sum()
    model(second)
    try:
        grads = torch.autograd.grad(pending, params, allow_unused=True)
    except RuntimeError as error:
        assert "modified by an inplace operation" in str(error)
    else:
        assert all((g is None and r is None) or torch.equal(g, r) for g, r in zip(grads, reference))
