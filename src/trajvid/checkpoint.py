"""Training checkpoints in safetensors + JSON: nothing in them is ever unpickled.

A checkpoint is a directory `epoch-NNN/` holding
  model.safetensors      model weights and buffers
  optimizer.safetensors  the optimizer's tensors (AdamW moments and steps) and the RNG states
  state.json             epoch, configuration fingerprint, optimizer param groups, scheduler
                         state, the per-epoch history (so resumed logs equal uninterrupted ones)
It is written to a temporary directory and renamed into place (`files.atomic_directory`), so a
directory named `epoch-NNN` is always complete; a crash mid-write leaves only a dot-named
temporary directory, which is never read and is removed by the next run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trajvid.errors import TrajvidError, first_line
from trajvid.model_files import contiguous_state
from trajvid.runtime.files import atomic_directory, is_temporary, writing

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d{3,})$")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{param_id}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in meta["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save(directory: Path, epoch: int, model: torch.nn.Module, optimizer, scheduler, state: dict) -> Path:
    """Write checkpoint `directory/epoch-NNN` atomically; returns its path."""
    final = directory / f"epoch-{epoch:03d}"
    weights = contiguous_state(model)
    tensors, optimizer_meta = optimizer_tensors(optimizer)
    needed = sum(t.numel() * t.element_size() for t in (*weights.values(), *tensors.values()))
    with writing(f"checkpoint {final.name}", final, needed), atomic_directory(final) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file({**tensors, **rng_tensors()}, str(tmp / "optimizer.safetensors"))
        full_state = {**state, "epoch": epoch, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict()}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    return final


class CheckpointError(TrajvidError):
    """A checkpoint that cannot be restored (damaged or incomplete files)."""


def read_state(path: Path) -> dict | None:
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def candidates(directory: Path, fingerprint: str) -> list[Path]:
    """Complete checkpoints of the configuration `fingerprint`, newest first."""
    found = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if not match or not path.is_dir():
            continue
        state = read_state(path)
        if state is None or state.get("fingerprint") != fingerprint:
            continue
        if not all((path / f).is_file() for f in ("model.safetensors", "optimizer.safetensors")):
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def find_latest(directory: Path, fingerprint: str) -> Path | None:
    """The latest complete checkpoint of the configuration `fingerprint`, if any."""
    found = candidates(directory, fingerprint)
    return found[0] if found else None


def remove_foreign(directory: Path, fingerprint: str) -> list[str]:
    """Delete leftover temporaries and the checkpoints of another configuration or with an
    unreadable state; returns one message per removal."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if is_temporary(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"removed {path.name}: an unfinished checkpoint write")
            continue
        if not (CHECKPOINT_PATTERN.match(path.name) and path.is_dir()):
            continue
        state = read_state(path)
        if state is None:
            shutil.rmtree(path)
            removed.append(f"removed checkpoint {path.name}: its state.json is damaged")
        elif state.get("fingerprint") != fingerprint:
            shutil.rmtree(path)
            removed.append(f"removed checkpoint {path.name}: it belongs to another configuration")
    return removed


def load(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG from checkpoint `path`; returns its state.

    Both files are read and the model's tensors checked before anything is restored; a damaged
    checkpoint raises CheckpointError, possibly after a partial restore (the optimizer state is
    only checked as it loads), so the caller undoes it and falls back to an older checkpoint."""
    state = read_state(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
        expected = model.state_dict()
        if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in expected):
            raise ValueError("model.safetensors does not fit the model")
        if "rng.cpu" not in tensors or not {"optimizer", "scheduler", "history", "best", "epoch"} <= set(state):
            raise ValueError("incomplete checkpoint")
        model.load_state_dict(weights)
        load_optimizer(optimizer, tensors, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path} is damaged ({first_line(error)})") from None
    return state
