"""Run records: every finished run kept in git as `results/runs/<name>/`, so that the project's
answer survives the machine it was computed on (`refs/exps` and the DVC cache do not).

`trajvid collect [REV ...]` (default: every DVC experiment and the workspace) writes, for each
finished run (its dvc.lock vouches for metrics/metrics.json and metrics/predictions.parquet and
for the model they scored):

  run.json             identity and provenance (`RUN_KEYS`): backbone, head, seeds, data and code
                       fingerprints, git revision, device, processes, threads, precision, times,
                       params, model size and md5, GFLOP per sample, and the SHA-256 of the files below
  metrics.json         the run's metrics/metrics.json
  curves.json          DVCLive's per-epoch series ({"val/accuracy": [[epoch, value], ...], ...})
  predictions.parquet  the scored split, one row per sample (inference.PREDICTION_COLUMNS)
  baseline.json        the classical baseline's metrics/baseline.json, when it scored the same data
  robustness.json      the run's metrics/robustness.json (the model on every shifted set, the baseline
                       beside it), when its dvc.lock vouches for it and it scored the same model

Models stay in DVC (cache or remote), named by their md5 in run.json; never in git. A record is
named `<backbone>-<head>-<precision>-seed<train seed>-<model md5[:8]>`: the same run collected
twice (from the workspace and from its experiment, or on two machines) is one record, and
collecting again rewrites nothing (a record of the same name with other figures is an error, never
replaced). A record is written whole or not at all; `load_records` refuses one with a missing or
damaged file in one line naming it. A workspace is a finished run only if its dvc.lock vouches
for the metrics, the predictions, the model they scored and the params in params.yaml.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from trajvid.errors import TrajvidError
from trajvid.runtime.files import atomic_directory
from trajvid.tools.git import default_revisions, git, resolve

RECORDS = Path("results") / "runs"
FORMAT = 1
FILES = ("metrics.json", "curves.json", "predictions.parquet")  # every record has these; baseline.json optional
OPTIONAL = ("baseline.json", "robustness.json")
RUN_KEYS = ("format", "name", "source", "backbone", "head", "train_seed", "data_seed", "data_fingerprint",
            "code_fingerprint", "config_fingerprint", "git_revision", "device", "processes", "threads",
            "mixed_precision", "train_time_s", "samples_per_s", "epochs", "params", "parameters",
            "model", "gflop_per_sample", "scored_split", "files")


class RecordError(TrajvidError):
    """A run that cannot be recorded, or a record that cannot be read."""


@dataclass
class Record:
    name: str
    run: dict  # run.json
    metrics: dict
    curves: dict
    predictions: dict[str, np.ndarray]  # inference.PREDICTION_COLUMNS, sorted by sample_id
    baseline: dict | None = None
    robustness: dict | None = None  # metrics/robustness.json


# -- reading a run from a revision or the workspace ------------------------------------------------


class _Source:
    """The files of one revision (through git, nothing checked out) or of the workspace."""

    def __init__(self, root: Path, ref: str | None):
        self.root, self.ref = root, ref

    def read(self, path: str) -> bytes | None:
        if self.ref is None:
            file = self.root / path
            return file.read_bytes() if file.is_file() else None
        result = subprocess.run(["git", "show", f"{self.ref}:{path}"], cwd=self.root, capture_output=True)
        return result.stdout if result.returncode == 0 else None

    def listing(self, folder: str) -> list[str]:
        if self.ref is None:
            base = self.root / folder
            return sorted(str(p.relative_to(self.root)) for p in base.rglob("*.tsv")) if base.is_dir() else []
        out = git(self.root, "ls-tree", "-r", "--name-only", self.ref, folder) or ""
        return sorted(line for line in out.splitlines() if line.endswith(".tsv"))


def _stage_files(stage: dict, key: str) -> dict[str, dict]:
    return {entry["path"]: entry for entry in stage.get(key) or []}


def code_fingerprint(lock: dict) -> str:
    """The hashes of the code the run's train and evaluate stages ran (every dep in its dvc.lock
    but the data and the model): runs with the same fingerprint trained and were scored by the
    same code."""
    code = set()
    for stage in ("train", "evaluate"):
        for path, entry in _stage_files(lock["stages"][stage], "deps").items():
            if not path.startswith(("data/", "models/")):
                code.add((stage, path, entry.get("md5")))
    return hashlib.sha256(json.dumps(sorted(code)).encode()).hexdigest()[:16]


_MISSING = object()


def _dotted(params: dict, key: str):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def params_mismatch(lock: dict, params: dict) -> str | None:
    """The first stage param whose value in params.yaml is not the one its dvc.lock ran with."""
    for stage in ("generate", "train"):
        used = ((lock["stages"].get(stage) or {}).get("params") or {}).get("params.yaml") or {}
        for key, value in used.items():
            if _dotted(params, key) != value:
                return f"params.yaml's {key} is not the value its dvc.lock's {stage} stage ran with"
    return None


def config_fingerprint(params: dict) -> str:
    """What a run computes but its training seed: the data (seed and data params), the backbone and
    its sizes, the head and the training params that are stage params (not the runtime ones).
    Runs that share it and the code fingerprint are repeats over training seeds."""
    from trajvid.params import DataParams, TrainParams

    model = params.get("model")
    data = {k: v for k, v in (params.get("data") or {}).items() if k not in DataParams.RUNTIME}
    train = {k: v for k, v in (params.get("train") or {}).items() if k not in TrainParams.RUNTIME and k != "seed"}
    blob = {"seed": params.get("seed"), "data": data, "model": model,
            "sizes": (params.get("models") or {}).get(model), "head": params.get("head"), "train": train}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def device_kind(run: dict) -> str:
    """The type of the device a run trained on ("cpu", "cuda", ...; "cuda:0" is "cuda"): runs on
    different kinds are different configurations, never pooled over seeds (their arithmetic differs)."""
    return str(run.get("device") or "cpu").split(":", 1)[0]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _unfinished(source: _Source) -> tuple[str | None, dict]:
    """(why `source` holds no finished run, or None; the files read)."""
    lock_text = source.read("dvc.lock")
    if lock_text is None:
        return "no dvc.lock (nothing was run)", {}
    try:
        lock = yaml.safe_load(lock_text) or {}
        stages = lock["stages"]
        train, evaluate = stages["train"], stages["evaluate"]
    except (yaml.YAMLError, KeyError, TypeError):
        return "its dvc.lock has no train and evaluate stages", {}
    files = {path: source.read(path) for path in ("metrics/metrics.json", "metrics/predictions.parquet")}
    if files["metrics/predictions.parquet"] is None:
        return ("no metrics/predictions.parquet (evaluated before per-sample predictions were kept: "
                "rerun `dvc repro evaluate` there)"), {}
    outs = _stage_files(evaluate, "outs")
    for path, data in files.items():
        if data is None or path not in outs or outs[path].get("md5") != _md5(data):
            return f"its {path} is not the one its dvc.lock records (run `dvc repro` there first)", {}
    model = _stage_files(train, "outs").get("models/model.safetensors")
    scored = _stage_files(evaluate, "deps").get("models/model.safetensors")
    if not model or not scored or model.get("md5") != scored.get("md5"):
        return "its evaluation did not score the model its training wrote (run `dvc repro` there first)", {}
    try:
        params = yaml.safe_load(source.read("params.yaml") or b"") or {}
    except yaml.YAMLError as error:
        return f"its params.yaml is not YAML ({str(error).splitlines()[0]})", {}
    changed = params_mismatch(lock, params)
    if changed:
        return f"{changed} (run `dvc repro` there first, or collect the experiment instead)", {}
    return None, {"lock": lock, "model": model, "params": params, **files}


def _curves(source: _Source) -> dict:
    curves = {}
    prefix = "dvclive/plots/metrics/"
    for path in source.listing(prefix.rstrip("/")):
        rows = [line.split("\t") for line in (source.read(path) or b"").decode().strip().splitlines()[1:]]
        try:
            curves[path[len(prefix):-len(".tsv")]] = [[int(step), float(value)] for step, value in rows]
        except ValueError:
            continue  # not a (step, value) series
    return curves


def _predictions(data: bytes) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    from trajvid.inference import PREDICTION_COLUMNS

    table = pq.read_table(io.BytesIO(data), use_threads=False)  # (a reader thread alive at exit aborts the process)
    missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"columns {missing} missing")
    columns = {c: table.column(c).to_numpy() for c in PREDICTION_COLUMNS}
    order = np.argsort(columns["sample_id"], kind="stable")
    return {c: v[order] for c, v in columns.items()}


_GFLOP_CACHE: dict[str, dict] = {}


def _gflop(params: dict) -> dict:
    from trajvid.tools.flops import architecture_gflop

    model = params["model"]
    data = params.get("data") or {}
    key = json.dumps([model, params["models"][model], params["head"], data.get("num_frames"), data.get("image_size")],
                     sort_keys=True)
    if key not in _GFLOP_CACHE:
        _GFLOP_CACHE[key] = architecture_gflop(model, params["models"][model], params["head"],
                                               frames=data.get("num_frames", 32), image_size=data.get("image_size", 64))
    return _GFLOP_CACHE[key]


def _threads(value) -> list[int] | None:
    """metrics.json's threads per epoch ("2" or "2,1"; a list in older files) as a list."""
    if value is None or value == "":
        return None
    return [int(t) for t in (value.split(",") if isinstance(value, str) else value)]


