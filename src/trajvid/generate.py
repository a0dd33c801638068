"""The `generate` stage: render the dataset into sharded, compressed Arrow files plus a dataset card.

Work is cut into chunks of a few dozen samples rendered and compressed by a pool of processes;
the parent only writes the compressed bytes (~7 KB a sample) in order. Memory is therefore a
fixed frame buffer per worker, whatever `num_samples` is, and the output does not depend on the
number of workers because every sample is a pure function of (seed, sample_id).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import traceback
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from trajvid.data import scene
from trajvid.data.shards import (
    CHECKSUMS,
    SPLITS,
    arrow_schema,
    card_params,
    checksum_lines,
    compress_video,
    record_batch,
    shard_name,
)
from trajvid.params import DataParams, ParamsError
from trajvid.runtime.devices import available_cores
from trajvid.runtime.files import atomic_directory, writing

BYTES_PER_SAMPLE = 7_400  # measured at 4 x 32 x 64 x 64 (the default); for the disk-space estimate

CHUNK = 32  # samples rendered per task: 32 x 1.5 MB of frames per worker buffer
SPLIT_STREAM = 0x5EED5  # distinguishes the split's random stream from every sample's


def stratified_split(seed: int, data: DataParams, where: str = "data") -> dict[str, np.ndarray]:
    """Sample ids of each split: the same fractions of every class, shuffled by the seed, sorted."""
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    fractions = asdict(data.split)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    num_classes = len(scene.CLASS_NAMES)
    for label in range(num_classes):
        ids = rng.permutation(np.arange(label, data.num_samples, num_classes))
        n_train = round(fractions["train"] * len(ids))
        n_val = round(fractions["validation"] * len(ids))
        counts = {"train": n_train, "validation": n_val, "test": len(ids) - n_train - n_val}
        for name, count in counts.items():
            if count <= 0:
                raise ParamsError(
                    f"{where}.num_samples={data.num_samples} leaves the {name} split without a "
                    f"{scene.CLASS_NAMES[label]} sample; use more samples or a larger data.split.{name}"
                )
        parts["train"].append(ids[:n_train])
        parts["validation"].append(ids[n_train : n_train + n_val])
        parts["test"].append(ids[n_train + n_val :])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


# -- worker side --------------------------------------------------------------------------------

_renderer: scene.Renderer | None = None
_settings: tuple[int, DataParams] | None = None


def _init_worker(seed: int, data: DataParams) -> None:
    global _renderer, _settings
    _renderer = scene.Renderer(CHUNK, data.num_frames, data.image_size, data.cameras)
    _settings = (seed, data)


def _render_chunk(sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[bytes]]:
    seed, data = _settings
    labels, positions = zip(*(scene.sample_positions(seed, int(i), data.num_frames, data.noise_std, data.speed)
                              for i in sample_ids))
    positions = np.stack(positions)
    frames = _renderer.render(positions)
    if data.pixel_noise_std > 0:  # on a copy: the renderer's buffer must stay clean for `erase`
        videos = [compress_video(scene.add_pixel_noise(frames[i], seed, int(sample_id), data.pixel_noise_std))
                  for i, sample_id in enumerate(sample_ids)]
    else:
        videos = [compress_video(frames[i]) for i in range(len(sample_ids))]
    _renderer.erase()
    return sample_ids, np.asarray(labels), positions, videos


def _worker_main(conn, init_args: tuple, other_ends: list) -> None:
    """A worker process: render the chunks its pipe brings until it brings None or closes."""
    # Signals are the parent's business: it cleans up, then kills its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for end in other_ends:  # the parent's ends of all pipes, inherited by fork: close them, so that
        end.close()  # a parent that dies (even SIGKILLed) ends every worker through EOF
    _init_worker(*init_args)
    try:
        while (task := conn.recv()) is not None:
            try:
                result = ("ok", _render_chunk(task))
            except Exception:  # a bug: its traceback goes to the parent, which raises it
                result = ("error", traceback.format_exc())
            conn.send(result)
    except (EOFError, OSError):  # OSError: ConnectionResetError when it left unread results
        pass  # the parent is gone


# -- parent side --------------------------------------------------------------------------------


def generate(seed: int, data: DataParams, out: str | Path, progress: bool = True, where: str = "data") -> dict:
    """Write the dataset to `out` (replacing it only once complete). Returns a summary. `where`
    names the params in errors (`robustness.shifts.<name>` for a shifted set)."""
    data.check(where)
    scene.check_rig(data.image_size, data.cameras, f"{where}.cameras")
    out = Path(out)
    splits = stratified_split(seed, data, where)
    video_shape = (scene.NUM_CAMERAS, data.num_frames, data.image_size, data.image_size, 3)
    cameras = scene.cameras_metadata(data.image_size, data.cameras)
    schema = arrow_schema(video_shape, data.num_frames + 1, cameras)

    # Tasks in file order: split by split, shard by shard, chunk by chunk.
    tasks, shards = [], []
    for split, ids in splits.items():
        count = math.ceil(len(ids) / data.shard_size)
        for index in range(count):
            shard_ids = ids[index * data.shard_size : (index + 1) * data.shard_size]
            chunks = [shard_ids[i : i + CHUNK] for i in range(0, len(shard_ids), CHUNK)]
            shards.append((shard_name(split, index, count), len(chunks)))
            tasks.extend(chunks)

    needed = BYTES_PER_SAMPLE * data.num_samples * (data.num_frames / 32) * (data.image_size / 64) ** 2
    if data.pixel_noise_std > 0:  # noise does not compress: ~0.5 of the raw frames at 2 levels, ~0.65 at 8
        needed = data.num_samples * math.prod(video_shape)
    # `out` is replaced only once everything is written; a full disk or a signal leaves it as it was
    with writing("the dataset", out, needed), atomic_directory(out) as tmp:
        (tmp / "data").mkdir()
        workers = data.workers or available_cores()
        init_args = (seed, data)
        bar = tqdm(total=data.num_samples, unit="sample", desc="generate", disable=not progress)
        with _Workers(workers, init_args) as pool:
            results = pool.map(tasks)
            for name, num_chunks in shards:
                with pa.OSFile(str(tmp / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                    for _ in range(num_chunks):
                        sample_ids, labels, positions, videos = next(results)
                        writer.write_batch(record_batch(schema, sample_ids, labels, positions, videos))
                        bar.update(len(sample_ids))
        bar.close()
        summary = {
            "seed": seed,
            "data": card_params(data),
            "splits": {
                split: {scene.CLASS_NAMES[c]: int(np.sum(ids % len(scene.CLASS_NAMES) == c)) for c in range(4)}
                for split, ids in splits.items()
            },
            "files": [name for name, _ in shards],
        }
        (tmp / CHECKSUMS).write_text(checksum_lines(tmp, summary["files"]))
        (tmp / "README.md").write_text(dataset_card(summary, video_shape, cameras))
    return summary


class _Workers:
    """Worker processes, each with a pipe of its own; `map` gives results in task order.

    Not `multiprocessing.Pool`: stopping a Pool early (`terminate`) goes through queue locks that
    a worker writing a large result holds, and it can wait for ever; CI once hung that way on a
    full disk. Here the parent kills its workers on any error, so stopping early cannot wait. Each
    worker has at most AHEAD tasks queued and one result in its pipe: memory stays bounded however
    slowly the parent writes.
    """

    AHEAD = 2

    def __init__(self, count: int, init_args: tuple):
        self.count, self.init_args = count, init_args
        self.workers: list[tuple[multiprocessing.Process, object]] = []

    def __enter__(self) -> _Workers:
        if self.count == 1:
            _init_worker(*self.init_args)  # rendered in this process
            return self
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        parent_ends = []
        for _ in range(self.count):
            parent_end, worker_end = context.Pipe()
            parent_ends.append(parent_end)
            process = context.Process(target=_worker_main, args=(worker_end, self.init_args, list(parent_ends)),
                                      daemon=True, name="trajvid-generate")
            process.start()
            worker_end.close()
            self.workers.append((process, parent_end))
        return self

    def map(self, tasks: list) -> Iterator[tuple]:
        if not self.workers:
            yield from map(_render_chunk, tasks)
            return
        n = len(self.workers)
        for i in range(min(len(tasks), n * self.AHEAD)):  # task i goes to worker i % n
            self._talk(*self.workers[i % n], lambda conn: conn.send(tasks[i]))
        for i in range(len(tasks)):
            process, conn = self.workers[i % n]
            kind, value = self._talk(process, conn, lambda conn: conn.recv())
            if kind == "error":
                raise RuntimeError(f"generate worker {process.pid} failed:\n{value}")
            if i + n * self.AHEAD < len(tasks):
                self._talk(process, conn, lambda conn: conn.send(tasks[i + n * self.AHEAD]))
            yield value

    @staticmethod
    def _talk(process, conn, action):
        """Send or receive; a worker that died (killed, out of memory) is named, whichever way the
        pipe reports it (EOF, or a reset when tasks were still queued for it)."""
        try:
            return action(conn)
        except (EOFError, ConnectionResetError, BrokenPipeError):
            process.join(1)
            raise RuntimeError(f"generate worker {process.pid} died (exit code {process.exitcode})") from None

    def __exit__(self, *exc) -> None:
        for process, conn in self.workers:
            if exc[0] is None:
                conn.send(None)  # done: the worker leaves its loop and exits
            else:
                process.kill()  # stopped early: nothing to wait for
            conn.close()
        for process, _ in self.workers:
            process.join()


def dataset_card(summary: dict, video_shape: tuple, cameras: dict) -> str:
    """The dataset's README.md: a HuggingFace card (its YAML header maps the files to the splits)
    that documents what was generated. Part of the data: its text is byte-identical for the same
    params, so a change here changes every dataset's fingerprint."""
    return (_card_header(summary) + _card_fields(summary["data"], video_shape) + _card_splits(summary)
            + _card_scene(summary["data"], cameras) + _card_cameras(cameras))


