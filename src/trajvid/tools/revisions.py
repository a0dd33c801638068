"""The trained model of any git revision or DVC experiment, read without checking anything out.

`trajvid ensemble` and `trajvid explain --rev` use it. A revision is a branch, tag, commit or DVC
experiment name (`report.resolve`); its `models/` is read through DVC's Python API
(`DVCFileSystem` at that commit: from the local cache, or from the DVC remote when the cache
lacks it). Which dataset the model was trained on is identified by the SHA-256 of the dataset's
`SHA256SUMS` at that revision (it lists the SHA-256 of every shard, `generate.py`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from trajvid.data.shards import CHECKSUMS, dataset_fingerprint, fingerprint_of_sums
from trajvid.errors import TrajvidError, first_line

MODEL_FILES = ("models/config.json", "models/model.safetensors")
DATA = "data/trajectories"
SUMS = f"{DATA}/{CHECKSUMS}"


class RevisionError(TrajvidError):
    """A revision that does not exist, has no trained model, or whose files cannot be fetched."""


@dataclass
class TrainedAt:
    name: str  # as given: branch, tag, commit or experiment name
    commit: str
    model: torch.nn.Module  # in eval mode
    config: dict  # models/config.json
    model_bytes: int
    data_fingerprint: str
    val_position_rmse: float | None  # the last epoch's, from dvclive/metrics.json (None if absent)


def check_trained_on(trained: TrainedAt, data_dir: Path, local: str | None = None) -> None:
    """RevisionError unless `trained` was trained on the dataset at `data_dir` (whose fingerprint
    `local` may be given when it is already known)."""
    local = local or dataset_fingerprint(data_dir)
    if trained.data_fingerprint != local:
        raise RevisionError(f"revision {trained.name!r} was trained on other data than {data_dir} (dataset "
                            f"fingerprints {trained.data_fingerprint[:12]} and {local[:12]}); choose a revision "
                            "trained on it, or check out that revision's data (or pass it with --data)")


def _fetch_hint(name: str, ref: str) -> str:
    if ref.startswith("refs/exps/"):
        return f"fetch it with `dvc exp pull <git remote> {name}` (it brings the experiment's DVC outputs too)"
    return f"fetch it with `dvc fetch --all-commits` (or `git checkout {name} && dvc pull`)"


def _lock_problem(lock_text: str | None) -> str | None:
    """Why the revision's dvc.lock does not vouch for a model trained on the revision's dataset
    (None if it does): no train stage, or a train stage that used other data than the dataset
    recorded (a `generate` rerun and committed without retraining)."""
    import yaml

    try:
        stages = yaml.safe_load(lock_text or "")["stages"]
        train = stages["train"]
        trained = any(o.get("path") == MODEL_FILES[1] and o.get("md5") for o in train["outs"])
    except (yaml.YAMLError, TypeError, KeyError, AttributeError):
        trained = False
    if not trained:
        return "has no trained model (its dvc.lock records no output of the train stage): train it first " \
               "(`dvc repro` or `dvc exp run` there)"
    used = next((d.get("md5") for d in train.get("deps", []) if d.get("path") == DATA), None)
    made = next((o.get("md5") for o in (stages.get("generate") or {}).get("outs", []) if o.get("path") == DATA), None)
    if used and made and used != made:
        return (f"has a model trained on other data than its {DATA} (dvc.lock: train used {used}, generate made "
                f"{made}): rerun `dvc repro` there")
    return None


def load_trained_at(root: Path, name: str) -> TrainedAt:
    """The trained model of revision `name` of the repository at `root`; a revision that does not
    exist, has no trained model or whose files are in neither the cache nor the remote raises
    RevisionError naming it and the command that fetches it."""
    from dvc.api import DVCFileSystem

    from trajvid.model_files import REMEDY, WEIGHTS, ModelFileError, load_trained
    from trajvid.tools.git import git, resolve

    ref = resolve(root, name)
    if ref is None:
        raise RevisionError(f"revision {name!r} is neither a branch, tag, commit nor DVC experiment of {root}; "
                            "see `git branch -a` and `dvc exp list --all-commits` (`dvc exp pull` fetches one)")
    commit = (git(root, "rev-parse", f"{ref}^{{commit}}") or "").strip()
    problem = _lock_problem(git(root, "show", f"{commit}:dvc.lock"))
    if problem:
        raise RevisionError(f"revision {name!r} {problem}")
    fs = DVCFileSystem(str(root), rev=commit)
    with tempfile.TemporaryDirectory(prefix="trajvid-revision-") as tmp:
        for path in MODEL_FILES:
            try:
                (Path(tmp) / Path(path).name).write_bytes(fs.read_bytes(path))
            except FileNotFoundError as error:  # DVC's "No storage files available"
                raise RevisionError(f"revision {name!r}: {path} is in neither the local DVC cache nor the DVC remote "
                                    f"({first_line(error)}); {_fetch_hint(name, ref)}") from None
            except Exception as error:  # a remote that refuses, a full /tmp, ...: say what DVC said
                raise RevisionError(f"revision {name!r}: {path} could not be read from the DVC cache or remote "
                                    f"({type(error).__name__}: {first_line(error)})") from None
        try:
            model, config = load_trained(tmp)
        except ModelFileError as error:
            message = str(error).replace(f"{tmp}/", "models/").replace(
                REMEDY, "retrain it at that revision (`dvc repro train` or `dvc exp run`)")
            raise RevisionError(f"revision {name!r}: {message}") from None
        model_bytes = (Path(tmp) / WEIGHTS).stat().st_size
    try:
        sums = fs.read_bytes(SUMS)
    except Exception as error:
        raise RevisionError(f"revision {name!r}: cannot read its dataset's {SUMS} ({first_line(error)}), so which data "
                            f"it was trained on is unknown; {_fetch_hint(name, ref)}") from None
    val_rmse = None
    live = git(root, "show", f"{commit}:dvclive/metrics.json")
    if live:
        try:
            val_rmse = float(json.loads(live)["val"]["position_rmse"])
        except (ValueError, KeyError, TypeError):
            val_rmse = None
    return TrainedAt(name, commit, model, config, model_bytes, fingerprint_of_sums(sums), val_rmse)
