"""params.yaml, checked: every key known, every value of the right type and in range.

A mistyped key is the classic way a setting is "configured but never applied" (the predecessor's
weight decay), so unknown keys are errors, not ignored.

Each group lists the keys that only say *how* a stage runs, not *what* it computes (`RUNTIME`):
they stay out of the stage's params in dvc.yaml and out of the checkpoint fingerprint, so that
changing them never invalidates a result. The backbones' own blocks (`models.<name>`) are checked
by the backbone's config class when a model is built (`trajvid.backbones.base.backbone_config`); this
module only needs their names, and imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from trajvid.backbones import check_name
from trajvid.errors import ParamsError, first_line

__all__ = ["ParamsError", "Params", "DataParams", "TrainParams", "HeadParams", "SplitParams", "CameraRigParams", "RobustnessParams", "load", "parse",
           "from_dict"]


@dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    def check(self, path: str) -> None:
        for name in ("train", "validation", "test"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ParamsError(f"{path}.{name}={value} is not allowed: each split fraction must be in (0, 1)")
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ParamsError(
                f"{path}={{train: {self.train}, validation: {self.validation}, test: {self.test}}} sums to "
                f"{total:g}; the split fractions must sum to 1"
            )


@dataclass(frozen=True)
class CameraRigParams:
    """The four cameras: on a circle round the z axis, 90 degrees apart, looking at the origin."""

    azimuth_offset_deg: float = 0.0  # the first camera's azimuth (the others follow at +90, +180, +270)
    distance: float = 5.0  # horizontal distance of each camera from the z axis
    height: float = 2.0  # above the origin
    fov_deg: float = 60.0  # field of view, horizontal and vertical (square pixels, square images)

    def check(self, path: str) -> None:
        # whether the whole scene is then in view is the scene's to say (data/scene.py, `check_rig`)
        if not self.distance > 0:  # straight above the origin a camera's "right" is undefined
            raise ParamsError(f"{path}.distance={self.distance} is not allowed: must be > 0")
        if not 0 < self.fov_deg < 180:
            raise ParamsError(f"{path}.fov_deg={self.fov_deg} is not allowed: must be in (0, 180) degrees")


@dataclass(frozen=True)
class DataParams:
    num_samples: int = 10000
    num_frames: int = 32
    image_size: int = 64
    noise_std: float = 0.0  # Gaussian noise on the 3D positions (the target too), world units
    pixel_noise_std: float = 0.0  # sensor noise: Gaussian, in uint8 levels, on every stored pixel
    speed: float = 1.0  # scales how far each motion goes in its 33 frames (path length, sweep, climb)
    cameras: CameraRigParams = field(default_factory=CameraRigParams)
    split: SplitParams = field(default_factory=SplitParams)
    shard_size: int = 1000  # samples per Arrow file
    workers: int = 0  # rendering processes; 0 = one per available core

    RUNTIME: ClassVar[tuple[str, ...]] = ("workers",)  # the files are byte-identical whatever their value
    # Shifts of the scene (issue 19): a dataset card names them only where they differ from these
    # defaults, so that the default dataset stays byte-identical to the one made before they existed.
    SHIFTS: ClassVar[tuple[str, ...]] = ("pixel_noise_std", "speed", "cameras")

    def check(self, path: str) -> None:
        if self.num_samples <= 0 or self.num_samples % 4:
            raise ParamsError(
                f"{path}.num_samples={self.num_samples} is not allowed: must be a positive multiple of 4 "
                "(balanced classes)"
            )
        for name in ("num_frames", "image_size", "shard_size"):
            _positive(f"{path}.{name}", getattr(self, name))
        if self.image_size < 32:
            raise ParamsError(f"{path}.image_size={self.image_size} is not allowed: must be at least 32")
        if self.noise_std < 0:
            raise ParamsError(f"{path}.noise_std={self.noise_std} is not allowed: must be >= 0")
        if not 0 <= self.pixel_noise_std <= 16:  # beyond, noise clipped at 0 on the dark background is no longer Gaussian
            raise ParamsError(f"{path}.pixel_noise_std={self.pixel_noise_std} is not allowed: must be in [0, 16] "
                              "uint8 levels")
        if not 0 < self.speed <= 1.5:
            raise ParamsError(f"{path}.speed={self.speed} is not allowed: must be in (0, 1.5] (faster motions "
                              "rarely fit in the cube)")
        self.cameras.check(f"{path}.cameras")
        if self.workers < 0:
            raise ParamsError(f"{path}.workers={self.workers} is not allowed: must be >= 0 (0 = all cores)")
        self.split.check(f"{path}.split")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.001
    weight_decay: float = 0.0001
    checkpoint_interval: int = 2  # epochs
    early_stopping: bool = False
    patience: int = 3  # epochs without a better validation loss before early stopping
    position_loss_weight: float = 1.0  # loss = cross-entropy + weight * MSE(normalised next position) + ...
    trajectory_loss_weight: float = 1.0  # ... + weight * MSE(normalised positions of the 32 visible frames)
    keypoint_loss_weight: float = 1.0  # ... + weight * mean distance of the keypoints in pixels [keypoints head]
    aux_loss_weight: float = 1.0  # weight of a backbone's own auxiliary loss (MagVIT's quantiser)
    warmup_epochs: float = 0.5  # linear learning-rate warm-up, then cosine decay to zero
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    mixed_precision: str = "fp32"  # "fp32" or "bf16" (not Accelerate's "no": YAML reads a bare no as false)
    num_workers: int = 2  # DataLoader processes decoding videos
    threads: int = 0  # torch CPU threads; 0 = this process's share of the cores (runtime/devices.py)
    seed: int = 0  # initialisation, shuffling, dropout: the training's own; the data's is the top-level `seed`

    # How the run is carried out, not what it computes: not stage params, not in the fingerprint.
    RUNTIME: ClassVar[tuple[str, ...]] = ("checkpoint_interval", "num_workers", "threads")

    def check(self, path: str) -> None:
        for name in ("epochs", "batch_size", "checkpoint_interval", "patience"):
            _positive(f"{path}.{name}", getattr(self, name))
        if not self.learning_rate > 0:
            raise ParamsError(f"{path}.learning_rate={self.learning_rate} is not allowed: must be > 0")
        for name in ("weight_decay", "position_loss_weight", "trajectory_loss_weight", "keypoint_loss_weight",
                     "aux_loss_weight", "warmup_epochs", "grad_clip"):
            if getattr(self, name) < 0:
                raise ParamsError(f"{path}.{name}={getattr(self, name)} is not allowed: must be >= 0")
        if self.mixed_precision not in ("fp32", "bf16"):
            raise ParamsError(f"{path}.mixed_precision={self.mixed_precision!r} is not allowed: use 'fp32' or 'bf16'")
        for name in ("num_workers", "threads"):
            if getattr(self, name) < 0:
                raise ParamsError(f"{path}.{name}={getattr(self, name)} is not allowed: must be >= 0")
        check_seed(f"{path}.seed", self.seed)


@dataclass(frozen=True)
class HeadParams:
    """The multi-task head every backbone feeds (identical for all of them)."""

    type: str = "keypoints"  # "keypoints": the geometric readout of the backbone's grid; "pooled": from the pooled features
    hidden: int = 256  # width of the trunk on the pooled features (classifier; and positions for "pooled")
    dropout: float = 0.0  # dropout after the trunk

    TYPES: ClassVar[tuple[str, ...]] = ("keypoints", "pooled")

    def check(self, path: str) -> None:
        if self.type not in self.TYPES:
            raise ParamsError(f"{path}.type={self.type!r} is not allowed: use one of {', '.join(self.TYPES)}")
        _positive(f"{path}.hidden", self.hidden)
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"{path}.dropout={self.dropout} is not allowed: must be in [0, 1)")


@dataclass(frozen=True)
class RobustnessParams:
    """The shifted datasets a trained model (and the classical baseline) is scored on: each is the
    default dataset's data params with a few changed, drawn with a data seed of its own, so that
    none of its trajectories was seen in training (the `shift` and `robustness` stages)."""

    seed: int = 4242
    num_samples: int = 1000
    shifts: dict = field(default_factory=dict)  # name -> the data params it changes (checked: `shifted_data`)

    # What a shift may change: the scene, never what a model is built for (frames, size, classes).
    SHIFTABLE: ClassVar[tuple[str, ...]] = ("noise_std", "pixel_noise_std", "speed", "cameras")
    NAME: ClassVar[str] = r"[a-z][a-z0-9_]*"  # a directory name and a DVC param path: no dots

    def check(self, path: str) -> None:
        check_seed(f"{path}.seed", self.seed)
        if self.num_samples <= 0 or self.num_samples % 4:
            raise ParamsError(f"{path}.num_samples={self.num_samples} is not allowed: must be a positive multiple of 4")
        for name, changes in self.shifts.items():
            if not isinstance(name, str) or not re.fullmatch(self.NAME, name):
                raise ParamsError(f"{path}.shifts: the name {name!r} is not allowed: use lower-case letters, digits "
                                  "and underscores (it names a directory and a DVC param)")
            if changes is not None and not isinstance(changes, dict):
                raise ParamsError(f"{path}.shifts.{name}={changes!r} is not allowed: must map data params to values")
            unknown = sorted(map(str, set(changes or {}) - set(self.SHIFTABLE)))
            if unknown:
                raise ParamsError(f"{path}.shifts.{name}.{unknown[0]} is not allowed: a shift may change only "
                                  f"{', '.join(self.SHIFTABLE)}")


@dataclass(frozen=True)
class Params:
    seed: int = 42
    data: DataParams = field(default_factory=DataParams)
    model: str = "i3d"
    models: dict = field(default_factory=dict)  # backbone name -> its raw block (checked when built)
    head: HeadParams = field(default_factory=HeadParams)
    train: TrainParams = field(default_factory=TrainParams)
    robustness: RobustnessParams = field(default_factory=RobustnessParams)

    def shifted_data(self, name: str) -> tuple[int, DataParams]:
        """The data seed and data params of shift `name`: the default dataset's, with
        robustness.num_samples samples and the shift's changes (cameras merged key by key)."""
        if name not in self.robustness.shifts:
            raise ParamsError(f"unknown shift {name!r}; robustness.shifts has: {', '.join(self.robustness.shifts)}")
        changes = dict(self.robustness.shifts[name] or {})
        values = dataclasses.asdict(self.data)
        cameras = changes.pop("cameras", None)
        cameras = {} if cameras is None else cameras
        if not isinstance(cameras, dict):
            raise ParamsError(f"robustness.shifts.{name}.cameras={cameras!r} is not allowed: must map "
                              f"{', '.join(f.name for f in dataclasses.fields(CameraRigParams))} to values")
        values.update(changes, num_samples=self.robustness.num_samples, cameras={**values["cameras"], **cameras})
        return self.robustness.seed, from_dict(DataParams, values, f"robustness.shifts.{name}")

    @property
    def backbone_sizes(self) -> dict:
        """The selected backbone's block from params.yaml (its config class checks it)."""
        return dict(self.models.get(self.model) or {})


