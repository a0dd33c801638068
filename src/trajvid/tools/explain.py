"""`trajvid explain`: where a trained model's decisions come from, per camera and frame.

For one sample of a split, three maps over the input video (camera, frame, height, width):
- class saliency: |d logit of the predicted class / d pixel|, summed over the colour channels;
- position saliency: sum over x, y, z of |d predicted next position / d pixel|;
- attention rollout (backbones with a token encoder: transformer, MagVIT): how much the pooled
  token draws on each space-time token through the residual attention of every block (Abnar &
  Zuidema 2020: each layer's head-averaged attention A becomes (A + I) / 2, rows renormalised, the
  layers multiplied). Cameras are fused into channels before tokenisation, so a token covers the
  same pixels of every camera and the rollout is one map shown on each camera's row.

Figures: the share of each map within 3 px of the sphere's projected centre (from the sample's
true positions and the dataset's cameras), next to the share of the image that area covers.

Writes <out>/<name>.png (per map, a grid of cameras × frames, frames dimmed under the map, the
projected centre marked in green), <name>.gif (the 32 frames, cameras side by side, a row per
map) and <name>.json (the figures), with the true and predicted class and position in the caption.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from trajvid.errors import TrajvidError
from trajvid.runtime.files import atomic_write, write_json, writing

NEAR_PX = 3.0  # "on the sphere": within this distance of its projected centre (its image is 1-2.5 px in radius)
CAPTION_PX = 30
LABEL_PX = 14
GIF_SCALE = 2


class ExplainError(TrajvidError):
    """A sample or split that does not exist."""


# -- the maps -------------------------------------------------------------------------------------


def saliency(model, video: torch.Tensor) -> dict:
    """Gradient maps of one video (V, T, 3, H, W) uint8: "class" and "position", each (V, T, H, W),
    and the model's outputs."""
    x = video.float()[None].requires_grad_(True)  # the pixels, as the model reads them
    logits, position = model(x)
    predicted = int(logits[0].argmax())
    (class_grad,) = torch.autograd.grad(logits[0, predicted], x, retain_graph=True)
    position_map = torch.zeros_like(x[0, :, :, 0])
    for k in range(3):
        (grad,) = torch.autograd.grad(position[0, k], x, retain_graph=k < 2)
        position_map += grad[0].abs().sum(2)
    return {
        "class": class_grad[0].abs().sum(2),
        "position": position_map,
        "probabilities": logits[0].detach().float().softmax(-1),
        "next_position": position[0].detach().float(),
    }


def _token_encoder(model):
    from trajvid.backbones.layers import TokenEncoder

    return next((m for m in model.backbone.modules() if isinstance(m, TokenEncoder)), None)


