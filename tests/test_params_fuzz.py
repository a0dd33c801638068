"""Property: whatever value or type lands on any key of params.yaml, checking it ends in a valid
configuration or in a ParamsError naming that key, never in another exception."""

import copy
import math

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
