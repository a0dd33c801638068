"""Dataset I/O: sharded Arrow files of zstd-compressed uint8 videos, and the lazy loader `open_split`.

On disk, `data/trajectories/` holds `data/<split>-NNNNN-of-NNNNN.arrow` (Arrow IPC streams, the
format HuggingFace `datasets` itself caches in) and a dataset card `README.md` whose YAML header
maps the files to the splits, so `datasets.load_dataset("data/trajectories")` opens it offline.

Each row holds one sample; its `video` is the zstd frame of the uint8 array (camera, frame, height,
width, channel) -- channel-last, which compresses about twice as well as channel-first. The arrays
other code sees are channel-first, (camera, frame, channel, height, width), as docs/data.md fixes.

`open_split` memory-maps the shards and decompresses one video per access, so a process holds
only the compressed bytes it touches (shared, file-backed pages) plus the samples in flight.

Integrity at the door: `generate` writes `SHA256SUMS` (the format of `sha256sum -c`) beside the
card, and `open_split` checks the shards of its split against it before anything reads them
(~0.1 s for the 10,000-sample dataset), so an interrupted copy or a half-synced cache stops a
stage in one line naming the file and the remedy, not deep inside training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from trajvid.data.scene import CLASS_NAMES
from trajvid.errors import TrajvidError, first_line

CODEC = "zstd"
FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
ALL = "all"  # not a split: every sample of a dataset (open_split)
CHECKSUMS = "SHA256SUMS"  # beside the card: "<sha256>  data/<shard>.arrow" per line
RESTORE = "restore it with `dvc checkout --force data/trajectories` (or `dvc pull --force`), or regenerate it with `dvc repro generate`"


def shard_name(split: str, index: int, count: int) -> str:
    return f"data/{split}-{index:05d}-of-{count:05d}.arrow"


def arrow_schema(video_shape: tuple[int, ...], num_positions: int, cameras: dict) -> pa.Schema:
    """The shards' schema; its metadata carries the HuggingFace features and trajvid's own facts."""
    hf_features = {
        "sample_id": {"dtype": "int64", "_type": "Value"},
        "label": {"names": list(CLASS_NAMES), "_type": "ClassLabel"},
        "positions": {
            "feature": {"feature": {"dtype": "float32", "_type": "Value"}, "length": 3, "_type": "List"},
            "length": num_positions,
            "_type": "List",
        },
        "video": {"dtype": "binary", "_type": "Value"},
    }
    trajvid_meta = {
        "format_version": FORMAT_VERSION,
        "video_codec": CODEC,
        "video_dtype": "uint8",
        "video_shape": list(video_shape),
        "video_layout": ["camera", "frame", "height", "width", "channel"],
        "class_names": list(CLASS_NAMES),
        "cameras": cameras,
    }
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("label", pa.int64()),
            ("positions", pa.list_(pa.list_(pa.float32(), 3), num_positions)),
            ("video", pa.binary()),
        ],
        metadata={
            "huggingface": json.dumps({"info": {"features": hf_features}}),
            "trajvid": json.dumps(trajvid_meta),
        },
    )


def record_batch(schema: pa.Schema, sample_ids, labels, positions: np.ndarray, videos: list[bytes]) -> pa.RecordBatch:
    """One batch of rows; positions (n, P, 3) float32, videos already compressed."""
    n, num_positions, _ = positions.shape
    flat = pa.array(np.ascontiguousarray(positions, dtype=np.float32).reshape(-1))
    points = pa.FixedSizeListArray.from_arrays(flat, 3)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(sample_ids, dtype=np.int64)),
            pa.array(np.asarray(labels, dtype=np.int64)),
            pa.FixedSizeListArray.from_arrays(points, num_positions),
            pa.array(videos, type=pa.binary()),
        ],
        schema=schema,
    )


def compress_video(frames: np.ndarray, level: int = 3) -> bytes:
    """zstd frame of a contiguous uint8 array (any shape)."""
    return pa.Codec(CODEC, compression_level=level).compress(frames, asbytes=True)


class MissingDataError(TrajvidError, FileNotFoundError):
    pass


class DamagedDataError(TrajvidError):
    """A shard that does not match its checksum, or a sample that does not decode."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_lines(root: Path, names: list[str]) -> str:
    """SHA256SUMS content for the shards `names` (paths relative to `root`)."""
    return "".join(f"{sha256_file(root / name)}  {name}\n" for name in names)