def _card_header(summary: dict) -> str:
    data = summary["data"]
    return f"""---
pretty_name: trajvid synthetic multi-view trajectories
license: cc0-1.0
task_categories:
- video-classification
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.arrow
  - split: validation
    path: data/validation-*.arrow
  - split: test
    path: data/test-*.arrow
---

# trajvid trajectories

Synthetic videos of a sphere moving along a 3D trajectory, seen by four fixed cameras. Each sample
is one of four motion classes; the task is to name the class and to predict the 3D position of
the sphere in the next, unseen frame.

Made by `trajvid generate` (the `generate` stage of the trajvid DVC pipeline) with seed
{summary["seed"]} and these data parameters:

```json
{json.dumps(data, indent=2)}
```

The same parameters produce byte-identical files.

"""


def _card_fields(data: dict, video_shape: tuple) -> str:
    return f"""## Fields

| field | type | meaning |
|---|---|---|
| `sample_id` | int64 | stable id 0..N-1; the class is `sample_id % 4` |
| `label` | ClassLabel | 0 linear, 1 circular, 2 helical, 3 parabolic |
| `positions` | float32 ({data["num_frames"] + 1}, 3) | world position of the sphere's centre in frames 0..{data["num_frames"]}; the last row is the next frame, never rendered: the regression target |
| `video` | bytes | a zstd frame of the uint8 array of shape {tuple(video_shape)} = (camera, frame, height, width, channel) |

Decode a video with pyarrow (or any zstd library):

```python
import numpy as np, pyarrow as pa
raw = pa.Codec("zstd").decompress(row["video"], decompressed_size={int(np.prod(video_shape))})
video = np.frombuffer(raw, np.uint8).reshape{tuple(video_shape)}
```

or use `trajvid.data.open_split("data/trajectories", "train")`, which returns channel-first
tensors (camera, frame, channel, height, width) decoded lazily.

"""


