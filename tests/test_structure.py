"""The repository's structure: layers that import only downwards, true stage dependencies, a
torch-free params module, one list of backbones, and a backbone added with one file, one
registry line and one params block."""

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EXTRA_BACKBONE, ROOT, STUDY_BACKBONES, make_repo, run, tiny_params, tool_env, write_params

from trajvid.backbones import module_name
from trajvid.params import DataParams, TrainParams
from trajvid.train import NOT_COMPUTATION, imported_closure

SRC = ROOT / "src"
PACKAGE = SRC / "trajvid"
STAGE_MODULES = {"trajvid.generate", "trajvid.baseline", "trajvid.train", "trajvid.evaluate", "trajvid.robustness"}
# Loaded by stages but not what they compute (docs/design.md, "Stage dependencies"): argument
# parsing, the choice of which (identical) GPU runs a stage, the heartbeat `trajvid status` reads.
DISPATCH = {"trajvid", "trajvid.__main__", "trajvid.cli", "trajvid.runtime.gpus", "trajvid.runtime.heartbeat"}

# The layers, lowest first: a module may import its own layer's modules and lower ones, never a
# higher layer's. The backbones package itself (its __init__) is the registry: names only, no
# torch, so that params.py can check `model:`; the backbones' modules sit above params and data.
LAYERS = [
    ("foundation", {"trajvid", "trajvid.errors", "trajvid.backbones"}),
    ("runtime", {"trajvid.runtime", "trajvid.runtime.*"}),
    ("params", {"trajvid.params"}),
    ("data", {"trajvid.data", "trajvid.data.*"}),
    ("backbones", {"trajvid.backbones.*"}),
    ("head", {"trajvid.head", "trajvid.head.*"}),
    ("model files and figures", {"trajvid.metrics", "trajvid.model_files", "trajvid.checkpoint", "trajvid.inference",
                                 "trajvid.contracts"}),
    ("stages", STAGE_MODULES),
    ("tools", {"trajvid.tools", "trajvid.tools.*"}),
    ("command", {"trajvid.cli", "trajvid.__main__"}),
]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py's LAYERS: give it one")


def trajvid_imports(path: Path) -> set[str]:
    """The trajvid modules a file imports (`from a.b import c` counts a.b, and a.b.c where it is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import (the layer test and imported_closure read absolute ones)"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if (SRC / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                         or (SRC / f"{node.module}.{a.name}".replace(".", "/") / "__init__.py").exists())
    return {n for n in names if n == "trajvid" or n.startswith("trajvid.")}


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def upward_imports(path: Path) -> list[str]:
    """The imports of a higher layer's modules in a source file of the package."""
    here = layer_of(module_of(path))
    return [f"{module_of(path)} ({LAYERS[here][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})"
            for imported in sorted(trajvid_imports(path)) if layer_of(imported) > here]


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    """(The registry imports the selected backbone's module by name, `importlib.import_module`,
    at build time: the one upward import, by design, and invisible to this static check.)"""
    wrong = [line for path in source_files() for line in upward_imports(path)]
    assert not wrong, wrong


