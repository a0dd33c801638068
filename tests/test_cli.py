"""The `trajvid` command: bad input (one line naming the value, exit 2, nothing written) and whose code it runs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, run, tiny_params, write_params

import trajvid


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda p: p["data"].update(num_samples=10002), "data.num_samples=10002"),
        (lambda p: p["data"].update(num_frames=0), "data.num_frames=0"),
        (lambda p: p["data"].update(split={"train": 0.7, "validation": 0.1, "test": 0.1}), "sums to 0.9"),
        (lambda p: p["data"].update(colour="red"), "unknown key 'data.colour'"),
        (lambda p: p.update(model="resnet"), "model: unknown backbone 'resnet'; valid backbones are i3d, "),
        (lambda p: p["train"].update(wieght_decay=0.1), "unknown key 'train.wieght_decay'"),
        (lambda p: p["train"].update(batch_size="16"), "train.batch_size='16'"),
        (lambda p: p["models"].update(resnet={}), "models: unknown backbone 'resnet'"),
    ],
)
def test_bad_params_one_line_exit_2_no_output(tmp_path, edit, needle):
    params = tiny_params()
    edit(params)
    write_params(tmp_path / "params.yaml", params)
    result = run(["trajvid", "generate", "--no-progress"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (tmp_path / "data").exists()


def test_train_without_data_says_how_to_get_it(tmp_path):
    write_params(tmp_path / "params.yaml", tiny_params())
    result = run(["trajvid", "train", "--no-progress", "--live", "none"], tmp_path, check=False)
    assert result.returncode == 2
    assert "dvc repro generate" in result.stderr and "dvc pull" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_generate_writes_a_loadable_dataset(tmp_path):
    write_params(tmp_path / "params.yaml", tiny_params())
    result = run(["trajvid", "generate", "--no-progress"], tmp_path)
    assert "'train': 32" in result.stdout
    assert (tmp_path / "data" / "trajectories" / "README.md").is_file()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["trajectories"]  # no temporaries left


@pytest.mark.parametrize(
    "edit, needle",
    [
        # the input size comes from the data only: a size in params would be configured, then ignored
        (lambda p: p.update(model="transformer") or p["models"]["transformer"].update(num_frames=16),
         "unknown key 'models.transformer.num_frames'"),
        (lambda p: p.update(model="magvit") or p["models"]["magvit"].update(image_size=128),
         "unknown key 'models.magvit.image_size'"),
        (lambda p: p["head"].update(hiden=3), "unknown key 'head.hiden'"),
        (lambda p: p["head"].update(dropout=1.5), "head.dropout=1.5"),
    ],
)
def test_bad_model_params_stop_training_before_any_work(tmp_path, edit, needle):
    params = tiny_params()
    edit(params)
    write_params(tmp_path / "params.yaml", params)
    result = run(["trajvid", "train", "--no-progress", "--live", "none"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("entry", ["script", "module"])
def test_a_command_runs_the_code_of_the_repository_it_runs_in(tmp_path, entry):
    """DVC's queue runs each experiment in a copy of the repository, while the editable install
    imports the package of the checkout it was installed from: the copy's code must be what runs
    (dvc.lock hashes the copy's files)."""
    package = Path(trajvid.__file__).parent
    shutil.copytree(package, tmp_path / "src" / "trajvid", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "src" / "trajvid" / "__init__.py", "a") as f:
        f.write('\nimport sys\nprint("the copy\'s code", sorted(sys._xoptions), flush=True)\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAJVID_WORKSPACE_CODE")}
    # started as a script, or as a module with an interpreter option, which the restart keeps
    command = [str(BIN / "trajvid")] if entry == "script" else [sys.executable, "-X", "utf8", "-m", "trajvid"]
    copy = subprocess.run([*command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert copy.stdout.splitlines()[0].startswith("the copy's code [")
    assert ("'utf8'" in copy.stdout.splitlines()[0]) == (entry == "module"), copy.stdout
    restarted = subprocess.run([*command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                               env={**env, "TRAJVID_WORKSPACE_CODE": str(tmp_path / "src" / "trajvid" / "__init__.py"),
                                    "PYTHONPATH": str(tmp_path / "elsewhere")})  # started again, the path lost
    assert restarted.returncode == 2 and restarted.stdout == "" and len(restarted.stderr.splitlines()) == 1
    assert restarted.stderr.startswith(f"error: {tmp_path / 'src' / 'trajvid'} is this repository's code"), restarted.stderr
    (tmp_path / "elsewhere").mkdir()
    elsewhere = subprocess.run([*command, "--help"], cwd=tmp_path / "elsewhere", env=env, capture_output=True,
                               text=True, check=True)
    assert "the copy's code" not in elsewhere.stdout and "Usage: trajvid" in elsewhere.stdout