def record_of(root: Path, name: str, ref: str | None) -> tuple[Record | None, str | None]:
    """The record of the run at `ref` (None: the workspace), or (None, why it is not a finished run)."""
    source = _Source(root, ref)
    why, found = _unfinished(source)
    if why:
        return None, why
    params = found["params"]
    try:
        metrics = json.loads(found["metrics/metrics.json"])
        predictions = _predictions(found["metrics/predictions.parquet"])
    except (ValueError, OSError) as error:
        return None, f"unreadable metrics or predictions ({error})"
    baseline = None
    baseline_text = source.read("metrics/baseline.json")
    if baseline_text:
        try:
            baseline = json.loads(baseline_text)
        except ValueError:
            baseline = None
    data_fingerprint = (metrics.get("data") or {}).get("fingerprint")
    if not isinstance(data_fingerprint, str):
        return None, ("its metrics/metrics.json does not name the data it scored (evaluated before data fingerprints "
                      "were written: rerun `dvc repro evaluate` there)")
    if baseline and (baseline.get("data") or {}).get("fingerprint") != data_fingerprint:
        baseline = None  # scored other data (or does not say): never beside this run
    robustness = _robustness(source, found["lock"], found["model"]["md5"])
    train, model = metrics.get("train") or {}, metrics.get("model") or {}
    precision = train.get("mixed_precision") or (params.get("train") or {}).get("mixed_precision", "fp32")
    if ref is None:
        head = (git(root, "rev-parse", "HEAD") or "").strip()
        # whether the code or the pipeline differ from that commit (dvc.lock and the outputs always do)
        dirty = bool((git(root, "status", "--porcelain", "--", "src", "dvc.yaml") or "").strip())
        revision = {"commit": head or None, "code_dirty": dirty, "experiment": None}
    else:
        commit = (git(root, "rev-parse", f"{ref}^{{commit}}") or "").strip()
        is_experiment = ref.startswith("refs/exps/")
        revision = {"commit": commit, "code_dirty": False, "experiment": name if is_experiment else None,
                    "baseline_commit": (git(root, "rev-parse", f"{ref}^") or "").strip() if is_experiment else None}
    md5 = found["model"]["md5"]
    try:
        gflop = _gflop(params)
    except (KeyError, TypeError, ValueError) as error:
        return None, f"its params.yaml does not describe a model this code can build ({error!r})"
    record_name = f"{model.get('name', params.get('model'))}-{model.get('head', '?')}-{precision}-seed{train.get('seed')}-{md5[:8]}"
    run = {
        "format": FORMAT,
        "name": record_name,
        "source": name,
        "backbone": model.get("name", params.get("model")),
        "head": model.get("head"),
        "train_seed": train.get("seed"),
        "data_seed": train.get("data_seed", params.get("seed")),
        "data_fingerprint": data_fingerprint,
        "code_fingerprint": code_fingerprint(found["lock"]),
        "config_fingerprint": config_fingerprint(params),
        "git_revision": revision,
        "device": train.get("device"),
        "processes": train.get("processes"),
        "threads": _threads(train.get("threads")),
        "mixed_precision": precision,
        "train_time_s": train.get("time_s"),
        "samples_per_s": train.get("samples_per_s"),
        "epochs": train.get("epochs"),
        "params": params,
        "parameters": model.get("params"),
        "model": {"path": "models/model.safetensors", "md5": md5, "size_bytes": found["model"].get("size")},
        "gflop_per_sample": gflop,
        "scored_split": (metrics.get("data") or {}).get("split", "test"),
        "files": {},
    }
    return Record(record_name, run, metrics, _curves(source), predictions, baseline, robustness), None


