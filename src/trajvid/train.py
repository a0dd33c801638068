"""The `train` stage: one backbone, the train split, Accelerate, DVCLive, resumable checkpoints.

Runs the same under `trajvid train`, `python -m trajvid train` and `accelerate launch -m trajvid
train` (CPU, one GPU or many). Determinism on CPU: the sampler's order is a function of
(seed, epoch), dropout draws from the torch RNG saved in every checkpoint, and a resumed run
replays the logged history, so a run killed at any point and resumed ends with the same
weights and metrics as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from trajvid import checkpoint
from trajvid.data import open_split, read_metadata
from trajvid.models import HeadConfig, MultiTaskModel, build_model, count_parameters, multitask_loss
from trajvid.params import Params

TRACKED_WITH_DVCLIVE = "dvclive"


class TrainingDiverged(RuntimeError):
    pass


def set_threads(threads: int) -> int:
    """Use `threads` torch CPU threads (0 = every core this process may run on); before any op."""
    if threads == 0:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def model_sizes(params: Params, data_meta: dict) -> dict:
    """The backbone's sizes from params, with the input size the data dictates where it has one."""
    sizes = dataclasses.asdict(params.backbone)
    _, frames, height, _, _ = data_meta["video_shape"]
    if "num_frames" in sizes:
        sizes["num_frames"] = frames
    if "image_size" in sizes:
        sizes["image_size"] = height
    return sizes


