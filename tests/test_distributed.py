"""Training on several processes: two CPU processes (gloo) started by torchrun, as on 2 GPUs.

`accelerate launch --cpu --num_processes 2` starts only one process; `torchrun` with
ACCELERATE_USE_CPU=true starts two, which Accelerate joins over gloo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import BIN, run, tiny_params, write_params

pytestmark = pytest.mark.slow

def torchrun(args: list[str], cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "ACCELERATE_USE_CPU": "true",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "trajvid", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_two_processes_write_one_model_like_one_process(tmp_path, tiny_dataset):
    """Two processes (8 samples each) take the optimizer steps one process (16) takes: same
    global batches, averaged gradients. With a backbone without BatchNorm (the transformer:
    LayerNorm only) the weights after the epoch's two steps must be those of the one-process run
    but for float summation order. Measured 2026-12-01 on this CPU: the two runs' weights differ
    by 1.3e-6 of how far training moved them (relative L2, train.seed 0; 2.1e-6 with seed 42;
    11 % before the schedule counted optimizer steps rather than scheduler calls); a doubled
    learning rate, the control, by 1.0. The keypoint heat biases are left out: the softmax over the cells ignores a constant
    added to every cell's logit, so their gradient is zero but for rounding, which AdamW's
    normalisation turns into steps of up to the learning rate (2.6e-3 measured)."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from trajvid.head.multitask import build_model
    from trajvid.params import HeadParams

    raw = tiny_params(num_samples=40, epochs=1, model="transformer")  # 32 train samples: 2 steps of 16
    raw["train"].update({"batch_size": 16, "threads": 1})
    for name in ("one", "two", "control"):
        (tmp_path / name).mkdir()
        write_params(tmp_path / name / "params.yaml", raw)
    raw["train"]["learning_rate"] *= 2
    write_params(tmp_path / "control" / "params.yaml", raw)
    run(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(tiny_dataset)], tmp_path / "one")
    run(["trajvid", "train", "--no-progress", "--live", "none", "--data", str(tiny_dataset)], tmp_path / "control")
    two = torchrun(["train", "--no-progress", "--data", str(tiny_dataset)], tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    models = tmp_path / "two" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoints", "config.json", "model.safetensors"]
    config = json.loads((models / "config.json").read_text())
    assert config["training"]["processes"] == 2
    # one DVCLive log, written by the main process, with the figures of both processes summed
    rows = (tmp_path / "two" / "dvclive" / "plots" / "metrics" / "train" / "accuracy.tsv").read_text().splitlines()
    assert len(rows) == 2  # header + epoch 1

    weights = {name: load_file(str(tmp_path / name / "models" / "model.safetensors")) for name in ("one", "two", "control")}
    set_seed(config["seed"])  # what `train` does (with train.seed) before it builds the model: its initial weights
    initial = build_model("transformer", HeadParams(**config["head"]), **config["sizes"]).state_dict()
    keys = [k for k in initial if initial[k].is_floating_point() and not k.startswith("position_")
            and k != "readout.cell.bias"]

    def distance(a: dict, b: dict) -> float:
        return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys).sqrt())

    moved = distance(weights["one"], initial)
    assert moved > 0.1, moved  # the steps did change the weights
    assert distance(weights["two"], weights["one"]) < 1e-5 * moved, (distance(weights["two"], weights["one"]), moved)
    assert distance(weights["control"], weights["one"]) > 0.1 * moved  # the check can tell


def with_one_bad_sample(dataset, out):
    """A copy of `dataset` where one train sample has a non-finite visible position: its loss is
    NaN in whichever process draws it, and finite in the other."""
    import numpy as np
    import pyarrow as pa

    from trajvid.data.shards import CHECKSUMS, checksum_lines

    shutil.copytree(dataset, out)
    shard = sorted((out / "data").glob("train-*.arrow"))[0]
    with pa.OSFile(str(shard), "rb") as source:
        table = pa.ipc.open_stream(source).read_all()
    positions = np.array(table.column("positions").to_pylist(), dtype=np.float32)
    positions[0, 5] = np.nan  # a visible frame (not the next one: that feeds the target statistics)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(positions.reshape(-1)), 3)
    column = pa.FixedSizeListArray.from_arrays(flat, positions.shape[1])
    table = table.set_column(table.schema.get_field_index("positions"), table.schema.field("positions"), column)
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    names = sorted(line.split("  ", 1)[1] for line in (out / CHECKSUMS).read_text().splitlines() if line)
    (out / CHECKSUMS).write_text(checksum_lines(out, names))
    return out


def test_a_process_that_diverges_alone_stops_every_process_at_the_same_step(tmp_path, tiny_dataset):
    """A non-finite loss in one process is decided together: both stop at the same step with the
    same message (alone, the healthy process would wait in its next all-reduce until killed)."""
    data = with_one_bad_sample(tiny_dataset, tmp_path / "data")
    raw = tiny_params(num_samples=200, epochs=1)
    raw["train"].update({"batch_size": 16, "threads": 1})
    write_params(tmp_path / "params.yaml", raw)
    result = torchrun(["train", "--no-progress", "--live", "none", "--data", str(data)], tmp_path)
    assert result.returncode != 0
    stops = re.findall(r"error: loss is not finite at epoch 1, step (\d+) \(this process's loss: (\S+)\)", result.stderr)
    assert len(stops) == 2 and stops[0][0] == stops[1][0], result.stderr[-3000:]
    assert sorted(loss == "nan" for _, loss in stops) == [False, True]  # one process saw NaN, the other not
    assert "interrupted" not in result.stderr


def test_a_batch_that_the_processes_cannot_share_is_one_line(tmp_path, tiny_dataset):
    raw = tiny_params(num_samples=200, epochs=1)
    raw["train"].update({"batch_size": 9, "threads": 1})
    write_params(tmp_path / "params.yaml", raw)
    result = torchrun(["train", "--no-progress", "--live", "none", "--data", str(tiny_dataset)], tmp_path)
    assert result.returncode != 0
    assert "error: train.batch_size=9 cannot be shared by 2 processes" in result.stderr
    assert not (tmp_path / "models").exists()
