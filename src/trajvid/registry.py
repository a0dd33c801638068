"""Which backbones exist: name -> "module:Class".

Kept free of torch so that `params.py` can check `model:` without importing any network, and
lazy so that a stage imports only the backbone it runs (its `dvc.yaml` deps name exactly that
file: `src/trajvid/${model}.py`). Adding a backbone is one file, one line here and one block
under `models:` in params.yaml (docs/design.md, "Adding a backbone").
"""

BACKBONES: dict[str, str] = {
    "i3d": "trajvid.i3d:I3D",
    "slowfast": "trajvid.slowfast:SlowFast",
    "transformer": "trajvid.transformer:VideoTransformer",
    "magvit": "trajvid.magvit:MagVit",
}
