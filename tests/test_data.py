"""The stored dataset: fields, balance, stratified splits, determinism, HF datasets, loader."""

import hashlib
import os

import numpy as np
import pytest
import torch

from trajvid.data.shards import MissingDataError, open_split, read_metadata
from trajvid.generate import generate, stratified_split
from trajvid.params import DataParams, ParamsError, SplitParams

SPLITS = ("train", "validation", "test")


def file_hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_fields_shapes_and_dtypes(tiny_dataset):
    split = open_split(tiny_dataset, "train")
    sample = split[0]
    assert sample["video"].shape == (4, 32, 3, 64, 64) and sample["video"].dtype == torch.uint8
    assert sample["positions"].shape == (33, 3) and sample["positions"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and 0 <= sample["label"] < 4
    assert sample["sample_id"].dtype == torch.int64
    assert sample["label"] == sample["sample_id"] % 4
    assert split[-1]["sample_id"] == split[len(split) - 1]["sample_id"]
    with pytest.raises(IndexError):
        split[len(split)]


def test_splits_are_stratified_disjoint_and_cover_everything(tiny_dataset):
    ids = {}
    for name in SPLITS:
        split = open_split(tiny_dataset, name)
        counts = np.bincount(split.labels, minlength=4)
        assert len(set(counts)) == 1, f"{name} is not balanced: {counts}"
        ids[name] = set(split.sample_ids.tolist())
    assert {n: len(i) for n, i in ids.items()} == {"train": 160, "validation": 20, "test": 20}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert ids["train"] | ids["validation"] | ids["test"] == set(range(200))


def test_split_is_fixed_by_the_seed():
    data = DataParams(num_samples=400)
    a, b, c = stratified_split(1, data), stratified_split(1, data), stratified_split(2, data)
    assert all(np.array_equal(a[s], b[s]) for s in SPLITS)
    assert not np.array_equal(a["test"], c["test"])
    for s, fraction in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert np.array_equal(np.bincount(a[s] % 4), np.full(4, round(fraction * 100)))


def test_same_params_give_identical_files_whatever_the_workers(tmp_path, tiny_dataset):
    one = tmp_path / "one" / "trajectories"
    generate(7, DataParams(num_samples=200, shard_size=64, workers=1), one, progress=False)
    assert file_hashes(one) == file_hashes(tiny_dataset)  # tiny_dataset used 2 workers
    other = tmp_path / "other" / "trajectories"
    generate(8, DataParams(num_samples=200, shard_size=64, workers=2), other, progress=False)
    assert file_hashes(other) != file_hashes(tiny_dataset)


def test_sharded_compact_and_described(tiny_dataset):
    files = sorted(p.name for p in (tiny_dataset / "data").iterdir())
    assert files == [
        "test-00000-of-00001.arrow",
        "train-00000-of-00003.arrow",
        "train-00001-of-00003.arrow",
        "train-00002-of-00003.arrow",
        "validation-00000-of-00001.arrow",
    ]
    size = sum(p.stat().st_size for p in tiny_dataset.rglob("*") if p.is_file())
    assert size < 200 * 20_000  # raw frames are 1.5 MB a sample; compressed ~7 KB
    card = (tiny_dataset / "README.md").read_text()
    for needle in ("configs:", "linear", "circular", "helical", "parabolic", '"K"', "path_length", '"seed"'):
        assert needle in card or needle.strip('"') in card
    meta = read_metadata(tiny_dataset)
    assert meta["video_shape"] == [4, 32, 64, 64, 3]
    assert np.array(meta["cameras"]["K"]).shape == (4, 3, 3)


def test_huggingface_datasets_opens_it_and_agrees_with_the_loader(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets
    import pyarrow as pa

    ds = datasets.load_dataset(str(tiny_dataset), cache_dir=str(tmp_path / "hf"))
    assert set(ds) == set(SPLITS)
    assert ds["train"].features["label"].names == ["linear", "circular", "helical", "parabolic"]
    ours = open_split(tiny_dataset, "validation")
    for i in (0, 7, len(ours) - 1):
        row = ds["validation"][i]
        raw = pa.Codec("zstd").decompress(row["video"], decompressed_size=4 * 32 * 64 * 64 * 3)
        video = np.frombuffer(raw, np.uint8).reshape(4, 32, 64, 64, 3).transpose(0, 1, 4, 2, 3)
        sample = ours[i]
        assert row["sample_id"] == sample["sample_id"].item() and row["label"] == sample["label"].item()
        assert np.array_equal(video, sample["video"].numpy())
        assert np.array_equal(np.array(row["positions"], dtype=np.float32), sample["positions"].numpy())
    # the Arrow cache holds compressed bytes, not raw frames
    cached = sum(p.stat().st_size for p in (tmp_path / "hf").rglob("*.arrow"))
    assert cached < 2 * sum(p.stat().st_size for p in (tiny_dataset / "data").iterdir())


def test_loader_works_in_dataloader_workers(tiny_dataset):
    split = open_split(tiny_dataset, "test")
    loader = torch.utils.data.DataLoader(split, batch_size=8, num_workers=2)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(split)
    assert torch.equal(batches[0]["video"][3], split[3]["video"])


def test_missing_data_names_the_command(tmp_path):
    with pytest.raises(MissingDataError, match="dvc repro generate"):
        open_split(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="allowed: train, validation, test"):
        open_split(tmp_path, "dev")


@pytest.mark.parametrize(
    "data, message",
    [
        (DataParams(num_samples=10), "num_samples=10"),
        (DataParams(num_samples=0), "num_samples=0"),
        (DataParams(image_size=-64), "image_size=-64"),
        (DataParams(split=SplitParams(0.8, 0.1, 0.2)), "must sum to 1"),
        (DataParams(num_samples=8), "without a"),
    ],
)
def test_bad_data_params_fail_before_writing(tmp_path, data, message):
    out = tmp_path / "trajectories"
    with pytest.raises(ParamsError, match=message):
        generate(1, data, out, progress=False)
    assert os.listdir(tmp_path) == []
