"""Training: weight decay applied, checkpoints, resume, NaN handling, evaluation outputs."""

import copy
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import tiny_params, tiny_sizes

from trajvid import checkpoint
from trajvid.data.shards import CHECKSUMS, checksum_lines, read_metadata
from trajvid.evaluate import evaluate
from trajvid.head.geometry import projection_matrices
from trajvid.head.multitask import LossWeights, build_model, multitask_loss
from trajvid.model_files import load_trained
from trajvid.params import parse
from trajvid.train import TrainingDiverged, fingerprint, finish, setup, train, validate


def params_for(model="i3d", epochs=2, num_samples=200, **train_overrides):
    raw = tiny_params(num_samples=num_samples, epochs=epochs, model=model)
    raw["train"].update(train_overrides)
    return parse(raw)


def test_weight_decay_is_really_applied():
    """With zero gradients, one AdamW step shrinks every decayed weight by exactly (1 - lr * wd)
    and leaves everything else as it was."""
    model = build_model("i3d", **tiny_sizes("i3d"))
    optimizer = model.configure_optimizer(learning_rate=0.01, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.allclose(p, before[id(p)] * (1 - 0.01 * 0.1)) for p in decay["params"])
    assert all(torch.equal(p, before[id(p)]) for p in no_decay["params"])
    assert any(p is model.readout.cell.weight for p in decay["params"])


