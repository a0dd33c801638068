"""The backbones the study compares: the registry, name -> class, and the one check of a name.

Each backbone is one module of this package named after it (`trajvid/backbones/<name>.py`,
what dvc.yaml's `src/trajvid/backbones/${model}.py` dep relies on) holding a `FeatureExtractor`
subclass (`base.py`), plus one block `models.<name>` in params.yaml. Adding one is that file, one
line below and that block (docs/design.md, "Adding a backbone").

This module is names only: no torch, nothing imported until a backbone is built, so that
`params.py` checks `model:` without loading a network and a stage imports only the backbone it
runs.
"""

from __future__ import annotations

import importlib

from trajvid.errors import ParamsError

BACKBONES: dict[str, str] = {  # name -> class in trajvid/backbones/<name>.py
    "i3d": "I3D",
    "slowfast": "SlowFast",
    "transformer": "VideoTransformer",
    "magvit": "MagVit",
    "frame2d": "Frame2D",  # the control: a per-frame 2D CNN, no temporal mixing before the head
}


def check_name(name, key: str = "model") -> str:
    """`name` if it is a registered backbone; otherwise a ParamsError naming `key`, the value and
    the valid names. The one place a backbone name is checked (params, config.json, build)."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ParamsError(f"{key}: unknown backbone {name!r}; valid backbones are {', '.join(BACKBONES)}")
    return name


def module_name(name: str) -> str:
    return f"{__name__}.{check_name(name)}"


def backbone_class(name: str):
    """The backbone class registered as `name`, imported on first use."""
    return getattr(importlib.import_module(module_name(name)), BACKBONES[name])
