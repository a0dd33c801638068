"""The dataset: the scene that is rendered (`scene.py`: cameras, motions, the sphere) and the
sharded files with their loader (`shards.py`).

`trajvid.data.open_split` is the name every generated dataset card gives its readers (the card is
part of the data, so its text stays byte-identical): it is looked up here on first use, so that
importing `trajvid.data.scene` does not load torch and the shard reader.
"""


def __getattr__(name: str):
    if name == "open_split":
        from trajvid.data.shards import open_split

        return open_split
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