def fingerprint_of_sums(sums: bytes) -> str:
    """A dataset's identity: the SHA-256 of its SHA256SUMS, which lists the SHA-256 of every shard."""
    return hashlib.sha256(sums).hexdigest()


def dataset_fingerprint(root: str | Path) -> str:
    """The identity of the dataset at `root` (`fingerprint_of_sums` of its SHA256SUMS): what a
    checkpoint, a model's record and an ensemble's same-data check compare."""
    listing = Path(root) / CHECKSUMS
    try:
        return fingerprint_of_sums(listing.read_bytes())
    except OSError:
        raise MissingDataError(f"{listing} not found, so which dataset this is cannot be told; {RESTORE}") from None


def verify_shards(root: Path, files: list[Path]) -> None:
    """Check `files` against root/SHA256SUMS; raise DamagedDataError naming the first bad one."""
    listing = root / CHECKSUMS
    try:
        expected = dict(reversed(line.split("  ", 1)) for line in listing.read_text().splitlines() if line)
    except (OSError, ValueError):
        raise DamagedDataError(f"{listing} is missing or unreadable, so the shards cannot be checked; {RESTORE}") from None
    for path in files:
        name = path.relative_to(root).as_posix()
        if name not in expected:
            raise DamagedDataError(f"{path} is not listed in {listing}: the dataset is incomplete or mixed; {RESTORE}")
        if sha256_file(path) != expected[name]:
            raise DamagedDataError(f"{path} is damaged (its SHA-256 does not match {CHECKSUMS}); {RESTORE}")


def _split_files(root: Path, split: str) -> list[Path]:
    if split == ALL:
        return [path for name in SPLITS for path in _split_files(root, name)]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}, {ALL}")
    files = sorted((root / "data").glob(f"{split}-*.arrow"))
    if not files:
        raise MissingDataError(
            f"no {split} shards under {root}/data; run `dvc repro generate` (or `dvc pull`) to create them"
        )
    return files


def card_params(data) -> dict:
    """The data params a dataset card states (`data`: a DataParams): everything that determines the
    files (`workers` does not), the scene's shifts only where they are not the default (the default
    card's text, and so the default dataset's bytes, are those of the code before the shifts existed)."""
    from dataclasses import asdict

    values = {k: v for k, v in asdict(data).items() if k not in type(data).RUNTIME}
    defaults = asdict(type(data)())
    return {k: v for k, v in values.items() if k not in type(data).SHIFTS or v != defaults[k]}


def read_card(root: str | Path) -> tuple[int | None, dict | None]:
    """The data seed and data params a dataset's card states ((None, None) where it does not say)."""
    try:
        text = (Path(root) / "README.md").read_text()
        seed = int(text.split("with seed", 1)[1].split()[0])
        return seed, json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    except (OSError, IndexError, ValueError):
        return None, None


def read_metadata(root: str | Path) -> dict:
    """trajvid's facts about a generated dataset (video shape, class names, cameras)."""
    first = _split_files(Path(root), "train")[0]
    with pa.memory_map(str(first)) as source:
        schema = pa.ipc.open_stream(source).schema
    return json.loads(schema.metadata[b"trajvid"])