def _robustness(source: _Source, lock: dict, model_md5: str) -> dict | None:
    """metrics/robustness.json where the run's dvc.lock vouches for it and it scored the run's model."""
    stage = (lock.get("stages") or {}).get("robustness")
    data = source.read("metrics/robustness.json")
    if not stage or data is None:
        return None
    written = _stage_files(stage, "outs").get("metrics/robustness.json") or {}
    scored = _stage_files(stage, "deps").get("models/model.safetensors") or {}
    if written.get("md5") != _md5(data) or scored.get("md5") != model_md5:
        return None  # stale: of another model, or not what its lock recorded
    try:
        return json.loads(data)
    except ValueError:
        return None


# -- writing and reading records -----------------------------------------------------------------


def _record_files(record: Record, predictions_bytes: bytes) -> dict[str, bytes]:
    files = {
        "metrics.json": (json.dumps(record.metrics, indent=2) + "\n").encode(),  # as the run wrote it
        "curves.json": (json.dumps(record.curves, indent=1, sort_keys=True) + "\n").encode(),
        "predictions.parquet": predictions_bytes,
    }
    if record.baseline is not None:
        files["baseline.json"] = (json.dumps(record.baseline, indent=2) + "\n").encode()
    if record.robustness is not None:
        files["robustness.json"] = (json.dumps(record.robustness, indent=2) + "\n").encode()
    record.run["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    files["run.json"] = (json.dumps(record.run, indent=2, sort_keys=True) + "\n").encode()
    return files


def write_record(record: Record, predictions_bytes: bytes, out: Path) -> str:
    """Write `record` as out/<name>/ (whole or not at all): "written"; "unchanged" when that record
    is there with the same figures (its provenance, where it was first collected from, is kept).
    A record of that name with other figures (the same model scored again by other code) is an
    error naming the file that differs: delete the folder to record the run anew."""
    files = _record_files(record, predictions_bytes)
    target = out / record.name
    if (target / "run.json").is_file():
        for name, data in files.items():
            if name == "run.json":
                continue
            path = target / name
            if not path.is_file() or path.read_bytes() != data:
                raise RecordError(f"run record {target} exists with another {name} than {record.run['source']}'s "
                                  "(the same model scored again: by other code, or on other shifted sets); delete "
                                  "the folder to record it anew")
        return "unchanged"
    with atomic_directory(target) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return "written"


def collect(root: Path | str = ".", revisions: list[str] | None = None, out: Path | str | None = None) -> list[tuple[str, str, str]]:
    """Record every finished run among `revisions` (default: every DVC experiment, and the
    workspace); returns (source, record name or "-", "written" / "unchanged" / why skipped)."""
    root = Path(root).resolve()
    out = root / RECORDS if out is None else Path(out)
    if revisions:
        sources = []
        for name in revisions:
            if name == "workspace":
                sources.append((name, None))
                continue
            ref = resolve(root, name)
            if ref is None:
                raise RecordError(f"revision {name!r} is neither a branch, tag, commit nor DVC experiment of {root}; "
                                  "see `dvc exp list --all-commits` (`dvc exp pull origin` fetches experiments)")
            sources.append((name, ref))
    else:
        # experiments first: a workspace holding an experiment's run is recorded under the experiment's name
        sources = [(n, r) for n, r in default_revisions(root) if r.startswith("refs/exps/")] + [("workspace", None)]
    found = []
    for name, ref in sources:
        record, why = record_of(root, name, ref)
        if record is None and revisions:
            raise RecordError(f"revision {name!r} holds no finished run: {why}")  # before anything is written
        found.append((name, ref, record, why))
    done, seen = [], set()
    for name, ref, record, why in found:
        if record is None:
            done.append((name, "-", f"skipped: {why}"))
            continue
        if record.name in seen:
            done.append((name, record.name, "unchanged (the same run as another revision)"))
            continue
        seen.add(record.name)
        data = _Source(root, ref).read("metrics/predictions.parquet")
        done.append((name, record.name, write_record(record, data, out)))
    return done


def load_record(folder: Path) -> Record:
    """The record in `folder`; RecordError naming it and its first missing or damaged file."""
    where = f"run record {folder}"
    try:
        run = json.loads((folder / "run.json").read_text())
    except FileNotFoundError:
        raise RecordError(f"{where}: run.json is missing (a half-written record? collect it again with "
                          "`trajvid collect`, or delete the folder)") from None
    except (ValueError, OSError) as error:
        raise RecordError(f"{where}: run.json is damaged ({error}); restore it with `git checkout -- {folder}`") from None
    missing = [k for k in RUN_KEYS if k not in run] if isinstance(run, dict) else list(RUN_KEYS)
    if missing:
        raise RecordError(f"{where}: run.json lacks {', '.join(missing)}; restore it with `git checkout -- {folder}`")
    if run["format"] != FORMAT:
        raise RecordError(f"{where}: record format {run['format']!r}, this trajvid reads format {FORMAT}")
    if run["name"] != folder.name:
        raise RecordError(f"{where}: its run.json names the record {run['name']!r}: a record's folder is its name")
    if not isinstance(run["files"], dict) or not isinstance(run["data_fingerprint"], str):
        raise RecordError(f"{where}: run.json's files or data_fingerprint is damaged; restore it with "
                          f"`git checkout -- {folder}`")
    contents = {}
    for name in (*FILES, *(n for n in OPTIONAL if n in run["files"])):
        path = folder / name
        if not path.is_file():
            raise RecordError(f"{where}: {name} is missing; restore it with `git checkout -- {folder}`")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != run["files"].get(name):
            raise RecordError(f"{where}: {name} is damaged (its SHA-256 is not the one run.json records); "
                              f"restore it with `git checkout -- {folder}`")
        contents[name] = data
    try:
        predictions = _predictions(contents["predictions.parquet"])
    except Exception as error:  # a parquet reader's many errors: a damaged file whose checksum was forged
        raise RecordError(f"{where}: predictions.parquet is unreadable ({error})") from None
    baseline = json.loads(contents["baseline.json"]) if "baseline.json" in contents else None
    robustness = json.loads(contents["robustness.json"]) if "robustness.json" in contents else None
    return Record(run["name"], run, json.loads(contents["metrics.json"]), json.loads(contents["curves.json"]),
                  predictions, baseline, robustness)


def load_records(root: Path | str = ".", records: Path | str | None = None) -> list[Record]:
    """Every record under results/runs/ (sorted by name); [] when there is none."""
    folder = Path(root) / RECORDS if records is None else Path(records)
    if not folder.is_dir():
        return []
    return [load_record(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


# -- runs made elsewhere: a bundle of scripts/device_grid.py -------------------------------------

BUNDLE_FILES = ("dvc.lock", "params.yaml", "models/config.json")  # of each cell, with the folders below
BUNDLE_FOLDERS = ("metrics/", "dvclive/")  # never data or models
BUNDLE_CODE = ("src", "dvc.yaml", "params.yaml", "pyproject.toml")  # the files the manifest must hash as the commit has them
BUNDLE_MAX_BYTES = 256 * 2**20  # a bundle of all 30 cells is a few MB


def _bundle_members(path: Path) -> tuple[dict, dict[str, dict[str, bytes]]]:
    """(manifest, {cell: {path: bytes}}) of a bundle, read as data (nothing extracted, nothing
    executed); RecordError naming the first member that is not a plain file of a cell's outputs."""
    import tarfile
    import zlib

    where = f"bundle {path}"
    try:
        tar = tarfile.open(path, mode="r:gz")
    except (OSError, tarfile.TarError) as error:
        raise RecordError(f"{where} is not a gzip'd tar file ({error})") from None
    manifest, cells, total = None, {}, 0
    with tar:
        try:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or any(p in ("", ".", "..") for p in parts):
                    raise RecordError(f"{where}: member {member.name!r} is not a plain file with a relative path")
                inner = "/".join(parts[2:])
                if member.name != "manifest.json" and not (
                        len(parts) >= 3 and parts[0] == "cells" and (inner in BUNDLE_FILES or inner.startswith(BUNDLE_FOLDERS))):
                    raise RecordError(f"{where}: member {member.name!r} is not a cell's dvc.lock, params.yaml, "
                                      "models/config.json, metrics or dvclive file")
                total += member.size
                if total > BUNDLE_MAX_BYTES:
                    raise RecordError(f"{where} holds more than {BUNDLE_MAX_BYTES // 2**20} MiB: not a bundle of run records")
                data = tar.extractfile(member).read()
                if member.name == "manifest.json":
                    try:
                        manifest = json.loads(data)
                    except ValueError:
                        raise RecordError(f"{where}: its manifest.json is not JSON") from None
                else:
                    cells.setdefault(parts[1], {})[inner] = data
        except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
            raise RecordError(f"{where} is damaged or truncated ({error})") from None
    states = manifest.get("cells") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != 1 or not isinstance(manifest.get("code"), dict)
            or not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values())):
        raise RecordError(f"{where}: no manifest.json of format 1 (written by scripts/device_grid.py)")
    for cell, files in cells.items():  # a folder and a file of one name cannot both be laid out
        clash = next((n for n in files if any("/".join(n.split("/")[:i]) in files for i in range(1, n.count("/") + 1))), None)
        if clash:
            raise RecordError(f"{where}: cell {cell}'s {clash} lies under one of its files")
    return manifest, cells


def _revision_code(root: Path, revision: str) -> dict[str, tuple[str, str]]:
    """{path: (SHA-256, MD5)} of the revision's BUNDLE_CODE files."""
    listing = git(root, "ls-tree", "-r", "-z", revision, "--", *BUNDLE_CODE) or ""
    entries = [line.split("\t", 1) for line in listing.split("\0") if line]
    blobs = [(meta.split()[2], name) for meta, name in entries if meta.split()[1] == "blob"]
    batch = subprocess.run(["git", "cat-file", "--batch"], cwd=root, input="".join(f"{b}\n" for b, _ in blobs).encode(),
                           capture_output=True, check=True).stdout
    out, at = {}, 0
    for blob, name in blobs:  # each: "<sha> blob <size>\n<content>\n"
        header_end = batch.index(b"\n", at)
        size = int(batch[at:header_end].split()[2])
        content = batch[header_end + 1:header_end + 1 + size]
        out[name] = (hashlib.sha256(content).hexdigest(), _md5(content))
        at = header_end + 1 + size + 1
    return {name: digests for name, digests in out.items() if "__pycache__" not in name}


def _lock_code_differs(lock_text: bytes, ours: dict[str, tuple[str, str]]) -> str | None:
    """The first code file a cell's dvc.lock ran (a file dep under src/) whose md5 is not the commit's."""
    try:
        lock = yaml.safe_load(lock_text) or {}
        stages = lock["stages"]
    except (yaml.YAMLError, KeyError, TypeError):
        return "dvc.lock"
    for stage in stages.values():
        for path, dep in _stage_files(stage or {}, "deps").items():
            if path.startswith("src/") and not str(dep.get("md5", "")).endswith(".dir"):
                if path not in ours or ours[path][1] != dep.get("md5"):
                    return path
    return None


def collect_bundle(root: Path | str, bundle: Path | str, out: Path | str | None = None) -> list[tuple[str, str, str]]:
    """Record every finished cell of a bundle of scripts/device_grid.py (runs made on another
    machine, with DVC there): the bundle's manifest must hash every code file as the commit it
    names has it, and each cell's dvc.lock must have run those files; each cell's files are laid
    into a clean checkout of that commit (the commit's own dvclive/ and metrics/ removed first)
    and recorded as a workspace there is (its dvc.lock vouches for its metrics, predictions and
    model). Nothing is written unless every finished cell is a run."""
    import shutil
    import tempfile

    root, bundle = Path(root).resolve(), Path(bundle)
    out = root / RECORDS if out is None else Path(out)
    manifest, cells = _bundle_members(bundle)
    revision = manifest.get("revision")
    commit = (git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}") or "").strip() if isinstance(revision, str) else ""
    if not commit:
        raise RecordError(f"bundle {bundle} ran revision {revision!r}, which is no commit of {root} (fetch it first)")
    theirs = {k: v for k, v in manifest["code"].items() if "__pycache__" not in k}
    ours = _revision_code(root, commit)
    differ = sorted(p for p in set(theirs) | set(ours) if theirs.get(p) != (ours.get(p) or (None,))[0])
    if differ:
        raise RecordError(f"bundle {bundle}: its code is not commit {commit[:12]}'s ({len(differ)} files differ, "
                          f"first {differ[0]}): its runs cannot be recorded as that commit's")
    finished = [c for c, state in sorted(manifest["cells"].items()) if state.get("state") == "finished"]
    for cell in finished:
        if "dvc.lock" not in cells.get(cell, {}) or "metrics/predictions.parquet" not in cells[cell]:
            raise RecordError(f"bundle {bundle}: cell {cell} is finished in its manifest but lacks its dvc.lock or "
                              "metrics/predictions.parquet")
        changed = _lock_code_differs(cells[cell]["dvc.lock"], ours)
        if changed:
            raise RecordError(f"bundle {bundle}: cell {cell}'s dvc.lock ran another {changed} than commit {commit[:12]}'s")
    git(root, "worktree", "prune")  # a checkout left by a collect that was killed
    found = []
    checkout = Path(tempfile.mkdtemp(prefix="trajvid-bundle-"))
    shutil.rmtree(checkout)
    if git(root, "worktree", "add", "--detach", "--quiet", str(checkout), commit) is None:
        raise RecordError(f"could not check out {commit[:12]} into {checkout} (`git worktree add`)")
    try:
        for cell in finished:
            git(checkout, "checkout", "--quiet", "--force", commit, "--", ".")
            git(checkout, "clean", "-fdxq")
            for name in (*BUNDLE_FILES, *BUNDLE_FOLDERS):  # the commit's own run: none of it is this cell's
                path = checkout / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            for name, data in cells[cell].items():
                target = checkout / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            source = f"{bundle.name}:{cell}"
            record, why = record_of(checkout, source, None)
            if record is None:
                raise RecordError(f"bundle {bundle}: cell {cell} holds no finished run: {why}")
            found.append((source, record, (checkout / "metrics" / "predictions.parquet").read_bytes()))
    finally:
        git(root, "worktree", "remove", "--force", str(checkout))
        shutil.rmtree(checkout, ignore_errors=True)
    done = [(source, record.name, write_record(record, data, out)) for source, record, data in found]
    for cell, state in sorted(manifest["cells"].items()):
        if cell not in finished:
            done.append((f"{bundle.name}:{cell}", "-", f"skipped: {state.get('state', 'no state')}"))
    return done