def test_no_stage_imports_another_stage():
    for path in source_files():
        if module_of(path) in STAGE_MODULES:
            others = trajvid_imports(path) & (STAGE_MODULES - {module_of(path)})
            assert not others, f"{path.name} imports the stage {others}"


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A data module importing the head, a stage importing a tool: both flagged; a downward import not."""
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    (tmp_path / "trajvid" / "data").mkdir(parents=True)
    (tmp_path / "trajvid" / "head").mkdir()
    (tmp_path / "trajvid" / "head" / "geometry.py").write_text("")
    bad = tmp_path / "trajvid" / "data" / "scene.py"
    bad.write_text("from trajvid.head.geometry import project\nfrom trajvid.errors import ParamsError\n")
    assert upward_imports(bad) == ["trajvid.data.scene (data) imports trajvid.head.geometry (head)"]
    stage = tmp_path / "trajvid" / "train.py"
    stage.write_text("import trajvid.tools.report\nfrom trajvid.head import geometry\n")
    assert upward_imports(stage) == ["trajvid.train (stages) imports trajvid.tools.report (tools)"]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("trajvid.somewhere")


def test_params_module_does_not_import_torch():
    code = "import sys, trajvid.params as p; p.load('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stage_params_are_exactly_the_settings_that_change_results():
    stages = dvc_stages()
    train_keys = {f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name not in TrainParams.RUNTIME}
    # the data's seed reaches training through data/trajectories (a dep); train.seed is among train_keys
    assert set(stages["train"]["params"]) == {"model", "models.${model}", "head"} | train_keys
    data_keys = {f"data.{f.name}" for f in dataclasses.fields(DataParams) if f.name not in DataParams.RUNTIME}
    assert set(stages["generate"]["params"]) == {"seed"} | data_keys
    # a shifted set: the data params but its own seed and size, and its shift's changes
    assert set(stages["shift"]["do"]["params"]) == (data_keys - {"data.num_samples"}) | {
        "robustness.seed", "robustness.num_samples", "robustness.shifts.${key}"}
    assert stages["shift"]["foreach"] == "${robustness.shifts}" and stages["robustness"]["params"] == ["robustness"]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def declared_code(stage: str, model: str) -> set[str]:
    """The .py files a stage's `deps` name, a directory standing for every .py file in it."""
    files = set()
    definition = dvc_stages()[stage]
    for dep in definition.get("do", definition)["deps"]:  # a foreach stage's deps are under `do`
        path = ROOT / dep.replace("${model}", model)
        if dep.startswith("src/"):
            files |= {str(p.relative_to(ROOT)) for p in path.rglob("*.py")} if path.is_dir() else {dep.replace("${model}", model)}
    return files


def module_file(module: str) -> str:
    path = Path("src", *module.split("."))
    return str(path / "__init__.py") if (ROOT / path).is_dir() else str(path.with_suffix(".py"))


@pytest.mark.parametrize("model", STUDY_BACKBONES)
def test_the_code_fingerprint_covers_exactly_the_train_stage_code(model):
    """`train.code_version` hashes the modules `imported_closure` finds (a checkpoint of other
    code is never resumed); they must be the train stage's deps, subpackages and their
    `__init__.py` included, for every backbone."""
    found = {module_file(m) for m in imported_closure(["trajvid.train", module_name(model)]) - NOT_COMPUTATION}
    assert found == declared_code("train", model), (sorted(found ^ declared_code("train", model)))
    assert "src/trajvid/head/__init__.py" in found and "src/trajvid/backbones/layers.py" in found


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
    shift = next(iter(params["robustness"]["shifts"]))
    for stage, commands in (("generate", [["generate", "--no-progress"]]), ("baseline", [["baseline"]]),
                            ("train", [["train", "--no-progress"]]), ("evaluate", [["evaluate"]]),
                            ("shift", [["generate", "--shift", shift, "--no-progress"],
                                       ["baseline", "--data", f"data/robustness/{shift}", "--split", "all", "--out",
                                        f"metrics/robustness/{shift}.json"]]),
                            ("robustness", [["robustness"]])):
        modules = set()
        for args in commands:  # a stage of several commands imports what all of them do
            run([sys.executable, "-c", RECORD_MODULES, *args], tmp_path)
            modules |= set(json.loads((tmp_path / "modules.json").read_text())) - DISPATCH
        imported = {module_file(m) for m in modules}
        declared = declared_code(stage, params["model"])
        assert imported == declared, (stage, sorted(imported - declared), sorted(declared - imported))


