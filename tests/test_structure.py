"""The repository's structure: true stage dependencies, one-way imports, a torch-free params
module, and a fifth backbone added with one file, one registry line and one params block."""

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXTRA_BACKBONE, ROOT, make_repo, run, tiny_params, write_params
from trajvid.params import DataParams, TrainParams

PACKAGE = ROOT / "src" / "trajvid"
STAGE_MODULES = {"generate", "baseline", "train", "evaluate"}
# Loaded by stages but not what they compute (docs/design.md, "Stage dependencies"): argument
# parsing, the choice of which (identical) GPU runs a stage, the heartbeat `trajvid status` reads.
DISPATCH = {"trajvid", "trajvid.__main__", "trajvid.cli", "trajvid.gpus", "trajvid.heartbeat"}


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_imports_a_stage_module():
    for path in PACKAGE.glob("*.py"):
        if path.stem == "cli":
            continue  # the dispatcher calls the stages
        imports = imported_modules(path)
        for stage in STAGE_MODULES - {path.stem}:
            assert f"trajvid.{stage}" not in imports, f"{path.name} imports the {stage} stage"


def test_params_module_does_not_import_torch():
    code = "import sys, trajvid.params as p; p.load('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stage_params_are_exactly_the_settings_that_change_results():
    stages = dvc_stages()
    train_keys = {f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name not in TrainParams.RUNTIME}
    assert set(stages["train"]["params"]) == {"seed", "model", "models.${model}", "head"} | train_keys
    data_keys = {f"data.{f.name}" for f in dataclasses.fields(DataParams) if f.name not in DataParams.RUNTIME}
    assert set(stages["generate"]["params"]) == {"seed"} | data_keys


# Runs `python -m trajvid STAGE` and writes the trajvid modules loaded by its end to modules.json.
RECORD_MODULES = """
import atexit, json, runpy, sys
atexit.register(lambda: json.dump(sorted(m for m in sys.modules if m.startswith("trajvid")), open("modules.json", "w")))
sys.argv = ["trajvid", *sys.argv[1:]]
runpy.run_module("trajvid", run_name="__main__")
"""


@pytest.mark.slow
def test_each_stage_depends_on_exactly_the_code_it_imports(tmp_path):
    """Run every stage, record the trajvid modules it loaded, and compare them with the stage's
    `deps` in dvc.yaml in both directions (a missing dep leaves stale results; an extra one
    reruns a stage for nothing)."""
    params = tiny_params(num_samples=40, epochs=1)
    write_params(tmp_path / "params.yaml", params)
    stages = dvc_stages()
    for stage, args in (("generate", ["--no-progress"]), ("baseline", []), ("train", ["--no-progress"]), ("evaluate", [])):
        run([sys.executable, "-c", RECORD_MODULES, stage, *args], tmp_path)
        modules = set(json.loads((tmp_path / "modules.json").read_text())) - DISPATCH
        imported = {f"src/trajvid/{m.split('.', 1)[1]}.py" for m in modules}
        declared = {d.replace("${model}", params["model"]) for d in stages[stage]["deps"] if d.startswith("src/")}
        assert imported == declared, (stage, sorted(imported - declared), sorted(declared - imported))


@pytest.mark.slow
def test_a_fifth_backbone_is_one_file_one_registry_line_one_params_block(tmp_path):
    """Copy tests/extra_backbone.py into a fresh repository as src/trajvid/tinyconv.py, register it
    with one line, give it one params block, and run it as a DVC experiment."""
    repo = make_repo(tmp_path / "fifth", tiny_params(num_samples=40, epochs=1))
    shutil.copy(ROOT / "tests" / "extra_backbone.py", repo / "src" / "trajvid" / f"{EXTRA_BACKBONE}.py")
    registry = repo / "src" / "trajvid" / "registry.py"
    text = registry.read_text()
    registry.write_text(text.replace("BACKBONES: dict[str, str] = {\n",
                                     f'BACKBONES: dict[str, str] = {{\n    "{EXTRA_BACKBONE}": "trajvid.{EXTRA_BACKBONE}:TinyConv",\n'))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"][EXTRA_BACKBONE] = {"feature_dim": 64, "width": 4}
    write_params(repo / "params.yaml", params)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "a fifth backbone"], repo)
    run(["dvc", "exp", "run", "-n", "exp-tinyconv", "-S", f"model={EXTRA_BACKBONE}"], repo)
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    assert metrics["model"]["name"] == EXTRA_BACKBONE and metrics["test"]["samples"] == 4
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert f"src/trajvid/{EXTRA_BACKBONE}.py" in {d["path"] for d in lock["stages"]["train"]["deps"]}
