"""Shared fixtures: tiny parameters, a tiny generated dataset, throw-away DVC repositories and one
where the whole pipeline has run."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Under pytest-xdist (.ci/run: two workers on 2 cores) each worker's trainings use 2 torch threads:
# 4 threads on 2 cores. OpenMP's default lets a thread that waits spin on its core, which then
# does nothing for the other worker (the suite's CPU time rose by half, 825 -> 1,239 s user); a
# passive wait gives the core away. Set before torch is imported (libgomp reads it once, at load);
# the stages' subprocesses inherit it. It changes scheduling only, never a figure.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import yaml

from trajvid.backbones import BACKBONES, backbone_class
from trajvid.backbones.base import sizes_block

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: trajvid, dvc

# A backbone outside the package (tests/extra_backbone.py), registered the way a new one is (its
# module named trajvid.backbones.<name>), so that every generic model test that takes its list
# from BACKBONES runs it too.
STUDY_BACKBONES = tuple(BACKBONES)  # the repository's own, before the extra one
EXTRA_BACKBONE = "tinyconv"
if EXTRA_BACKBONE not in BACKBONES:  # (a repository that tests/test_structure.py gave it already has it)
    sys.modules[f"trajvid.backbones.{EXTRA_BACKBONE}"] = importlib.import_module("extra_backbone")
    BACKBONES[EXTRA_BACKBONE] = "TinyConv"


def tiny_sizes(name: str) -> dict:
    """The sizes in which backbone `name`'s `Config.tiny()` differs from its defaults, as a params
    block: narrow backbones, for tests of behaviour, not quality."""
    config = backbone_class(name).Config
    tiny, default = sizes_block(config.tiny()), sizes_block(config())
    return {key: value for key, value in tiny.items() if value != default[key]}


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(num_samples: int = 40, epochs: int = 1, model: str = "i3d") -> dict:
    params = default_params()
    params["data"]["num_samples"] = num_samples
    params["data"]["workers"] = 2
    params["model"] = model
    for name in params["models"]:  # the backbones of the repository's own params.yaml
        params["models"][name].update(tiny_sizes(name))
    params["train"].update(
        {"epochs": epochs, "batch_size": 8, "checkpoint_interval": 1, "num_workers": 0, "threads": 2}
    )
    # one shifted set (one that compresses: noise would put megabytes in every test's DVC cache),
    # of the fewest samples that leave every split a sample of every class (tests/test_shifts.py
    # runs all of them)
    shifts = params["robustness"]["shifts"]
    params["robustness"].update({"num_samples": 40, "shifts": {"faster": shifts["faster"]}})
    return params


def write_params(path: Path, params: dict) -> None:
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tool_env(cwd: Path) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    if (Path(cwd) / "src" / "trajvid").is_dir():  # a repository made by make_repo runs its own copy of the code
        env["PYTHONPATH"] = f"{Path(cwd).resolve() / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return env


def start_queue(repo: Path, jobs: int) -> None:
    """`dvc queue start -j N`, returning once the workers are started: not through a pipe, which
    the detached workers would hold open until the queue is empty."""
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=tool_env(repo), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(cwd), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_repo(path: Path, params: dict) -> Path:
    """A git + DVC repository with this project's pipeline and the given params, committed."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml"):
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(ROOT / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(path / "params.yaml", params)
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "tests@trajvid.invalid"], path)
    run(["git", "config", "user.name", "trajvid tests"], path)
    run(["dvc", "init", "-q"], path)
    # what `dvc config core.autostage true` writes, without starting dvc once more (per repository)
    (path / ".dvc" / "config").write_text("[core]\n    autostage = true\n")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "pipeline"], path)
    return path


def copy_repo(repo: Path, path: Path) -> Path:
    """A copy of `repo` at `path`: its git history, DVC cache and run-cache, and workspace. DVC's
    default cache type (reflink, else copy) never links a workspace file to the cache, so the
    copy shares nothing with `repo`; it rehashes the copied outputs once, by content."""
    shutil.copytree(repo, path, symlinks=True)
    return path


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """A repository where `dvc repro` ran every stage (40 samples, 3 epochs of a narrow I3D) and
    its results are committed; copy it (`copy_repo`), never change it. Each stage is a process
    that imports torch, about 25 s for the pipeline on 2 cores: the tests that need a finished
    run (tests/test_pipeline.py, the branches test) share this one."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", tiny_params(num_samples=40, epochs=3))
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    return repo


def _generated(tmp_path_factory, num_samples: int) -> Path:
    from trajvid.generate import generate
    from trajvid.params import DataParams

    out = tmp_path_factory.mktemp("data") / "trajectories"
    generate(7, DataParams(num_samples=num_samples, shard_size=64, workers=2), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 200-sample dataset (noise-free), generated once per test session."""
    return _generated(tmp_path_factory, 200)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """40 samples (32 to train on, every class in every split): for tests of what training does
    with its checkpoints, its signals and its seeds, where the figures do not matter and each epoch
    on tiny_dataset would cost five times as much."""
    return _generated(tmp_path_factory, 40)
