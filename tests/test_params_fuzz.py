"""Property: whatever value or type lands on any key of params.yaml, checking it ends in a valid
configuration or in a ParamsError naming that key, never in another exception."""

import copy
import math

import pytest
from conftest import STUDY_BACKBONES, default_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajvid.backbones.base import backbone_config
from trajvid.params import ParamsError, parse

DEFAULTS = default_params()


def key_paths(node, prefix=()):
    """Every key path of the params tree, mappings included."""
    for key, value in node.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from key_paths(value, (*prefix, key))


PATHS = sorted(key_paths(DEFAULTS))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from([*STUDY_BACKBONES, "fp32", "bf16", "joint", "divided", "cls", "mean", "yes", "no"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def check(raw: dict) -> None:
    """Everything a stage checks before it works: params.yaml and the selected backbone's block."""
    params = parse(raw)
    backbone_config(params.model, params.backbone_sizes)


def set_path(raw: dict, path: tuple, value) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# derandomize: CI runs the same examples every time (a failure is reproducible, never flaky)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(path=st.sampled_from(PATHS), value=values, select=st.sampled_from(STUDY_BACKBONES))
def test_any_value_on_any_key_is_a_valid_config_or_a_params_error_naming_the_key(path, value, select):
    raw = copy.deepcopy(DEFAULTS)
    if path[0] != "model":
        raw["model"] = select  # so that every backbone's block gets checked
    set_path(raw, path, value)
    try:
        check(raw)
    except ParamsError as error:
        message = str(error)
        names = [".".join(map(str, path[:i])) for i in range(1, len(path) + 1)]
        assert any(name in message for name in names), (path, value, message)
        assert "\n" not in message


@settings(max_examples=100, deadline=None, derandomize=True)
@given(path=st.sampled_from(PATHS),
       key=st.text(min_size=1, max_size=8), value=scalars)
def test_an_unknown_key_anywhere_is_named(path, key, value):
    raw = copy.deepcopy(DEFAULTS)
    if path[0] == "models" and len(path) > 1:
        # a backbone's block is checked when that backbone runs (train depends on models.${model} only)
        raw["model"] = path[1]
    node = raw
    for part in path:
        if not isinstance(node.get(part), dict):
            break
        node = node[part]
    if key in node:
        return
    node[key] = value
    try:
        check(raw)
    except ParamsError as error:
        assert "unknown" in str(error) or "is not allowed" in str(error), str(error)
    else:
        raise AssertionError(f"an unknown key {key!r} was accepted")


def test_non_finite_numbers_are_rejected():
    for value in (math.nan, math.inf, -math.inf):
        raw = copy.deepcopy(DEFAULTS)
        raw["train"]["weight_decay"] = value
        try:
            parse(raw)
        except ParamsError as error:
            assert "train.weight_decay" in str(error)
        else:
            raise AssertionError(f"weight_decay={value} was accepted")


def test_odd_key_names_stay_on_one_line():
    """Found by the property above: a key holding a newline split the error over two lines."""
    for path in ("data", "models", "train"):
        raw = copy.deepcopy(DEFAULTS)
        raw[path] = {"\n": None}
        try:
            check(raw)
        except ParamsError as error:
            assert "\n" not in str(error) and path in str(error), str(error)
        else:
            raise AssertionError("accepted")
    raw = copy.deepcopy(DEFAULTS)
    raw["a\nb"] = 1
    try:
        check(raw)
    except ParamsError as error:
        assert "\n" not in str(error)
    else:
        raise AssertionError("an unknown top-level key with a newline was accepted")


# -- every numeric key has a range, and exactly the values in it are accepted ----------------------

INT, FLOAT = int, float
RANGES = {  # path -> (type, the allowed values); what docs/data.md and params.yaml's comments promise
    ("seed",): (INT, lambda v: 0 <= v < 2**32),
    ("data", "num_samples"): (INT, lambda v: v > 0 and v % 4 == 0),
    ("data", "num_frames"): (INT, lambda v: v > 0),
    ("data", "image_size"): (INT, lambda v: v >= 32),
    ("data", "noise_std"): (FLOAT, lambda v: v >= 0),
    ("data", "pixel_noise_std"): (FLOAT, lambda v: 0 <= v <= 16),
    ("data", "speed"): (FLOAT, lambda v: 0 < v <= 1.5),
    ("data", "cameras", "azimuth_offset_deg"): (FLOAT, lambda v: True),
    ("data", "cameras", "distance"): (FLOAT, lambda v: v > 0),
    ("data", "cameras", "height"): (FLOAT, lambda v: True),
    ("data", "cameras", "fov_deg"): (FLOAT, lambda v: 0 < v < 180),
    ("robustness", "seed"): (INT, lambda v: 0 <= v < 2**32),
    ("robustness", "num_samples"): (INT, lambda v: v > 0 and v % 4 == 0),
    ("robustness", "shifts", "jitter", "noise_std"): (FLOAT, lambda v: v >= 0),
    ("robustness", "shifts", "sensor_noise_2", "pixel_noise_std"): (FLOAT, lambda v: 0 <= v <= 16),
    ("robustness", "shifts", "sensor_noise_8", "pixel_noise_std"): (FLOAT, lambda v: 0 <= v <= 16),
    ("robustness", "shifts", "moved_cameras", "cameras", "azimuth_offset_deg"): (FLOAT, lambda v: True),
    ("robustness", "shifts", "moved_cameras", "cameras", "distance"): (FLOAT, lambda v: v > 0),
    ("robustness", "shifts", "moved_cameras", "cameras", "height"): (FLOAT, lambda v: True),
    ("robustness", "shifts", "faster", "speed"): (FLOAT, lambda v: 0 < v <= 1.5),
    ("data", "shard_size"): (INT, lambda v: v > 0),
    ("data", "workers"): (INT, lambda v: v >= 0),
    ("head", "hidden"): (INT, lambda v: v > 0),
    ("head", "dropout"): (FLOAT, lambda v: 0 <= v < 1),
    ("train", "epochs"): (INT, lambda v: v > 0),
    ("train", "batch_size"): (INT, lambda v: v > 0),
    ("train", "learning_rate"): (FLOAT, lambda v: v > 0),
    ("train", "weight_decay"): (FLOAT, lambda v: v >= 0),
    ("train", "checkpoint_interval"): (INT, lambda v: v > 0),
    ("train", "patience"): (INT, lambda v: v > 0),
    ("train", "position_loss_weight"): (FLOAT, lambda v: v >= 0),
    ("train", "trajectory_loss_weight"): (FLOAT, lambda v: v >= 0),
    ("train", "keypoint_loss_weight"): (FLOAT, lambda v: v >= 0),
    ("train", "aux_loss_weight"): (FLOAT, lambda v: v >= 0),
    ("train", "warmup_epochs"): (FLOAT, lambda v: v >= 0),
    ("train", "grad_clip"): (FLOAT, lambda v: v >= 0),
    ("train", "num_workers"): (INT, lambda v: v >= 0),
    ("train", "threads"): (INT, lambda v: v >= 0),
    ("train", "seed"): (INT, lambda v: 0 <= v < 2**32),
}


def test_every_numeric_key_of_params_has_a_range():
    numeric = {path for path in PATHS if path[0] != "models" and "split" not in path
               and isinstance(get_path(DEFAULTS, path), (int, float)) and not isinstance(get_path(DEFAULTS, path), bool)}
    assert numeric == set(RANGES), sorted(numeric ^ set(RANGES))


def get_path(raw: dict, path: tuple):
    for key in path:
        raw = raw[key]
    return raw


def accepts(raw: dict) -> bool:
    try:
        check(raw)
    except ParamsError:
        return False
    return True


numbers = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.sampled_from([0, -1, 1, 4, 31, 32, 2**32 - 1, 2**32]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, -1e-9, 0.5, 0.999, 1.0]))


