"""The `train` stage: one backbone, the train split, Accelerate, DVCLive, resumable checkpoints.

Runs the same under `trajvid train`, `python -m trajvid train` and `accelerate launch -m trajvid
train` (CPU, one GPU or many). The loop reads top to bottom:

    run = setup(...)                       data, model, optimizer, schedule; resume if possible
    for each epoch:
        train_one_epoch(run, epoch)        one pass over the train split, returns its figures
        validate(run)                      the same figures on the validation split
        end_epoch(run, ...)                log, checkpoint, early stopping
    finish(run)                            write models/model.safetensors + config.json

Determinism on CPU: the sampler's order is a function of (train.seed, epoch), dropout draws from the
torch RNG saved in every checkpoint, and a resumed run replays the logged history, so a run
killed at any point and resumed ends with the same weights and metrics as one never interrupted,
given the same thread count (`train.threads`; with 0 the count follows the trainings sharing
the machine, see runtime/devices.py).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from trajvid import checkpoint
from trajvid.backbones import module_name
from trajvid.backbones.base import backbone_config, sizes_block
from trajvid.data.shards import dataset_fingerprint, open_split, read_card, read_metadata
from trajvid.errors import TrajvidError
from trajvid.head.multitask import (
    LossWeights,
    MultiTaskModel,
    Outputs,
    count_parameters,
    model_from_config,
    multitask_loss,
)
from trajvid.metrics import SplitMetrics
from trajvid.model_files import input_size_from_shape, write_model
from trajvid.params import Params, ParamsError, TrainParams
from trajvid.runtime.devices import set_threads
from trajvid.runtime.heartbeat import Heartbeat

TRACKED_WITH_DVCLIVE = "dvclive"


class TrainingDiverged(TrajvidError):
    exit_code = 1  # the run itself failed, not its input


# Imported by the training but not what it computes: the status heartbeat (docs/design.md,
# "Stage dependencies"); editing it must not make checkpoints foreign.
NOT_COMPUTATION = {"trajvid.runtime.heartbeat"}


def code_version(backbone: str) -> str:
    """A hash of the code the training runs (train.py, what it imports, the backbone's module:
    what dvc.yaml lists as the stage's deps): a checkpoint written by other code is never resumed,
    even with the same params. Found statically, so every process gets the same answer."""
    digest = hashlib.sha256()
    for name in sorted(imported_closure([__name__, module_name(backbone)]) - NOT_COMPUTATION):
        digest.update(name.encode() + b"\0" + Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def imported_closure(names: list[str]) -> set[str]:
    """`names` and every trajvid module they import, transitively (read from their source),
    with the packages they sit in (importing `trajvid.head.motion` runs `trajvid/head/__init__.py`)
    and the modules a `from package import name` names."""
    seen: set[str] = set()
    names = list(names)
    while names:
        name = names.pop()
        spec = None if name in seen or not name.startswith("trajvid.") else importlib.util.find_spec(name)
        if spec is None:
            continue
        seen.add(name)
        names.append(name.rpartition(".")[0])  # the package it sits in
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
                names += [f"{node.module}.{alias.name}" for alias in node.names if _is_module(f"{node.module}.{alias.name}")]
            elif isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
    return seen


def _is_module(name: str) -> bool:
    try:
        return name.startswith("trajvid.") and importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # `from trajvid.x import function`: x is a module, x.function is not
        return False


def fingerprint(params: Params, sizes: dict, data_dir: Path, processes: int = 1) -> str:
    """Identifies what a training computes: a checkpoint is only ever resumed by the same one."""
    train = {k: v for k, v in dataclasses.asdict(params.train).items() if k not in TrainParams.RUNTIME}
    blob = json.dumps(
        {"model": params.model, "sizes": sizes, "head": dataclasses.asdict(params.head),
         "train": train, "data": dataset_fingerprint(data_dir), "code": code_version(params.model),
         "processes": processes},  # the global batch and the schedule's length depend on it
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_lambda(total_steps: int, warmup_steps: int, calls_per_step: int = 1):
    """Linear warm-up to the full rate, then cosine decay to zero, over optimizer steps. The
    scheduler is called `calls_per_step` times per optimizer step (a scheduler prepared by
    Accelerate, without split_batches, is stepped num_processes times in each process at every
    optimizer step), so the rate of optimizer step s is the same whatever the number of processes
    (counting calls instead gave two processes half the first step's rate)."""
    def factor(calls: int) -> float:
        step = calls // calls_per_step
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class TrainingRun:
    """What one training run carries from epoch to epoch."""

    params: Params
    accelerator: object
    model: torch.nn.Module  # as prepared by Accelerate (DDP-wrapped with several processes)
    unwrapped: MultiTaskModel
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    val_loader: DataLoader  # this process's share of the validation split, not padded
    checkpoints: Path
    config_id: str
    config: dict  # what config.json records besides the training figures
    threads: int
    steps_per_epoch: int
    start_epoch: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_loss": math.inf, "epoch": 0})
    stopped_early: bool = False  # early stopping ended the run (a resumed run then trains no more)
    heartbeat: Heartbeat | None = None  # what `trajvid status` reads

    @property
    def cfg(self) -> TrainParams:
        return self.params.train

    def loss(self, out: Outputs, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        weights = LossWeights(cfg.position_loss_weight, cfg.trajectory_loss_weight, cfg.keypoint_loss_weight,
                              cfg.aux_loss_weight)
        return multitask_loss(self.unwrapped, out, batch["label"], batch["positions"], weights)


def setup(params: Params, data_dir: Path, out_dir: Path, live_dir: str | Path | None,
          status_dir: Path | None = None) -> TrainingRun:
    """Data, model, loaders, optimizer and schedule of a run, resumed from its latest checkpoint
    if there is one, with logging and the heartbeat started."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    cfg = params.train
    backbone = backbone_config(params.model, params.backbone_sizes)  # a bad models.<name> key fails before any work
    # the backbone's own training settings, where its params block sets them
    learning_rate = backbone.learning_rate or cfg.learning_rate
    warmup_epochs = cfg.warmup_epochs if backbone.warmup_epochs is None else backbone.warmup_epochs
    threads = set_threads(cfg.threads)
    train_set = open_split(data_dir, "train")  # raises MissingDataError naming `dvc repro generate`
    val_set = open_split(data_dir, "validation")
    data_meta = read_metadata(data_dir)

    accelerator = Accelerator(
        mixed_precision="no" if cfg.mixed_precision == "fp32" else cfg.mixed_precision,
        log_with=TRACKED_WITH_DVCLIVE if live_dir else None,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    set_seed(cfg.seed)  # the training's own seed: the data were drawn with `params.seed`
    model = model_from_config(params.model, backbone, params.head, input_size_from_shape(data_meta["video_shape"]),
                              data_meta["cameras"])
    targets = torch.from_numpy(train_set.positions[:, -1].copy())
    model.set_position_stats(targets.mean(0), targets.std(0))
    train_loader, val_loader = make_loaders(cfg, accelerator, train_set, val_set)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    optimizer = model.configure_optimizer(learning_rate, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.epochs, warmup_epochs, steps_per_epoch, accelerator.num_processes)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    sizes = sizes_block(backbone)
    config_id = fingerprint(params, sizes, data_dir, accelerator.num_processes)
    run = TrainingRun(
        params=params, accelerator=accelerator, model=model, unwrapped=accelerator.unwrap_model(model),
        optimizer=optimizer, scheduler=scheduler, train_loader=train_loader, val_loader=val_loader,
        checkpoints=out_dir / "checkpoints", config_id=config_id, threads=threads, steps_per_epoch=steps_per_epoch,
        config={
            "backbone": params.model,
            "sizes": sizes,
            "head": dataclasses.asdict(params.head),
            "input": {"video_shape_stored": data_meta["video_shape"], "class_names": data_meta["class_names"],
                      "cameras": data_meta["cameras"]},
            "train": {**dataclasses.asdict(cfg), "learning_rate": learning_rate, "warmup_epochs": warmup_epochs},
            "seed": cfg.seed,  # the training's (what `trajvid report` aggregates over)
            "data_seed": read_card(data_dir)[0],  # the seed the data was drawn with, as its card says
            "fingerprint": config_id,
        },
    )
    resume(run)
    start_logging(run, live_dir)
    run.heartbeat = Heartbeat(
        status_dir or ".", enabled=status_dir is not None and accelerator.is_main_process,
        info={"backbone": params.model, "seed": cfg.seed, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch,
              "device": str(accelerator.device), "processes": accelerator.num_processes},
        total_steps=cfg.epochs * steps_per_epoch, done_steps=run.start_epoch * steps_per_epoch,
    )
    return run


def make_loaders(cfg: TrainParams, accelerator, train_set, val_set) -> tuple[DataLoader, DataLoader]:
    """This process's train and validation loaders.

    train.batch_size is the batch of one optimizer step, whatever the number of processes: each
    process takes its share, so a run on 2 processes or GPUs optimises what a run on 1 does.
    Workers are not persistent: each epoch's iterator then draws its worker seed from the torch
    RNG at the same point of an uninterrupted and of a resumed run, keeping them identical.
    Validation is sharded by hand (no padding: every sample counted once) and run unwrapped.
    (When the train split is not a multiple of train.batch_size, Accelerate pads the last
    batches of a multi-process run with samples from the epoch's start: its last step then
    differs from one process's.)"""
    if cfg.batch_size % accelerator.num_processes:
        raise ParamsError(f"train.batch_size={cfg.batch_size} cannot be shared by {accelerator.num_processes} "
                          "processes; use a multiple of the number of processes")
    per_process = cfg.batch_size // accelerator.num_processes
    train_loader = DataLoader(train_set, batch_size=per_process, shuffle=True, num_workers=cfg.num_workers)
    shard = Subset(val_set, range(accelerator.process_index, len(val_set), accelerator.num_processes))
    return train_loader, DataLoader(shard, batch_size=per_process, num_workers=cfg.num_workers)


def make_scheduler(optimizer, epochs: int, warmup_epochs: float, steps_per_epoch: int, processes: int):
    """Linear warm-up, then cosine decay, in optimizer steps (`lr_lambda`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        epochs * steps_per_epoch, max(1, round(warmup_epochs * steps_per_epoch)), calls_per_step=processes))


def start_logging(run: TrainingRun, live_dir: str | Path | None) -> None:
    """DVCLive through Accelerate's tracker; a resumed run first replays what it had logged."""
    if not live_dir:
        return
    cfg = run.cfg
    run.accelerator.init_trackers(
        "trajvid",
        config={"model": run.params.model, **{f"train.{k}": v for k, v in dataclasses.asdict(cfg).items()}},
        init_kwargs={"dvclive": {"dir": str(live_dir), "save_dvc_exp": False, "dvcyaml": None}},
    )
    for row in run.history:  # replay what the interrupted run had logged up to its checkpoint
        run.accelerator.log(row["metrics"], step=row["epoch"])


def resume(run: TrainingRun) -> None:
    """Continue from the latest checkpoint of this configuration that restores whole, after
    removing foreign ones; a damaged checkpoint is skipped with a warning for the one before it."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        for message in checkpoint.remove_foreign(run.checkpoints, run.config_id):
            accelerator.print(message)
    accelerator.wait_for_everyone()
    fresh = copy.deepcopy((run.unwrapped.state_dict(), run.optimizer.state_dict(), run.scheduler.state_dict(),
                           torch.get_rng_state()))
    for path in checkpoint.candidates(run.checkpoints, run.config_id):
        try:
            state = checkpoint.load(path, run.unwrapped, run.optimizer, run.scheduler)
        except checkpoint.CheckpointError as error:
            accelerator.print(f"warning: skipping {error}")
            model_state, optimizer_state, scheduler_state, rng = copy.deepcopy(fresh)  # undo a partial restore
            run.unwrapped.load_state_dict(model_state)
            run.optimizer.load_state_dict(optimizer_state)
            run.scheduler.load_state_dict(scheduler_state)
            torch.set_rng_state(rng)
            continue
        run.start_epoch, run.history, run.best = state["epoch"], state["history"], state["best"]
        run.stopped_early = state.get("stopped_early", False)
        accelerator.print(f"resuming from {path} (epoch {run.start_epoch} of {run.cfg.epochs})")
        return


def train_one_epoch(run: TrainingRun, epoch: int, bar: tqdm) -> dict:
    """One pass over the train split; the figures of every process, summed."""
    accelerator, model = run.accelerator, run.model
    run.threads = set_threads(run.cfg.threads)  # this epoch's share of the cores (runtime/devices.py)
    model.train()
    run.train_loader.set_epoch(epoch)
    metrics = SplitMetrics()
    for step, batch in enumerate(run.train_loader, start=1):
        with accelerator.autocast():
            out = model(batch["video"], full=True)
        loss, parts = run.loss(out, batch)
        if not all_finite(accelerator, loss):  # decided together: a process stopping alone hangs the others
            last = checkpoint.find_latest(run.checkpoints, run.config_id)
            raise TrainingDiverged(
                f"loss is not finite at epoch {epoch}, step {step} (this process's loss: {loss.item()}); stopped. "
                f"Last good checkpoint: {last or 'none'}. Try a lower train.learning_rate."
            )
        run.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if run.cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), run.cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        metrics.add(out.logits, batch["label"], out.next_position, batch["positions"][:, -1], {"loss": loss, **parts})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        run.heartbeat.step(epoch, (epoch - 1) * run.steps_per_epoch + step)
    metrics.reduce_across(accelerator)
    return metrics.result()


def all_finite(accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite in every process (no communication with one process)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)


@torch.no_grad()
def validate(run: TrainingRun) -> dict:
    """The validation split in eval mode: the same loss and figures as training reports."""
    model, device = run.unwrapped, run.accelerator.device
    model.eval()
    metrics = SplitMetrics()
    for batch in run.val_loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with run.accelerator.autocast():
            out = model(batch["video"], full=True)
        loss, parts = run.loss(out, batch)
        metrics.add(out.logits, batch["label"], out.next_position, batch["positions"][:, -1], {"loss": loss, **parts})
    metrics.reduce_across(run.accelerator)
    return metrics.result()


def logged(prefix: str, result: dict) -> dict[str, float]:
    """What DVCLive records of a split: the loss and its parts, accuracy, next-position RMSE."""
    return {**{f"{prefix}/{k}": v for k, v in result["losses"].items()},
            f"{prefix}/accuracy": result["accuracy"], f"{prefix}/position_rmse": result["position_rmse"]}


def end_epoch(run: TrainingRun, epoch: int, train_result: dict, val_result: dict, seconds: float) -> bool:
    """Log the epoch, checkpoint it when due; returns whether early stopping ends the run."""
    accelerator, cfg = run.accelerator, run.cfg
    metrics = {**logged("train", train_result), **logged("val", val_result), "lr": run.scheduler.get_last_lr()[0]}
    # Timing is measured, not computed: it is kept out of the logged metrics so that the logs of
    # a resumed run equal those of an uninterrupted one.
    run.history.append({"epoch": epoch, "metrics": metrics, "seconds": seconds, "samples": train_result["samples"],
                        "threads": run.threads})
    accelerator.log(metrics, step=epoch)
    accelerator.print(
        f"epoch {epoch}/{cfg.epochs}: loss {metrics['train/loss']:.4f} val loss {metrics['val/loss']:.4f} "
        f"val acc {val_result['accuracy']:.4f} val rmse {val_result['position_rmse']:.4f} ({seconds:.0f}s)"
    )
    stop = False
    if metrics["val/loss"] < run.best["val_loss"]:
        run.best = {"val_loss": metrics["val/loss"], "epoch": epoch}
    elif cfg.early_stopping and epoch - run.best["epoch"] >= cfg.patience:
        stop = True
    if accelerator.is_main_process and (epoch % cfg.checkpoint_interval == 0 or epoch == cfg.epochs or stop):
        checkpoint.save(run.checkpoints, epoch, run.unwrapped, run.optimizer, run.scheduler,
                        {"fingerprint": run.config_id, "history": run.history, "best": run.best,
                         "stopped_early": stop})
    run.heartbeat.epoch_end(epoch, {"accuracy": val_result["accuracy"], "position_rmse": val_result["position_rmse"],
                                    "loss": metrics["val/loss"]})
    accelerator.wait_for_everyone()
    if stop:
        accelerator.print(f"early stopping: no better validation loss since epoch {run.best['epoch']}")
    return stop


def finish(run: TrainingRun, out_dir: Path, stopped_early: bool) -> dict:
    """Write the model files (main process) and return config.json's content."""
    accelerator = run.accelerator
    time_s = sum(row["seconds"] for row in run.history)
    samples = sum(row["samples"] for row in run.history)
    config = {
        **run.config,
        "parameters": count_parameters(run.unwrapped),
        "training": {
            "epochs": len(run.history),
            "best_epoch": run.best["epoch"],
            "stopped_early": stopped_early,
            "time_s": time_s,
            "samples_per_s": samples / time_s if time_s else 0.0,
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "threads": sorted({row.get("threads", run.threads) for row in run.history}),  # per epoch, see runtime/devices.py
            "mixed_precision": run.cfg.mixed_precision,
        },
    }
    if accelerator.is_main_process:
        write_model(out_dir, run.unwrapped, config)
    accelerator.end_training()
    return config


def train(params: Params, data_dir: str | Path = "data/trajectories", out_dir: str | Path = "models",
          live_dir: str | Path | None = "dvclive", progress: bool = True, status_dir: str | Path | None = None) -> dict:
    """Train `params.model`; writes out_dir/{model.safetensors, config.json, checkpoints/}, and
    status_dir/.trajvid/heartbeat.json for `trajvid status` when status_dir is given."""
    out_dir = Path(out_dir)
    run = setup(params, Path(data_dir), out_dir, live_dir, None if status_dir is None else Path(status_dir))
    try:
        config = run_epochs(run, out_dir, progress)
    except BaseException as error:
        run.heartbeat.end(error)
        raise
    run.heartbeat.end()
    return config


def run_epochs(run: TrainingRun, out_dir: Path, progress: bool) -> dict:
    """Train the remaining epochs, validating after each, then write the model files."""
    params, cfg = run.params, run.cfg
    bar = tqdm(total=cfg.epochs * run.steps_per_epoch, initial=run.start_epoch * run.steps_per_epoch, unit="step",
               desc=f"train {params.model}", disable=not (progress and run.accelerator.is_local_main_process),
               dynamic_ncols=True)
    for epoch in range(run.start_epoch + 1, cfg.epochs + 1):
        if run.stopped_early:
            break
        start = time.perf_counter()
        train_result = train_one_epoch(run, epoch, bar)
        seconds = time.perf_counter() - start
        run.stopped_early = end_epoch(run, epoch, train_result, validate(run), seconds)
    bar.close()
    return finish(run, out_dir, run.stopped_early)
