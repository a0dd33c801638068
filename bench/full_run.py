"""The full default run for several backbones: generate (if needed), train, evaluate, one table
with the classical baseline and copying the last position beside them.

    python bench/full_run.py                          # every backbone, one after the other
    python bench/full_run.py --reduced                # the cheap ranking protocol (below)
    python bench/full_run.py --backbone i3d --set train.epochs=2 --set data.num_samples=2000
    python bench/full_run.py --parallel 4 --set train.num_workers=3   # share one GPU between four

The reduced protocol (`--reduced`: 2,000 samples, 3 epochs, everything else default) ranks design
choices in minutes per backbone on a 2-core CPU; it scores the **validation** split (design
choices never look at the test split), and its figures are not the full run's and are labelled
so wherever they are reported.

Uses params.yaml with `model` (and any --set KEY=VALUE) overridden, runs `python -m trajvid`
for each stage in a work directory (default .fullrun/), and prints each backbone's test accuracy,
per-class accuracy, next-position RMSE, training wall time and samples/s. DVC is not needed,
so this also runs on a machine that only has the training dependencies (a GPU box).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def set_key(params: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = yaml.safe_load(value)


def source_env() -> dict:
    """This process's environment with this checkout's src/ first on the path: `python -m trajvid`
    then runs the code beside this script, installed or not."""
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def dataset(work: Path, params: dict, env: dict) -> Path:
    """work/data/trajectories, generated with `params`' data seed and data block; regenerated when
    those differ from what generated it (work/params-data.yaml)."""
    data = work / "data" / "trajectories"
    data_params = {"seed": params["seed"], "data": params["data"]}  # what the dataset is a function of
    previous = work / "params-data.yaml"
    if data.exists() and (not previous.exists() or yaml.safe_load(previous.read_text()) != data_params):
        shutil.rmtree(data)  # generated with other data params: not this run's dataset
    previous.write_text(yaml.safe_dump(data_params))
    if not data.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "trajvid", "generate", "--no-progress", "--params", str(previous),
                        "--out", str(data)], check=True, env=env, cwd=work)
        print(f"generate: {time.perf_counter() - start:.1f} s", flush=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", action="append", help="default: every backbone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default=".fullrun")
    parser.add_argument("--parallel", type=int, default=1, help="backbones trained at the same time")
    parser.add_argument("--reduced", action="store_true",
                        help="the ranking protocol: 2,000 samples, 3 epochs, scored on the validation split")
    parser.add_argument("--split", choices=["test", "validation"], help="the split scored [default: test; "
                        "validation with --reduced]")
    args = parser.parse_args()
    if args.reduced:
        args.set = ["data.num_samples=2000", "train.epochs=3", *args.set]
    split = args.split or ("validation" if args.reduced else "test")

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for assignment in args.set:
        set_key(base, assignment)
    env = source_env()
    trajvid = [sys.executable, "-m", "trajvid"]

    data = dataset(work, base, env)

    sys.path.insert(0, str(ROOT / "src"))  # works without installing the package
    from trajvid.backbones import BACKBONES

    names = args.backbone or list(BACKBONES)
    running: list[tuple[str, subprocess.Popen, float]] = []
    walls: dict[str, float] = {}

    def finish(entry):
        name, proc, started = entry
        if proc.wait() != 0:
            raise SystemExit(f"training {name} failed; see {work / f'train-{name}.log'}")
        walls[name] = time.perf_counter() - started

    for name in names:
        params = dict(base, model=name)
        params_file = work / f"params-{name}.yaml"
        params_file.write_text(yaml.safe_dump(params))
        log = open(work / f"train-{name}.log", "w")
        cmd = [*trajvid, "train", "--no-progress", "--live", "none", "--params", str(params_file),
               "--data", str(data), "--out", str(work / f"models-{name}")]
        running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.perf_counter()))
        if len(running) >= args.parallel:
            finish(running.pop(0))
    for entry in running:
        finish(entry)

    rows = []
    for name in names:
        subprocess.run([*trajvid, "evaluate", "--params", str(work / f"params-{name}.yaml"), "--data", str(data),
                        "--model", str(work / f"models-{name}"), "--out", str(work / f"metrics-{name}"),
                        "--split", split],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        metrics = json.loads((work / f"metrics-{name}" / "metrics.json").read_text())
        metrics["train"]["wall_s"] = walls[name]
        rows.append(metrics)
    baseline = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys; from trajvid.baseline import run_baseline; "
         "print(json.dumps(run_baseline(sys.argv[1], sys.argv[2])))", str(data), split],
        check=True, env=env, capture_output=True, text=True).stdout)
    (work / "summary.json").write_text(json.dumps({"params": args.set, "split": split, "runs": rows,
                                                   "baseline": baseline}, indent=2))

    print(f"{'backbone':<12} {'acc':>7} {'linear':>7} {'circ.':>7} {'helical':>7} {'parab.':>7} "
          f"{'rmse':>7} {'train s':>8} {'wall s':>7} {'samp/s':>7} {'params':>10}")
    for m in rows:
        t, pc = m[split], m[split]["per_class_accuracy"]
        print(f"{m['model']['name']:<12} {t['accuracy']:>7.4f} {pc['linear']:>7.4f} {pc['circular']:>7.4f} "
              f"{pc['helical']:>7.4f} {pc['parabolic']:>7.4f} {t['position_rmse']:>7.4f} "
              f"{m['train']['time_s']:>8.0f} {m['train']['wall_s']:>7.0f} {m['train']['samples_per_s']:>7.1f} "
              f"{m['model']['params']:>10,}")
    t, pc = baseline[split], baseline[split]["per_class_accuracy"]
    print(f"{'baseline':<12} {t['accuracy']:>7.4f} {pc['linear']:>7.4f} {pc['circular']:>7.4f} "
          f"{pc['helical']:>7.4f} {pc['parabolic']:>7.4f} {t['position_rmse']:>7.4f}   (classical: triangulate and fit)")
    print(f"{'copy-last':<12} {'':>39} {baseline['copy_last']['position_rmse']:>7.4f}   (the last visible position)")
    print(f"params: {' '.join(args.set) or 'defaults'}; data seed {base['seed']}, training seed "
          f"{base['train'].get('seed', 0)}; scored on the {split} split")


if __name__ == "__main__":
    main()