def test_training_uses_the_configured_weight_decay(tiny_dataset, tmp_path):
    params = params_for(epochs=1, weight_decay=0.0123)
    train(params, tiny_dataset, tmp_path / "models", live_dir=None, progress=False)
    state = json.loads(next((tmp_path / "models" / "checkpoints").glob("epoch-*/state.json")).read_text())
    decays = sorted({g["weight_decay"] for g in state["optimizer"]["param_groups"]})
    assert decays == [0.0, 0.0123]
    config = json.loads((tmp_path / "models" / "config.json").read_text())
    assert config["train"]["weight_decay"] == 0.0123


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(small_dataset, tmp_path):
    params = params_for(epochs=3, num_samples=40)
    full = tmp_path / "full"
    train(params, small_dataset, full, live_dir=tmp_path / "live-full", progress=False)

    # An "interrupted" run: the same configuration, stopped after epoch 1 (its checkpoint kept).
    part = tmp_path / "part"
    train_one_epoch_then_crash(params, small_dataset, part, tmp_path / "live-part")
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["epoch-001"]
    summary = train(params, small_dataset, part, live_dir=tmp_path / "live-part", progress=False)
    assert summary["training"]["epochs"] == 3

    from safetensors.torch import load_file

    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    live_full = (tmp_path / "live-full" / "metrics.json").read_text()
    assert live_full == (tmp_path / "live-part" / "metrics.json").read_text()
    assert (tmp_path / "live-part" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().count("\n") == 4


def train_one_epoch_then_crash(params, data, out, live):
    """Run training and kill it (an exception) right after the first checkpoint is written."""
    original = checkpoint.save

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt("simulated crash")

    checkpoint.save = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(params, data, out, live_dir=live, progress=False)
    finally:
        checkpoint.save = original


def test_checkpoint_of_another_configuration_is_never_resumed(small_dataset, tmp_path):
    out = tmp_path / "models"
    train(params_for(epochs=1, num_samples=40), small_dataset, out, live_dir=None, progress=False)
    old = json.loads((out / "checkpoints" / "epoch-001" / "state.json").read_text())["fingerprint"]
    summary = train(params_for(model="magvit", epochs=1, num_samples=40), small_dataset, out, live_dir=None, progress=False)
    assert summary["fingerprint"] != old
    new = json.loads((out / "checkpoints" / "epoch-001" / "state.json").read_text())
    assert new["fingerprint"] == summary["fingerprint"] and new["history"][0]["epoch"] == 1


def test_partial_checkpoints_are_ignored(tmp_path):
    (tmp_path / ".tmp-abc").mkdir()
    (tmp_path / ".tmp-abc" / "state.json").write_text('{"fingerprint": "x", "epoch": 9}')
    (tmp_path / "epoch-004").mkdir()  # a directory without its files
    (tmp_path / "epoch-004" / "state.json").write_text('{"fingerprint": "x", "epoch": 4}')
    assert checkpoint.find_latest(tmp_path, "x") is None


def test_nan_loss_stops_with_epoch_and_step(tiny_dataset, tmp_path):
    params = params_for(epochs=2, learning_rate=1e30, grad_clip=0.0)
    with pytest.raises(TrainingDiverged, match=r"at epoch \d+, step \d+"):
        train(params, tiny_dataset, tmp_path / "models", live_dir=None, progress=False)


def test_model_files_and_evaluation(tiny_dataset, tmp_path):
    params = params_for(model="transformer", epochs=1)
    train(params, tiny_dataset, tmp_path / "models", live_dir=None, progress=False)
    config = json.loads((tmp_path / "models" / "config.json").read_text())
    assert config["backbone"] == "transformer" and config["sizes"]["dim"] == 64
    model, _ = load_trained(tmp_path / "models")  # rebuilt from config.json alone
    metrics = evaluate(tiny_dataset, tmp_path / "models", tmp_path / "metrics", threads=2, num_workers=0)
    test = metrics["test"]
    assert set(test["per_class_accuracy"]) == {"linear", "circular", "helical", "parabolic"}
    assert test["samples"] == 20  # the test split; its figures are checked by tests/test_oracles.py
    assert math.isclose(test["position_rmse"] ** 2, test["position_mse"], rel_tol=1e-9)
    assert metrics["model"]["size_bytes"] == (tmp_path / "models" / "model.safetensors").stat().st_size
    assert metrics["model"]["params"] == sum(p.numel() for p in model.parameters())
    assert metrics["train"]["epochs"] == 1 and metrics["train"]["time_s"] > 0
    confusion = json.loads((tmp_path / "metrics" / "confusion.json").read_text())
    assert len(confusion) == 20 and set(confusion[0]) == {"actual", "predicted"}


def test_validation_loss_is_the_training_loss(tiny_dataset, tmp_path):
    """One loss definition: val/loss is the multi-task total (cross-entropy + w x position MSE +
    the backbone's own losses), the number early stopping compares, with its parts beside it."""
    params = params_for(model="magvit", epochs=1, position_loss_weight=2.5)
    run = setup(params, tiny_dataset, tmp_path / "models", live_dir=None)
    result = validate(run)
    model = run.unwrapped.eval()
    totals, count = {}, 0
    with torch.no_grad():
        for batch in run.val_loader:
            loss, parts = multitask_loss(model, model(batch["video"], full=True), batch["label"], batch["positions"],
                                         LossWeights(position=2.5))
            for name, value in {"loss": loss, **parts}.items():
                totals[name] = totals.get(name, 0.0) + value.item() * len(batch["label"])
            count += len(batch["label"])
    assert set(result["losses"]) == {"loss", "cross_entropy", "position_mse_normalised", "trajectory_mse_normalised",
                                     "keypoint_distance_px", "lfq_entropy", "lfq_commitment"}
    for name, total in totals.items():
        assert math.isclose(result["losses"][name], total / count, rel_tol=1e-5), name
    losses = result["losses"]
    assert math.isclose(losses["loss"], losses["cross_entropy"] + 2.5 * losses["position_mse_normalised"]
                        + losses["trajectory_mse_normalised"] + losses["keypoint_distance_px"]
                        + losses["lfq_entropy"] + losses["lfq_commitment"], rel_tol=1e-5)
    run.accelerator.end_training()


def test_dvclive_logs_every_loss_part_for_train_and_val(tiny_dataset, tmp_path):
    train(params_for(model="magvit", epochs=1), tiny_dataset, tmp_path / "models", live_dir=tmp_path / "live",
          progress=False)
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    for split in ("train", "val"):
        assert {"loss", "cross_entropy", "position_mse_normalised", "trajectory_mse_normalised", "keypoint_distance_px",
                "lfq_entropy", "lfq_commitment", "accuracy", "position_rmse"} <= set(logged[split]), logged


def test_head_params_build_the_head_and_enter_the_fingerprint(tiny_dataset, tmp_path):
    raw = tiny_params(num_samples=200, epochs=1)
    raw["head"] = {"type": "pooled", "hidden": 32, "dropout": 0.0}
    params = parse(raw)
    config = train(params, tiny_dataset, tmp_path / "models", live_dir=None, progress=False)
    assert config["head"] == {"type": "pooled", "hidden": 32, "dropout": 0.0}
    model, _ = load_trained(tmp_path / "models")
    assert model.trunk[0].out_features == 32 and model.position_head.in_features == 32
    other = parse({**raw, "head": {"type": "pooled", "hidden": 64, "dropout": 0.0}})
    assert fingerprint(params, config["sizes"], tiny_dataset) != fingerprint(other, config["sizes"], tiny_dataset)


def test_runtime_settings_stay_out_of_the_fingerprint(tiny_dataset):
    raw = tiny_params(num_samples=200)
    a = parse(raw)
    raw["train"].update(num_workers=3, threads=1, checkpoint_interval=5)
    b = parse(raw)
    raw["train"]["learning_rate"] = 0.5
    c = parse(raw)
    assert fingerprint(a, {}, tiny_dataset) == fingerprint(b, {}, tiny_dataset) != fingerprint(c, {}, tiny_dataset)


def test_a_backbones_own_learning_rate_and_warmup_reach_the_optimizer(tiny_dataset, tmp_path):
    raw = tiny_params(num_samples=200, epochs=1, model="transformer")
    raw["models"]["transformer"].update(learning_rate=0.00031, warmup_epochs=0.0)
    run = setup(parse(raw), tiny_dataset, tmp_path / "models", live_dir=None)
    assert {g["initial_lr"] for g in run.optimizer.param_groups} == {0.00031}
    # the rate of the first step: no warm-up, the full rate (the scheduler read the backbone's 0.0)
    assert {g["lr"] for g in run.optimizer.param_groups} == {0.00031}
    assert run.config["train"]["learning_rate"] == 0.00031 and run.config["train"]["warmup_epochs"] == 0.0
    run.accelerator.end_training()
    raw["models"]["transformer"].update(learning_rate=None, warmup_epochs=None)  # null: train.* apply
    assert raw["train"]["warmup_epochs"] > 0
    run = setup(parse(raw), tiny_dataset, tmp_path / "other", live_dir=None)
    assert {g["initial_lr"] for g in run.optimizer.param_groups} == {raw["train"]["learning_rate"]}
    first = {g["lr"] for g in run.optimizer.param_groups}
    assert len(first) == 1 and 0 < first.pop() < raw["train"]["learning_rate"] / 2  # warming up
    run.accelerator.end_training()


def with_cameras(dataset: Path, out: Path, cameras: dict) -> Path:
    """A copy of `dataset` whose shards say they were filmed by `cameras` (SHA256SUMS redone)."""
    shutil.copytree(dataset, out)
    names = []
    for shard in sorted((out / "data").glob("*.arrow")):
        table = pa.ipc.open_stream(shard.read_bytes()).read_all()  # in memory: the file is rewritten below
        metadata = dict(table.schema.metadata)
        metadata[b"trajvid"] = json.dumps({**json.loads(metadata[b"trajvid"]), "cameras": cameras}).encode()
        table = table.replace_schema_metadata(metadata)
        with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        names.append(shard.relative_to(out).as_posix())
    (out / CHECKSUMS).write_text(checksum_lines(out, names))
    return out


def test_the_keypoints_head_triangulates_with_the_datasets_cameras(tiny_dataset, tmp_path):
    """Cameras stored in the data, not the scene's defaults, reach the readout in training, travel
    in config.json and come back when the model is loaded (evaluate, ensemble, explain). Every
    generated dataset stores the default cameras, so only a dataset that says otherwise can tell."""
    stored = read_metadata(tiny_dataset)["cameras"]
    moved = copy.deepcopy(stored)
    moved["t"][0][2] += 0.5  # camera 0 half a unit further along its axis
    moved["K"][1][0][0] *= 1.1  # camera 1 zoomed
    expected = projection_matrices(moved)
    assert not torch.allclose(expected, projection_matrices(stored))
    data = with_cameras(tiny_dataset, tmp_path / "trajectories", moved)

    raw = tiny_params(num_samples=200, epochs=1)
    assert raw["head"]["type"] == "keypoints"
    run = setup(parse(raw), data, tmp_path / "models", live_dir=None)
    assert torch.equal(run.unwrapped.readout.projection, expected)
    finish(run, tmp_path / "saved", stopped_early=False)  # what the train stage writes
    model, config = load_trained(tmp_path / "saved")
    assert config["input"]["cameras"] == moved
    assert torch.equal(model.readout.projection, expected)


def test_the_learning_rate_of_an_optimizer_step_does_not_depend_on_the_number_of_processes():
    """Accelerate calls a prepared scheduler once per process at each optimizer step: the schedule
    must give optimizer step s the same rate whether it is called once or N times per step."""
    from trajvid.train import lr_lambda

    one = lr_lambda(total_steps=100, warmup_steps=10)
    for processes in (2, 4):
        many = lr_lambda(total_steps=100, warmup_steps=10, calls_per_step=processes)
        assert [many(s * processes) for s in range(100)] == [one(s) for s in range(100)]
    assert one(0) == 0.1 and one(9) == 1.0 and one(10) == 1.0 and one(99) < 0.01  # warm-up, then cosine


def test_two_training_seeds_on_one_dataset_train_two_models(small_dataset, tmp_path):
    """train.seed seeds the training, not the data: on one dataset two training seeds give other
    weights and the same seed the same weights; config.json names both seeds. (That the data
    stay the same is the generate stage's params: tests/test_structure.py.)"""
    from safetensors.torch import load_file

    weights = {}
    for name, seed in (("a", 0), ("b", 1), ("again", 0)):
        raw = tiny_params(num_samples=40, epochs=1)
        raw["train"]["seed"] = seed
        train(parse(raw), small_dataset, tmp_path / name, live_dir=None, progress=False)
        weights[name] = load_file(str(tmp_path / name / "model.safetensors"))
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert (config["seed"], config["data_seed"]) == (seed, 7)  # small_dataset's seed, whatever params.yaml says
    assert any(not torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert all(torch.equal(weights["a"][k], weights["again"][k]) for k in weights["a"])