class TrajectorySplit(torch.utils.data.Dataset):
    """One split, read lazily. `split[i]` -> dict of tensors:

    video      uint8 (camera, frame, channel, height, width)
    label      int64 ()
    positions  float32 (frames + 1, 3); the last row is the next frame, the regression target
    sample_id  int64 ()
    """

    def __init__(self, root: str | Path, split: str, verify: bool = True):
        self.root = Path(root)
        self.split = split
        self.files = _split_files(self.root, split)
        if verify:
            verify_shards(self.root, self.files)
        self._open()

    def _open(self) -> None:
        tables = []
        for path in self.files:
            try:
                with pa.memory_map(str(path)) as source:  # buffers stay valid after close: they map the file
                    tables.append(pa.ipc.open_stream(source).read_all())
            except (OSError, pa.ArrowException) as error:
                raise DamagedDataError(f"{path} cannot be read ({first_line(error)}); {RESTORE}") from None
        table = pa.concat_tables(tables)
        self._row_files = np.repeat(np.arange(len(tables)), [len(t) for t in tables])  # row -> shard
        meta = json.loads((table.schema.metadata or {}).get(b"trajvid", b"{}"))
        if meta.get("format_version") != FORMAT_VERSION or meta.get("video_codec") != CODEC:
            raise DamagedDataError(f"{self.root}: not a trajvid dataset of format {FORMAT_VERSION} (found "
                                   f"{meta.get('format_version')!r}); regenerate it with `dvc repro generate`")
        self.video_shape = tuple(meta["video_shape"])  # channel-last, as stored
        self.num_bytes = int(np.prod(self.video_shape))
        self.labels = table.column("label").to_numpy()
        self.sample_ids = table.column("sample_id").to_numpy()
        positions = table.column("positions").combine_chunks().flatten().flatten().to_numpy()
        self.positions = positions.reshape(len(table), -1, 3)
        # Zero-copy views of the binary column: (offsets, data) per chunk, and the row -> chunk map.
        self._chunks = []
        starts = []
        row = 0
        for chunk in table.column("video").chunks:
            _, offsets, data = chunk.buffers()
            offsets = np.frombuffer(offsets, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
            self._chunks.append((offsets, data))
            starts.append(row)
            row += len(chunk)
        self._chunk_starts = np.asarray(starts)
        self._codec = pa.Codec(CODEC)

    def __getstate__(self):  # workers reopen the memory maps instead of pickling the data
        return {"root": self.root, "split": self.split, "files": self.files}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.labels)

    def video_bytes(self, index: int) -> pa.Buffer:
        """The compressed video of row `index`, without copying it."""
        chunk = int(np.searchsorted(self._chunk_starts, index, side="right")) - 1
        offsets, data = self._chunks[chunk]
        local = index - self._chunk_starts[chunk]
        start, end = int(offsets[local]), int(offsets[local + 1])
        return data.slice(start, end - start)

    def video(self, index: int) -> np.ndarray:
        """uint8 (camera, frame, height, width, channel), as stored."""
        try:
            raw = self._codec.decompress(self.video_bytes(index), decompressed_size=self.num_bytes)
        except (OSError, pa.ArrowException) as error:
            shard = self.files[self._row_files[index]]
            raise DamagedDataError(
                f"sample {int(self.sample_ids[index])} of {shard} does not decode ({first_line(error)}); {RESTORE}"
            ) from None
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.video_shape)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.split} split of {len(self)} samples")
        index = index % len(self)
        video = torch.from_numpy(self.video(index)).permute(0, 1, 4, 2, 3)  # channel-first view
        return {
            "video": video,
            "label": torch.tensor(int(self.labels[index])),
            "positions": torch.from_numpy(self.positions[index].copy()),
            "sample_id": torch.tensor(int(self.sample_ids[index])),
        }


def open_split(root: str | Path, split: str, verify: bool = True) -> TrajectorySplit:
    """The split `split` of the dataset at `root`, decoded lazily on access (docs/data.md, "Python API");
    `split="all"`: every sample, train, validation and test in that order (a shifted set's samples
    are all unseen: `trajvid robustness`).

    With `verify` (the default) its shards are checked against the dataset's SHA256SUMS first."""
    return TrajectorySplit(root, split, verify)