def check_seed(path: str, seed: int) -> int:
    if not 0 <= seed < 2**32:  # numpy's and Accelerate's set_seed take no other
        raise ParamsError(f"{path}={seed} is not allowed: must be in [0, 2**32)")
    return seed


def _positive(path: str, value: int) -> None:
    if value <= 0:
        raise ParamsError(f"{path}={value} is not allowed: must be a positive integer")


def check_positive(obj, path: str, *names: str) -> None:
    """Every named field of `obj` (a number or a list of them) must be > 0."""
    for name in names:
        value = getattr(obj, name)
        for v in value if isinstance(value, tuple) else (value,):
            if not v > 0:
                raise ParamsError(f"{path}.{name}={value!r} is not allowed: must be positive")


def check_choice(obj, path: str, name: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, name) not in choices:
        raise ParamsError(f"{path}.{name}={getattr(obj, name)!r} is not allowed: use one of {', '.join(choices)}")


def _coerce(path: str, value: Any, kind: Any) -> Any:
    """`value` as type `kind`; ints are accepted for floats (YAML writes 1 for 1.0)."""
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, path)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        for option in options:
            if option is type(None) and value is None:
                return None
        kind = next(o for o in options if o is not type(None))
        origin = typing.get_origin(kind)
    if origin is tuple:
        length = len(typing.get_args(kind))
        if (not isinstance(value, (list, tuple)) or len(value) != length
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ParamsError(f"{path}={value!r} is not allowed: must be a list of {length} integers")
        return tuple(value)
    if kind is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ParamsError(f"{path}={value!r} is not allowed: must be a mapping")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path}={value!r} is not allowed: must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{path}={value!r} is not allowed: must be an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamsError(f"{path}={value!r} is not allowed: must be a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ParamsError(f"{path}={value!r} is not allowed: must be a string")
        return value
    raise TypeError(f"unsupported parameter type {kind} at {path}")


def from_dict(cls, values: Any, path: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParamsError(f"{path}={values!r} is not allowed: must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(values) - set(fields)))
    if unknown:
        raise ParamsError(f"unknown key {path + '.' + unknown[0]!r}; allowed keys under '{path}': {', '.join(fields)}")
    kwargs = {name: _coerce(f"{path}.{name}", value, hints[name]) for name, value in values.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(path)
    return obj


def parse(raw: Any) -> Params:
    """Check a params mapping (as read from params.yaml) and return typed Params."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of keys to values")
    raw = dict(raw)
    top = {"seed", "data", "model", "models", "head", "train", "robustness"}
    unknown = sorted(map(str, set(raw) - top))
    if unknown:
        raise ParamsError(f"unknown key {unknown[0]!r} in params.yaml; allowed top-level keys: {', '.join(sorted(top))}")
    model = check_name(raw.get("model", "i3d"), "model")
    blocks = raw.get("models") or {}
    if not isinstance(blocks, dict):
        raise ParamsError(f"models={blocks!r} is not allowed: must map backbone names to their sizes")
    for name, block in blocks.items():
        check_name(name, "models")
        if block is not None and not isinstance(block, dict):
            raise ParamsError(f"models.{name}={block!r} is not allowed: must be a mapping of size keys to values")
    seed = check_seed("seed", _coerce("seed", raw.get("seed", 42), int))
    params = Params(
        seed=seed,
        data=from_dict(DataParams, raw.get("data"), "data"),
        model=model,
        models={name: dict(block or {}) for name, block in blocks.items()},
        head=from_dict(HeadParams, raw.get("head"), "head"),
        train=from_dict(TrainParams, raw.get("train"), "train"),
        robustness=from_dict(RobustnessParams, raw.get("robustness"), "robustness"),
    )
    if params.robustness.seed == params.seed:  # the shifted sets would hold the training's trajectories
        raise ParamsError(f"robustness.seed={params.robustness.seed} is not allowed: it is the data's seed, so the "
                          "shifted sets would hold the trajectories trained on; use another seed")
    for name in params.robustness.shifts:  # every shifted set's data params (whether its rig sees the
        params.shifted_data(name)  # whole cube is checked by `generate`, before it writes anything)
    return params


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the repository root or pass --params")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ParamsError(f"{path} is not valid YAML: {first_line(error)}") from None
    return parse(raw)