def _card_splits(summary: dict) -> str:
    split_rows = "\n".join(
        f"| {split} | " + " | ".join(str(n) for n in counts.values()) + f" | {sum(counts.values())} |"
        for split, counts in summary["splits"].items()
    )
    files = "\n".join(f"- `{f}`" for f in summary["files"])
    return f"""## Splits

Stratified by class (the same fractions of every class), fixed by the seed.

| split | {" | ".join(scene.CLASS_NAMES)} | total |
|---|---|---|---|---|---|
{split_rows}

Files (their SHA-256 sums are in `SHA256SUMS`; check them with `sha256sum -c SHA256SUMS`):

{files}

"""


def _card_scene(data: dict, cameras: dict) -> str:
    range_rows = "\n".join(
        f"| {name} | " + ", ".join(f"{k}: {_fmt_range(v)}" for k, v in ranges.items()) + " |"
        for name, ranges in scene.RANGES.items()
    )
    rig = {**asdict(scene.DEFAULT_RIG), **data.get("cameras", {})}
    azimuths = [f"{a:g}" for a in cameras["azimuth_deg"]]
    shifts = ""
    if data.get("speed", 1.0) != 1.0:
        shifts += (f"\nEvery motion goes {data['speed']:g} times as far in its frames as in the default dataset "
                   "(path length, sweep, climb and horizontal length multiplied; a draw that leaves the cube is "
                   "drawn again).\n")
    if data.get("pixel_noise_std", 0.0) > 0:
        shifts += (f"\nSensor noise: Gaussian of standard deviation {data['pixel_noise_std']:g} uint8 levels added to "
                   "every stored pixel (rounded, clipped to 0..255).\n")
    return f"""## The scene

World units, z up. Every position lies in the cube [-1.5, 1.5]^3. A sphere of radius
{scene.SPHERE_RADIUS} (one colour for all classes), perspective-projected, anti-aliased, with headlight
shading, on a dark static background. Four pinhole cameras on a circle of radius
{rig["distance"]:g} at height {rig["height"]:g}, at azimuths {", ".join(azimuths[:-1])} and {azimuths[-1]} degrees, looking at the
origin, {rig["fov_deg"]:g} degree field of view, OpenCV convention.
{shifts}
## Motions (constant parameter speed over frames 0..{data["num_frames"]})

Parameter ranges actually sampled (SPEC ranges, adjusted to keep every point in the cube):

| class | ranges |
|---|---|
{range_rows}

- linear: straight line, uniformly random direction, start drawn so the whole path is in the cube.
- circular: horizontal arc, centre offset from the z axis by at most the given distance, random
  phase and direction, constant height.
- helical: the circular motion plus a steady climb or descent (climb is the total height change).
- parabolic: a parabola in a vertical plane of random horizontal heading; height = curvature x
  (distance from the vertex)^2, opening up or down; the vertex lies at the given fraction of the
  horizontal path.

Optional Gaussian position noise of standard deviation `noise_std` is added to every position
(then clipped to the cube).

"""


def _card_cameras(cameras: dict) -> str:
    return f"""## Cameras

```json
{json.dumps(cameras, indent=1)}
```
"""


def _fmt_range(bounds: tuple[float, float]) -> str:
    low, high = bounds
    if math.isclose(high, 2 * math.pi):
        return "1.5π–2π rad"
    return f"{low:g}–{high:g}"
