"""The four backbones behind one interface, and the multi-task model."""

import pytest
import torch

from conftest import TINY_MODELS
from trajvid.data import open_split
from trajvid.models import UnknownBackboneError, backbone_class, build_model, multitask_loss
from trajvid.params import ParamsError
from trajvid.registry import BACKBONES

NAMES = list(BACKBONES)  # the four of the study, plus the extra one conftest.py registers
STUDY_FEATURE_DIMS = {"i3d": 1024, "slowfast": 1024, "transformer": 512, "magvit": 1024}


def videos(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 32, 3, 64, 64), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_default_feature_dims_and_output_shapes(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    expected = STUDY_FEATURE_DIMS.get(name, backbone_class(name).Config().feature_dim)
    assert model.backbone.feature_dim == expected
    with torch.no_grad():
        features = model.backbone(videos(2))
        logits, position = model(videos(1))  # batch size 1 works
    assert features.shape == (2, expected)
    assert logits.shape == (1, 4) and position.shape == (1, 3)


@pytest.mark.parametrize("name", NAMES)
def test_feature_dim_is_honoured(name):
    model = build_model(name, feature_dim=96, **TINY_MODELS[name]).eval()
    with torch.no_grad():
        assert model.backbone(videos(2)).shape == (2, 96)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY_MODELS[name]).train()
    logits, position = model(videos(4), normalised=True)
    labels = torch.tensor([0, 1, 2, 3])
    loss, parts = multitask_loss(model, logits, position, labels, torch.randn(4, 3), 1.0, 1.0)
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
    target = torch.stack([b["positions"][-1] for b in batch])
    torch.manual_seed(0)
    model = build_model(name, **TINY_MODELS[name]).train()
    model.set_position_stats(target.mean(0), target.std(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(60):
        logits, position = model(x, normalised=True)
        loss, parts = multitask_loss(model, logits, position, labels, target, 1.0, 1.0)
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
        model = build_model(name, **TINY_MODELS[name]).eval()
        with torch.no_grad():
            outputs.append(model(videos(2)))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    with torch.no_grad():  # and the same model gives the same output twice
        assert torch.equal(model(videos(2))[0], outputs[1][0])


def test_positions_come_back_in_world_units():
    model = build_model("i3d", **TINY_MODELS["i3d"]).eval()
    model.set_position_stats(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.5, 0.25, 2.0]))
    with torch.no_grad():
        _, normalised = model(videos(2), normalised=True)
        _, world = model(videos(2))
    assert torch.allclose(world, normalised * torch.tensor([0.5, 0.25, 2.0]) + torch.tensor([1.0, -1.0, 0.5]))


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UnknownBackboneError, match="valid names: i3d, slowfast, transformer, magvit"):
        build_model("resnet50")
    with pytest.raises(ParamsError, match="unknown key 'models.i3d.depth'"):
        build_model("i3d", depth=3)


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_groups_by_name(name):
    """Decay exactly the weights of Linear and convolution layers; nothing else (defect 1 of the
    structure issue: `position_head.weight` was left undecayed and the CLS token decayed)."""
    model = build_model(name, **TINY_MODELS[name])
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
    assert {"position_head.weight", "classifier.weight", "trunk.0.weight"} <= decayed
    assert {"position_head.bias", "classifier.bias"} <= not_decayed
    if name in ("transformer", "magvit"):
        encoder = "backbone.encoder" if name == "transformer" else "backbone.transformer"
        assert {f"{encoder}.cls", f"{encoder}.time_position", f"{encoder}.space_position"} <= not_decayed
    assert not any("norm" in n or ".bn" in n for n in decayed)


def test_divided_attention_variant_runs():
    model = build_model("transformer", attention="divided", **{k: v for k, v in TINY_MODELS["transformer"].items()})
    logits, position = model(videos(2))
    assert logits.shape == (2, 4) and position.shape == (2, 3)


def test_magvit_is_causal_in_time():
    """Changing the last frames must not change the token ids of earlier time steps."""
    torch.manual_seed(0)
    model = build_model("magvit", **TINY_MODELS["magvit"]).eval()
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