@settings(max_examples=600, deadline=None, derandomize=True)
@given(path=st.sampled_from(sorted(RANGES)), value=numbers)
def test_a_number_is_accepted_exactly_when_it_is_in_its_keys_range(path, value):
    """Out of range is a ParamsError naming the key, never accepted; in range is accepted."""
    kind, allowed = RANGES[path]
    raw = copy.deepcopy(DEFAULTS)
    set_path(raw, path, value)
    typed = isinstance(value, int) if kind is INT else math.isfinite(value)
    assert accepts(raw) == (typed and allowed(value)), (path, value)


@pytest.mark.parametrize("split, accepted", [
    ({"train": 0.8, "validation": 0.1, "test": 0.1}, True),
    ({"train": 0.7, "validation": 0.1, "test": 0.1}, False),  # sums to 0.9
    ({"train": 0.8, "validation": 0.2, "test": 0.1}, False),  # sums to 1.1
    ({"train": 1.0, "validation": 0.0, "test": 0.0}, False),  # an empty split
    ({"train": 1.2, "validation": -0.1, "test": -0.1}, False),  # sums to 1, negative parts
])
def test_splits_must_be_positive_and_sum_to_1(split, accepted):
    raw = copy.deepcopy(DEFAULTS)
    raw["data"]["split"] = split
    assert accepts(raw) == accepted


def backbone_sizes():
    """(backbone, key, default) of every numeric size in params.yaml's blocks."""
    for name, block in DEFAULTS["models"].items():
        for key, value in block.items():
            if isinstance(value, (int, float, list)) and not isinstance(value, bool) and key != "time_downsample":
                yield name, key, value


@pytest.mark.parametrize("name, key, default", list(backbone_sizes()))
def test_a_backbone_size_out_of_range_is_rejected(name, key, default):
    """Sizes must be positive (and lists of positive integers), dropout in [0, 1), loss weights
    and the diversity factor >= 0."""
    raw = copy.deepcopy(DEFAULTS)
    raw["model"] = name
    if key == "dropout":
        bad = [-0.1, 1.0]
    elif key.endswith("_weight") or key == "diversity_gamma":
        bad = [-0.5]
    elif isinstance(default, list):
        bad = [[0] * len(default), [-1] * len(default)]
    else:
        bad = [0, -1]
    assert accepts(raw)
    for value in bad:
        raw["models"][name][key] = value
        with pytest.raises(ParamsError, match=f"models.{name}.{key}"):
            check(raw)