def attention_probabilities(module, x: torch.Tensor) -> torch.Tensor:
    """The attention probabilities (B, heads, N, N) of a `layers.SelfAttention` on its input x
    (B, N, D), recomputed from its weights as its forward's scaled dot product computes them."""
    B, N, D = x.shape
    q, k, _ = module.qkv(x).view(B, N, 3, module.heads, D // module.heads).permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-1, -2) * (D // module.heads) ** -0.5).softmax(-1)


def _with_residual(a: torch.Tensor) -> torch.Tensor:
    a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


@torch.no_grad()
def token_rollout(encoder, forward) -> torch.Tensor:
    """Attention rollout (T*S,) over the space-time tokens of a `layers.TokenEncoder`, from the
    attention its blocks apply while `forward()` runs one sample through it: what its pooled output
    (the CLS token, or the mean of the tokens) draws on, as a distribution over the tokens."""
    records = []
    hooks = []
    for block in encoder.blocks:
        for kind, module in (("time", block.attn_time), ("space" if block.divided else "joint", block.attn)):
            if module is not None:
                hooks.append(module.register_forward_hook(
                    lambda mod, args, _out, kind=kind: records.append((kind, attention_probabilities(mod, args[0]).mean(1).double()))))
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()
    T, S = encoder.grid
    n_cls = encoder.cls.shape[1]
    N = n_cls + T * S  # the CLS token (if any) first, then the tokens time-major
    rollout = torch.eye(N, dtype=torch.float64)
    for kind, a in records:
        full = torch.zeros(N, N, dtype=torch.float64)
        if kind == "joint":  # (1, N, N)
            full = a[0]
        elif kind == "time":  # (S, T, T): the tokens of one spatial patch over time; CLS untouched
            index = n_cls + torch.arange(T)[:, None] * S + torch.arange(S)[None, :]  # (T, S)
            for s in range(S):
                full[index[:, s][:, None], index[:, s][None, :]] = a[s]
            full[:n_cls, :n_cls] = torch.eye(n_cls, dtype=torch.float64)
        else:  # "space", (T, n_cls + S, n_cls + S): one sequence per time step; CLS averaged over them
            for t in range(T):
                cells = n_cls + t * S + torch.arange(S)
                full[cells[:, None], cells[None, :]] = a[t, n_cls:, n_cls:]
                if n_cls:
                    full[cells, 0] = a[t, n_cls:, 0]
                    full[0, cells] = a[t, 0, n_cls:] / T
                    full[0, 0] += a[t, 0, 0] / T
        rollout = _with_residual(full) @ rollout
    weights = rollout[0, n_cls:] if n_cls else rollout[:, n_cls:].mean(0)
    return weights / weights.sum()  # over the space-time tokens (the CLS token's share of itself left out)


def attention_rollout(model, video: torch.Tensor) -> torch.Tensor | None:
    """Rollout of the backbone's token encoder for one video, upsampled to (T, H, W); None for a
    backbone without a token encoder."""
    encoder = _token_encoder(model)
    if encoder is None:
        return None
    weights = token_rollout(encoder, lambda: model(video[None]))
    T, S = encoder.grid
    st, sh, sw = model.backbone.grid_stride
    frames, height, width = video.shape[1], video.shape[3], video.shape[4]
    grid = weights.view(T, height // sh, width // sw).float()
    return grid.repeat_interleave(st, 0).repeat_interleave(sh, 1).repeat_interleave(sw, 2)[:frames]


def share_near(maps: torch.Tensor, centres: torch.Tensor, radius: float = NEAR_PX) -> tuple[float, float]:
    """The share of maps (V, T, H, W) within `radius` px of centres (V, T, 2) (u, v in pixels, pixel
    (0, 0)'s centre at (0.5, 0.5)), and the share of the image that area covers (chance)."""
    V, T, H, W = maps.shape
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    du = u[None, None] - centres[..., 0, None, None]
    dv = v[None, None] - centres[..., 1, None, None]
    near = (du ** 2 + dv ** 2 <= radius ** 2).float()
    total = maps.sum()
    return float((maps * near).sum() / total) if total > 0 else float("nan"), float(near.mean())


# -- the images -----------------------------------------------------------------------------------


def _overlay(frames: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB frames (..., H, W, 3) uint8 dimmed under a heat map (..., H, W) in [0, 1] (inferno)."""
    from matplotlib import colormaps

    coloured = colormaps["inferno"](heat)[..., :3]
    return (0.4 * frames / 255.0 + 0.6 * coloured).clip(0, 1)


def _mark(images: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """A green pixel at each projected sphere centre: images (V, T, H, W, 3), centres (V, T, 2)."""
    images = images.copy()
    V, T, H, W, _ = images.shape
    for c in range(V):
        for t in range(T):
            col, row = int(centres[c, t, 0]), int(centres[c, t, 1])
            if 0 <= row < H and 0 <= col < W:
                images[c, t, row, col] = (0.0, 1.0, 0.0)
    return images


def _normalise(values: torch.Tensor) -> np.ndarray:
    """To [0, 1] by the 99.5th percentile of the whole video, so frames and cameras compare."""
    values = values.float()
    top = torch.quantile(values.flatten()[:: max(1, values.numel() // 1_000_000)], 0.995)
    return (values / top.clamp_min(1e-12)).clamp(0, 1).numpy()


def _text(image, xy, text: str) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(image).text(xy, text, fill=(255, 255, 255))


def render(video: torch.Tensor, maps: dict[str, torch.Tensor], centres: np.ndarray, caption: list[str]):
    """The PNG grid and the GIF frames (PIL images) of one sample."""
    from PIL import Image

    V, T, _, H, W = video.shape
    frames = video.permute(0, 1, 3, 4, 2).numpy()  # (V, T, H, W, 3)
    panels = {name: _mark(_overlay(frames, _normalise(m)), centres) for name, m in maps.items()}  # (V, T, H, W, 3)

    width = T * W
    height = CAPTION_PX + len(panels) * (LABEL_PX + V * H)
    grid = Image.new("RGB", (width, height))
    for i, line in enumerate(caption):
        _text(grid, (4, 2 + 13 * i), line)
    top = CAPTION_PX
    for name, panel in panels.items():
        _text(grid, (4, top + 1), f"{name} (rows: cameras 0-{V - 1}; columns: frames 0-{T - 1})")
        tiles = (panel.transpose(0, 2, 1, 3, 4).reshape(V * H, T * W, 3) * 255).round().astype(np.uint8)
        grid.paste(Image.fromarray(tiles), (0, top + LABEL_PX))
        top += LABEL_PX + V * H

    s = GIF_SCALE
    gif_frames = []
    rows = [("video", (frames / 255.0).astype(np.float64))] + list(panels.items())
    for t in range(T):
        image = Image.new("RGB", (V * W * s, CAPTION_PX + len(rows) * (LABEL_PX + H * s)))
        _text(image, (4, 2), caption[0][: 90])
        _text(image, (4, 15), f"frame {t}")
        top = CAPTION_PX
        for name, panel in rows:
            _text(image, (4, top + 1), name)
            strip = (panel[:, t].transpose(1, 0, 2, 3).reshape(H, V * W, 3) * 255).round().astype(np.uint8)
            image.paste(Image.fromarray(strip).resize((V * W * s, H * s), Image.NEAREST), (0, top + LABEL_PX))
            top += LABEL_PX + H * s
        gif_frames.append(image)
    return grid, gif_frames


# -- the command ----------------------------------------------------------------------------------


def trained_model(rev: str | None, model_dir: Path, repo: Path, data_dir: Path) -> tuple[torch.nn.Module, dict]:
    """The model to explain: the workspace's `model_dir`, or revision `rev`'s (which must have
    been trained on `data_dir` when that dataset is there; without it, `explain` stops at the
    dataset in one line of its own)."""
    from trajvid.data.shards import CHECKSUMS
    from trajvid.model_files import load_trained
    from trajvid.tools.revisions import check_trained_on, load_trained_at

    if rev is None:
        return load_trained(model_dir)
    member = load_trained_at(repo.resolve(), rev)
    if (Path(data_dir) / CHECKSUMS).is_file():
        check_trained_on(member, data_dir)
    return member.model, member.config


def explain(model, config: dict, data_dir: Path | str, split: str, indices: list[int], out: Path | str,
            label: str = "workspace") -> list[dict]:
    """Explain samples `indices` of `split`; returns one figures dict per sample (also written)."""
    from trajvid.contracts import use_data_cameras
    from trajvid.head.geometry import projection_matrices
    dataset, meta = open_for_explaining(config, data_dir, split, indices)
    out = Path(out)
    with writing("the explanations", out):
        out.mkdir(parents=True, exist_ok=True)
    projection = projection_matrices(meta["cameras"])  # the cameras that took these videos
    use_data_cameras(model, meta["cameras"])  # and the model triangulates with them too (contracts.py)
    return [explain_sample(model, config["backbone"], dataset[index], index, split, projection, out, label)
            for index in indices]


def open_for_explaining(config: dict, data_dir: Path | str, split: str, indices: list[int]):
    """The split and the dataset's metadata, once the split, the video shape and every index are
    known to fit (an ExplainError naming the value otherwise)."""
    from trajvid.contracts import check_meets
    from trajvid.data.shards import SPLITS, open_split, read_metadata

    if split not in SPLITS:
        raise ExplainError(f"--split {split!r} is not allowed: use one of {', '.join(SPLITS)}")
    dataset = open_split(data_dir, split)
    meta = read_metadata(data_dir)
    check_meets(config, meta, "the model", str(data_dir), complete=False)  # its size and classes
    for index in indices:
        if not 0 <= index < len(dataset):
            raise ExplainError(f"--sample {index} is not allowed: the {split} split has {len(dataset)} samples "
                               f"(0 to {len(dataset) - 1})")
    return dataset, meta


def explain_sample(model, backbone: str, sample: dict, index: int, split: str, projection: torch.Tensor, out: Path,
                   label: str) -> dict:
    """The maps of one sample, their shares near the sphere, the PNG, GIF and JSON files."""
    from trajvid.data.scene import CLASS_NAMES
    from trajvid.head.geometry import project

    started = time.perf_counter()
    video, positions = sample["video"], sample["positions"]
    grads = saliency(model, video)
    maps = {"class saliency": grads["class"], "position saliency": grads["position"]}
    rollout = attention_rollout(model, video)
    if rollout is not None:
        maps["attention rollout"] = rollout[None].expand(video.shape[0], -1, -1, -1)
    centres = project(positions[None, :-1].double(), projection)[0]  # (V, T, 2)
    shares, chance = {}, None
    for name, m in maps.items():
        shares[name], chance = share_near(m, centres)
    probabilities = grads["probabilities"]
    predicted = int(probabilities.argmax())
    result = {
        "backbone": backbone, "revision": label, "split": split, "index": index,
        "sample_id": int(sample["sample_id"]), "true_class": CLASS_NAMES[int(sample["label"])],
        "predicted_class": CLASS_NAMES[predicted], "probability": float(probabilities[predicted]),
        "true_next": positions[-1].tolist(), "predicted_next": grads["next_position"].tolist(),
        "share_within_px": NEAR_PX, "shares": shares, "chance_share": chance,
    }
    grid, gif_frames = render(video, maps, centres.numpy(), caption(result))
    name = f"{backbone}-{split}-{index:05d}" if label == "workspace" else f"{label}-{backbone}-{split}-{index:05d}"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    write_images(out, name, grid, gif_frames)
    result.update(seconds=time.perf_counter() - started, files=[str(out / f"{name}.png"), str(out / f"{name}.gif")])
    with writing("the explanation figures", out):
        write_json(out / f"{name}.json", result)
    return result


def caption(result: dict) -> list[str]:
    """Two lines under the images: the sample, the true and predicted class and next position."""
    def fmt(p):
        return "(" + ", ".join(f"{v:+.3f}" for v in p) + ")"

    return [
        f"{result['backbone']} [{result['revision']}] {result['split']} sample {result['index']} "
        f"(id {result['sample_id']}): true {result['true_class']}, predicted {result['predicted_class']} "
        f"(p={result['probability']:.2f})",
        f"next position: true {fmt(result['true_next'])}, predicted {fmt(result['predicted_next'])}; share within "
        f"{NEAR_PX:g} px of the sphere: " + ", ".join(f"{k} {v:.0%}" for k, v in result["shares"].items())
        + f" (area {result['chance_share']:.1%})",
    ]


def write_images(out: Path, name: str, grid, gif_frames: list) -> None:
    """out/<name>.png (the grid) and out/<name>.gif (the frames in turn), each whole or not at all."""
    def save_gif(tmp: Path) -> None:
        buffer = io.BytesIO()
        gif_frames[0].save(buffer, format="GIF", save_all=True, append_images=gif_frames[1:], duration=150, loop=0)
        tmp.write_bytes(buffer.getvalue())

    with writing("the explanation images", out):
        atomic_write(out / f"{name}.png", lambda tmp: grid.save(tmp, format="PNG"))
        atomic_write(out / f"{name}.gif", save_gif)