def fingerprint(params: Params, sizes: dict, data_dir: Path) -> str:
    """Identifies a training configuration: a checkpoint is only ever resumed by the same one."""
    train = dataclasses.asdict(params.train)
    for irrelevant in ("num_workers", "checkpoint_interval"):  # change nothing that is computed
        train.pop(irrelevant)
    shards = sorted((data_dir / "data").glob("*.arrow"))
    data = {
        "card": hashlib.sha256((data_dir / "README.md").read_bytes()).hexdigest(),
        "shards": [(p.name, p.stat().st_size) for p in shards],
    }
    blob = json.dumps(
        {"seed": params.seed, "model": params.model, "sizes": sizes, "head": dataclasses.asdict(HeadConfig()),
         "train": train, "data": data},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices and kernels, not on biases, norms, embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "position" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_split(model, loader, accelerator) -> dict:
    """Mean loss parts, accuracy and next-position RMSE (world units) over a whole split."""
    unwrapped: MultiTaskModel = accelerator.unwrap_model(model)
    model.eval()
    correct = count = 0
    squared_error = 0.0
    ce_sum = 0.0
    for batch in loader:
        logits, position_norm = model(batch["video"], normalised=True)
        target = batch["positions"][:, -1]
        logits, position_norm, labels, target = accelerator.gather_for_metrics(
            (logits.float(), position_norm.float(), batch["label"], target)
        )
        ce_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        squared_error += ((unwrapped.denormalise(position_norm) - target) ** 2).sum().item()
        count += len(labels)
    return {
        "loss": ce_sum / count,
        "accuracy": correct / count,
        "position_rmse": math.sqrt(squared_error / (3 * count)),
    }


def _position_stats(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    targets = torch.from_numpy(dataset.positions[:, -1].copy())
    return targets.mean(0), targets.std(0)


def train(params: Params, data_dir: str | Path = "data/trajectories", out_dir: str | Path = "models",
          live_dir: str | Path | None = "dvclive", progress: bool = True) -> dict:
    """Train `params.model`; writes out_dir/{model.safetensors, config.json, checkpoints/}."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    cfg = params.train
    threads = set_threads(cfg.threads)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_set = open_split(data_dir, "train")  # raises MissingDataError naming `dvc repro generate`
    val_set = open_split(data_dir, "validation")
    data_meta = read_metadata(data_dir)
    sizes = model_sizes(params, data_meta)
    config_id = fingerprint(params, sizes, data_dir)

    accelerator = Accelerator(
        mixed_precision="no" if cfg.mixed_precision == "fp32" else cfg.mixed_precision,
        log_with=TRACKED_WITH_DVCLIVE if live_dir else None,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=params.seed),
    )
    set_seed(params.seed)
    model = build_model(params.model, **sizes)
    model.set_position_stats(*_position_stats(train_set))
    # Workers are not persistent: each epoch's iterator then draws its worker seed from the torch
    # RNG at the same point of an uninterrupted and of a resumed run, keeping them identical.
    loader_args = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    train_loader = DataLoader(train_set, shuffle=True, **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, **loader_args)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * accelerator.num_processes))
    total_steps = cfg.epochs * steps_per_epoch
    # Accelerate steps a prepared scheduler once per process at every optimizer step.
    scheduler_steps = steps_per_epoch * accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.epochs * scheduler_steps, max(1, round(cfg.warmup_epochs * scheduler_steps)))
    )
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    unwrapped: MultiTaskModel = accelerator.unwrap_model(model)

    checkpoints = out_dir / "checkpoints"
    start_epoch, history, best = 0, [], {"val_loss": math.inf, "epoch": 0}
    if accelerator.is_main_process:
        for name in checkpoint.remove_foreign(checkpoints, config_id):
            accelerator.print(f"removed checkpoint {name}: it belongs to another configuration")
    accelerator.wait_for_everyone()
    latest = checkpoint.find_latest(checkpoints, config_id)
    if latest is not None:
        state = checkpoint.load(latest, unwrapped, optimizer, scheduler)
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        accelerator.print(f"resuming from {latest} (epoch {start_epoch} of {cfg.epochs})")

    if live_dir:
        accelerator.init_trackers(
            "trajvid",
            config={"model": params.model, **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()}},
            init_kwargs={"dvclive": {"dir": str(live_dir), "save_dvc_exp": False, "dvcyaml": None}},
        )
        for row in history:  # replay what the interrupted run had logged up to its checkpoint
            accelerator.log(row["metrics"], step=row["epoch"])

    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, unit="step", desc=f"train {params.model}",
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    stopped_early = False
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train()
        train_loader.set_epoch(epoch)
        epoch_start = time.perf_counter()
        sums = {"loss": 0.0, "correct": 0, "count": 0, "squared_error": 0.0}
        aux_sums: dict[str, float] = {}
        for step, batch in enumerate(train_loader, start=1):
            with accelerator.autocast():
                logits, position_norm = model(batch["video"], normalised=True)
            target = batch["positions"][:, -1]  # row 32: the next frame, never rendered
            loss, parts = multitask_loss(unwrapped, logits, position_norm, batch["label"], target,
                                         cfg.position_loss_weight, cfg.aux_loss_weight)
            if not torch.isfinite(loss):
                last = checkpoint.find_latest(checkpoints, config_id)
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch}, step {step}; stopped. "
                    f"Last good checkpoint: {last or 'none'}. Try a lower train.learning_rate."
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            n = len(target)
            sums["loss"] += loss.item() * n
            sums["correct"] += (logits.argmax(-1) == batch["label"]).sum().item()
            sums["squared_error"] += ((unwrapped.denormalise(position_norm.detach()) - target) ** 2).sum().item()
            sums["count"] += n
            for name, value in parts.items():
                if name.startswith("lfq_"):
                    aux_sums[name] = aux_sums.get(name, 0.0) + value.item() * n
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - epoch_start
        val = evaluate_split(model, val_loader, accelerator)
        count = sums["count"]
        metrics = {
            "train/loss": sums["loss"] / count,
            "train/accuracy": sums["correct"] / count,
            "train/position_rmse": math.sqrt(sums["squared_error"] / (3 * count)),
            **{f"train/{k}": v / count for k, v in aux_sums.items()},
            "val/loss": val["loss"],
            "val/accuracy": val["accuracy"],
            "val/position_rmse": val["position_rmse"],
            "lr": scheduler.get_last_lr()[0],
        }
        # Timing is measured, not computed: it is kept out of the logged metrics so that the
        # logs of a resumed run equal those of an uninterrupted one.
        history.append({"epoch": epoch, "metrics": metrics, "seconds": seconds, "samples": count * accelerator.num_processes})
        accelerator.log(metrics, step=epoch)
        accelerator.print(
            f"epoch {epoch}/{cfg.epochs}: loss {metrics['train/loss']:.4f} "
            f"val acc {val['accuracy']:.4f} val rmse {val['position_rmse']:.4f} ({seconds:.0f}s)"
        )
        val_loss = val["loss"] + cfg.position_loss_weight * (val["position_rmse"] ** 2)
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch}
        elif cfg.early_stopping and epoch - best["epoch"] >= cfg.patience:
            stopped_early = True
        if accelerator.is_main_process and (epoch % cfg.checkpoint_interval == 0 or epoch == cfg.epochs or stopped_early):
            checkpoint.save(checkpoints, epoch, unwrapped, optimizer, scheduler,
                            {"fingerprint": config_id, "history": history, "best": best})
        accelerator.wait_for_everyone()
        if stopped_early:
            accelerator.print(f"early stopping: no better validation loss since epoch {best['epoch']}")
            break
    bar.close()

    summary = {}
    if accelerator.is_main_process:
        weights = checkpoint.contiguous_state(unwrapped)
        time_s = sum(row["seconds"] for row in history)
        samples = sum(row["samples"] for row in history)
        summary = {
            "backbone": params.model,
            "sizes": sizes,
            "head": dataclasses.asdict(HeadConfig()),
            "input": {"video_shape_stored": data_meta["video_shape"], "class_names": data_meta["class_names"]},
            "train": dataclasses.asdict(cfg),
            "seed": params.seed,
            "fingerprint": config_id,
            "parameters": count_parameters(unwrapped),
            "training": {
                "epochs": len(history),
                "best_epoch": best["epoch"],
                "stopped_early": stopped_early,
                "time_s": time_s,
                "samples_per_s": samples / time_s if time_s else 0.0,
                "processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "threads": threads,
                "mixed_precision": cfg.mixed_precision,
            },
        }
        write_model(out_dir, weights, summary)
    accelerator.end_training()
    return summary


def write_model(out_dir: Path, weights: dict[str, torch.Tensor], config: dict) -> None:
    """model.safetensors and config.json, each written to a temporary name and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_weights = out_dir / ".model.safetensors.tmp"
    save_file(weights, str(tmp_weights), metadata={"format": "pt"})  # one key: safetensors orders several at random
    tmp_config = out_dir / ".config.json.tmp"
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp_weights, out_dir / "model.safetensors")
    os.replace(tmp_config, out_dir / "config.json")


def load_trained(model_dir: str | Path) -> tuple[MultiTaskModel, dict]:
    """Rebuild a trained model from model_dir/config.json and model_dir/model.safetensors."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} not found; run `dvc repro train` (or `dvc pull`) first")
    config = json.loads((model_dir / "config.json").read_text())
    model = build_model(config["backbone"], HeadConfig(**config["head"]), **config["sizes"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, config