def backbone_lists(path: Path, names: set[str]) -> list[str]:
    """Places in a Python file that name three or more backbones together: a tuple, list, set or
    dict of their names, or one string naming them (a shell loop, a message). Two are a choice
    (a test of two branches), not a list that a new backbone would have to join. In strings
    "transformer" does not count: the word is too common in prose."""
    found = []
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
            if len(named) >= 3:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(named)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            named = (names - {"transformer"}) & set(re.findall(r"[a-z0-9]+", node.value))
            if len(named) >= 3:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(named)} in a string")
    return found


def test_the_registry_is_the_only_list_of_backbones():
    """No second list of backbone names in src/, tests/ or bench/ (it would drift: a new backbone
    would be left out of it); each derives its list from BACKBONES."""
    names = set(STUDY_BACKBONES)
    registry = PACKAGE / "backbones" / "__init__.py"
    files = [p for p in [*source_files(), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")] if p != registry]
    found = [hit for path in files for hit in backbone_lists(path, names)]
    assert not found, found
    assert backbone_lists(registry, names), "the check itself finds the registry's list"
    comments = [line.partition("#")[2] for line in (ROOT / "params.yaml").read_text().splitlines()]
    assert not [c for c in comments if len(names & set(re.findall(r"[a-z0-9]+", c))) >= 2], "a list in a params.yaml comment"


@pytest.mark.slow
def test_a_sixth_backbone_is_one_file_one_registry_line_one_params_block(tmp_path):
    """Copy tests/extra_backbone.py into a fresh repository as src/trajvid/backbones/tinyconv.py,
    register it with one line, give it one params block; nothing else changes. It then passes
    the generic model tests (every test of tests/test_models.py parametrized by backbone) with
    the repository's code, and runs as a DVC experiment. (Not a copy of conftest.pipeline_run:
    the registry is a dependency of every stage, so the experiment would rerun them all anyway.)"""
    repo = make_repo(tmp_path / "sixth", tiny_params(num_samples=40, epochs=1))
    shutil.copy(ROOT / "tests" / "extra_backbone.py", repo / "src" / "trajvid" / "backbones" / f"{EXTRA_BACKBONE}.py")
    registry = repo / "src" / "trajvid" / "backbones" / "__init__.py"
    text = registry.read_text()
    opening = "BACKBONES: dict[str, str] = {  # name -> class in trajvid/backbones/<name>.py\n"
    assert opening in text
    registry.write_text(text.replace(opening, opening + f'    "{EXTRA_BACKBONE}": "TinyConv",\n'))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"][EXTRA_BACKBONE] = {"feature_dim": 64, "width": 4}
    write_params(repo / "params.yaml", params)
    run(["git", "add", "-A"], repo)
    changed = run(["git", "diff", "--cached", "--name-only"], repo).stdout.split()
    assert sorted(changed) == ["params.yaml", "src/trajvid/backbones/__init__.py",
                               f"src/trajvid/backbones/{EXTRA_BACKBONE}.py"], changed
    run(["git", "commit", "-qm", "a sixth backbone"], repo)

    # the generic model tests, importing the repository's copy of trajvid (tool_env's PYTHONPATH)
    env = tool_env(repo)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                            str(ROOT / "tests" / "test_models.py"), "-k", EXTRA_BACKBONE],
                           cwd=repo, env=env, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", tests.stdout).group(1))
    assert passed >= 8 and "skipped" not in tests.stdout, tests.stdout[-2000:]
    probe = subprocess.run([sys.executable, "-c", "import trajvid.backbones.tinyconv as m; print(m.__file__)"],
                           cwd=repo, env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).resolve().is_relative_to(repo.resolve())

    run(["dvc", "exp", "run", "-n", "exp-tinyconv", "-S", f"model={EXTRA_BACKBONE}"], repo)
    metrics = json.loads((repo / "metrics" / "metrics.json").read_text())
    assert metrics["model"]["name"] == EXTRA_BACKBONE and metrics["test"]["samples"] == 4
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert f"src/trajvid/backbones/{EXTRA_BACKBONE}.py" in {d["path"] for d in lock["stages"]["train"]["deps"]}
    assert os.path.exists(repo / "models" / "model.safetensors")
