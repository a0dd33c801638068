"""Run records and the report's statistics, on records written by hand (the records of real DVC
experiments, shared through a git and an S3 remote, are in test_experiments.py)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import STUDY_BACKBONES, default_params, run, write_params

from trajvid.data.scene import CLASS_NAMES
from trajvid.inference import PREDICTION_COLUMNS
from trajvid.tools import stats
from trajvid.tools.ensemble import ensemble_of_records
from trajvid.tools.records import RUN_KEYS, Record, RecordError, config_fingerprint, load_records, write_record
from trajvid.tools.report import CHARTS, chart_styles, differences, report, sections
from trajvid.tools.study import _chain

N = 60  # test samples


def predictions(rng, skill: float) -> dict[str, np.ndarray]:
    """N samples in a shuffled order; the model's error shrinks with `skill`."""
    ids = rng.permutation(N) * 5 + 3  # every class (ids % 4), in shuffled order
    labels = ids % 4
    logits = rng.normal(size=(N, 4)) + skill * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    target = rng.uniform(-1, 1, (N, 3))
    table = {"sample_id": ids.astype(np.int64), "label": labels.astype(np.int8)}
    table.update({f"prob_{c}": probabilities[:, i].astype(np.float32) for i, c in enumerate(CLASS_NAMES)})
    for prefix, values in (("next", target + rng.normal(0, 0.05 / skill, (N, 3))), ("target", target),
                           ("last", target + rng.normal(0, 0.07, (N, 3)))):
        table.update({f"{prefix}_{c}": values[:, i].astype(np.float32) for i, c in enumerate("xyz")})
    return table


def parquet(table: dict) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({c: table[c] for c in PREDICTION_COLUMNS}), buffer)
    return buffer.getvalue()


def make_record(backbone: str, seed: int, skill: float, data: str = "d" * 64, code: str = "c" * 16) -> tuple[Record, bytes]:
    params = default_params()
    params["model"], params["train"]["seed"] = backbone, seed
    table = predictions(np.random.default_rng([seed, len(backbone), int(skill * 10)]), skill)
    name = f"{backbone}-keypoints-fp32-seed{seed}-{data[:4]}{seed:04d}"
    run_json = {key: None for key in RUN_KEYS}
    run_json.update({
        "format": 1, "name": name, "source": f"exp-{backbone}-{seed}", "backbone": backbone, "head": "keypoints",
        "train_seed": seed, "data_seed": 42, "data_fingerprint": data, "code_fingerprint": code,
        "config_fingerprint": f"{backbone:x<16}"[:16], "git_revision": {"commit": "0" * 40, "code_dirty": False},
        "device": "cpu", "processes": 1, "threads": [2], "mixed_precision": "fp32", "train_time_s": 60.0 * (seed + 1),
        "samples_per_s": 40.0, "epochs": 10, "params": params, "parameters": 1000, "scored_split": "test",
        "model": {"path": "models/model.safetensors", "md5": "f" * 32, "size_bytes": 4000},
        "gflop_per_sample": {"forward": 0.5 * len(backbone), "train_step": 1.5 * len(backbone)}, "files": {},
    })
    metrics = {"model": {"name": backbone}, "test": {}, "data": {"fingerprint": data, "split": "test"}}
    order = np.argsort(table["sample_id"])
    return Record(name, run_json, metrics, {"val/accuracy": [[1, 0.5], [2, 0.9]]},
                  {c: v[order] for c, v in table.items()}), parquet(table)


GRID = {("i3d", 0): 3.0, ("i3d", 1): 2.5, ("i3d", 2): 3.5, ("magvit", 0): 1.5, ("magvit", 1): 1.8}


@pytest.fixture
def records(tmp_path):
    out = tmp_path / "results" / "runs"
    for (backbone, seed), skill in GRID.items():
        record, data = make_record(backbone, seed, skill)
        assert write_record(record, data, out) == "written"
        assert write_record(record, data, out) == "unchanged"  # collecting again rewrites nothing
    return tmp_path


def direct_figures(tables: list[dict]) -> dict[str, float]:
    """The figures of one configuration, computed here: the mean over seeds of each seed's figure."""
    per_seed = []
    for t in tables:
        probabilities = np.stack([t[f"prob_{c}"] for c in CLASS_NAMES], 1)
        error = np.stack([t[f"next_{c}"].astype(np.float64) - t[f"target_{c}"] for c in "xyz"], 1)
        per_seed.append({"accuracy": np.mean(probabilities.argmax(1) == t["label"]),
                         "next_rmse": np.sqrt(np.mean(error**2)),
                         "next_distance": np.mean(np.linalg.norm(error, axis=1)),
                         "next_euclidean_rmse": np.sqrt(np.mean((error**2).sum(1)))})
    return {k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}


def looped_bootstrap(groups: list[list[dict]], keys: list[str], replicates: int,
                     seed: int = stats.SEED) -> list[dict[str, np.ndarray]]:
    """stats.replicates' documented draws, one replicate at a time (no shared code with stats): the
    test samples resampled (shared draws), plus with S >= 2 seeds a t(S - 1) draw times the seeds'
    standard error, clipped to the figure's range."""
    import hashlib

    samples = np.random.default_rng(seed).integers(0, N, size=(replicates, N))
    out = []
    for tables, key in zip(groups, keys):
        rng = np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
        t = rng.standard_t(len(tables) - 1, size=replicates) if len(tables) > 1 else np.zeros(replicates)
        whole = [direct_figures([table]) for table in tables]
        figures = {k: np.empty(replicates) for k in stats.FIGURES}
        for b in range(replicates):
            per_seed = [direct_figures([{c: v[samples[b]] for c, v in table.items()}]) for table in tables]
            for k in stats.FIGURES:
                error = np.std([w[k] for w in whole], ddof=1) / np.sqrt(len(tables)) if len(tables) > 1 else 0.0
                value = np.mean([p[k] for p in per_seed]) + t[b] * error
                figures[k][b] = min(max(value, 0.0), 1.0) if k == "accuracy" else max(value, 0.0)
        out.append(figures)
    return out


def test_the_seed_level_is_a_t_interval_not_a_bootstrap_of_two_or_three_seeds():
    """Three seeds that each make the same error on every sample: resampling the samples changes
    nothing, all the doubt is the seeds'. The interval is the t interval of their mean (t(0.975, 2)
    = 4.303 standard errors each side), wider than the seeds' own range, which a bootstrap of the
    seeds can never leave; and one seed has no seed level at all."""
    n = 50
    seeds = [{"correct": np.ones(n), "squared": np.full(n, 3 * e**2), "distance": np.full(n, np.sqrt(3) * e)}
             for e in (0.010, 0.012, 0.014)]
    [three, one] = stats.replicates([seeds, seeds[:1]], ["three seeds", "one seed"], 20000)
    half = 4.303 * 0.002 / np.sqrt(3)
    low, high = stats.interval(three["next_rmse"])
    assert (low, high) == pytest.approx((0.012 - half, 0.012 + half), rel=0.05)
    assert low < 0.010 and high > 0.014
    assert stats.interval(three["accuracy"]) == (1.0, 1.0)  # no spread
    # accuracies 0.98, 1, 1: the t draws reach beyond 1, the replicates never do
    near = [dict(s, correct=np.r_[np.zeros(1), np.ones(n - 1)] if i == 0 else np.ones(n)) for i, s in enumerate(seeds)]
    [clipped] = stats.replicates([near], ["near one"], 2000)
    assert clipped["accuracy"].max() == 1.0 and (clipped["accuracy"] == 1.0).mean() > 0.1  # about a quarter
    assert stats.interval(one["next_rmse"]) == pytest.approx((0.010, 0.010), rel=1e-12)


def test_intervals_and_paired_differences_are_the_documented_bootstrap(records):
    """Figures, 95 % intervals and paired differences of two configurations (3 and 2 training
    seeds) equal a direct numpy computation on the stored predictions."""
    loaded = load_records(records)
    assert [r.name for r in loaded] == sorted(r.name for r in loaded) and len(loaded) == 5
    [section] = sections(loaded, replicates=200)
    i3d, magvit = section.configurations
    assert (i3d.label, magvit.label) == ("i3d (keypoints, fp32)", "magvit (keypoints, fp32)")
    tables = {c.label: [r.predictions for r in c.runs] for c in section.configurations}
    assert i3d.key == "c" * 16 + "/" + "i3dxxxxxxxxxxxxx"  # code/config fingerprints name the seed draws
    expected = looped_bootstrap([tables[i3d.label], tables[magvit.label]], [i3d.key, magvit.key], 200)
    for config, drawn in zip((i3d, magvit), expected):
        for name, value in direct_figures(tables[config.label]).items():
            assert config.figure(name) == pytest.approx(value, rel=1e-12), name
            np.testing.assert_allclose(config.replicates[name], drawn[name], rtol=1e-12)
            low, high = np.percentile(drawn[name], [2.5, 97.5])
            assert config.interval(name) == pytest.approx((low, high), rel=1e-12)
    [pair] = differences(section)
    for name in ("accuracy", "next_rmse", "next_distance"):
        value, low, high, resolved = pair[name]
        diff = expected[0][name] - expected[1][name]
        assert value == pytest.approx(i3d.figure(name) - magvit.figure(name), rel=1e-12)
        assert (low, high) == pytest.approx(tuple(np.percentile(diff, [2.5, 97.5])), rel=1e-12)
        assert resolved == (low > 0 or high < 0)
    # magvit's error is about twice i3d's here, but from two seeds: the seed level is a t
    # draw with 1 degree of freedom (12.7 standard errors each side), so the gap is not resolved
    assert pair["next_rmse"][0] < 0 and not pair["next_rmse"][3] and pair["next_rmse"][1] < 0 < pair["next_rmse"][2]
    # a configuration's draws are its own: reporting it alone gives it the same interval
    [alone] = sections([r for r in loaded if r.run["backbone"] == "i3d"], replicates=200)
    assert alone.configurations[0].interval("next_rmse") == i3d.interval("next_rmse")


def test_the_report_reads_records_alone_and_never_mixes_datasets(records):
    """No git, no DVC, no model: the report's cells are the records' figures; a run on other data
    gets its own section, with its own copy-last line."""
    other, data = make_record("i3d", 0, 3.0, data="e" * 64)
    write_record(other, data, records / "results" / "runs")
    report(records, out=records / "reports", replicates=200)
    md = (records / "reports" / "comparison.md").read_text()
    assert md.count("## Data dddddddddddd") == 1 and md.count("## Data eeeeeeeeeeee") == 1
    first, second = md.split("## Data eeeeeeeeeeee")
    [section] = sections([r for r in load_records(records) if r.run["data_fingerprint"] == "d" * 64], replicates=1)
    for c in section.configurations:
        row = next(line for line in first.splitlines() if line.startswith(f"| {c.label} |"))
        assert f"{c.figure('next_rmse'):.5f} [" in row and f"{c.figure('accuracy'):.4f} [" in row, row
        tables = [r.predictions for r in c.runs]
        rmse = [np.sqrt(np.mean(np.stack([t[f"next_{k}"].astype(np.float64) - t[f"target_{k}"] for k in "xyz"]) ** 2))
                for t in tables]
        assert f" / {np.std(rmse, ddof=1):.5f} |" in row, row  # the spread over seeds (n = 2 and 3 here)
    copy_last = [line for line in md.splitlines() if line.startswith("| copy the last visible position")]
    assert len(copy_last) == 2  # one per dataset, on its own samples
    assert "magvit" not in second.split("## Charts")[0]  # the other data's section holds its one run only
    assert len(list((records / "reports").glob("data-*-error_gflop.png"))) == 2


@pytest.mark.parametrize("damage", ["missing predictions", "edited metrics", "no run.json", "bad json"])
def test_a_missing_or_damaged_record_is_one_line_naming_it(records, damage):
    folder = records / "results" / "runs" / "magvit-keypoints-fp32-seed1-dddd0001"
    if damage == "missing predictions":
        (folder / "predictions.parquet").unlink()
    elif damage == "edited metrics":
        (folder / "metrics.json").write_text((folder / "metrics.json").read_text().replace("magvit", "i3d"))
    elif damage == "no run.json":
        (folder / "run.json").unlink()
    else:
        (folder / "run.json").write_text("{")
    with pytest.raises(RecordError) as error:
        load_records(records)
    message = str(error.value)
    assert "\n" not in message and str(folder) in message, message
    if damage != "bad json":
        return
    result = run(["trajvid", "report", "--repo", str(records), "--out", str(records / "reports")], records, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and str(folder) in result.stderr, result.stderr
    assert not (records / "reports").exists()  # nothing half-written


def test_the_pareto_front_is_who_no_one_beats_on_compute_and_error():
    from trajvid.tools.report import pareto_front

    points = [(1.9, 0.007), (2.9, 0.009), (4.3, 0.003), (2.3, 0.016), (1.0, 0.05)]
    assert pareto_front(points) == [4, 0, 2]
    assert json.dumps(pareto_front([(1, 1), (1, 1)])) == "[0, 1]"  # ties beat no one


def test_no_two_configurations_are_drawn_alike(tmp_path):
    """The charts tell every configuration apart however many there are: the full grid (5 networks x
    2 heads) plus a bf16 and a GPU configuration is 12, past the 10 colours of matplotlib's cycle."""
    write_params(tmp_path / "params.yaml", default_params())
    out = tmp_path / "results" / "runs"
    for backbone in STUDY_BACKBONES:
        for head in ("keypoints", "pooled"):
            write_record(*study_record(backbone, head, 0, 2.0), out)
    write_record(*study_record("i3d", "keypoints", 0, 2.0, precision="bf16"), out)
    record, data = study_record("i3d", "keypoints", 1, 2.0)
    record.run["device"], record.name = "cuda:0", record.name + "-cuda"
    record.run["name"] = record.name
    write_record(record, data, out)
    [section] = sections(load_records(tmp_path), replicates=50)
    assert len(section.configurations) == 12
    styles = chart_styles(section.configurations, plt_palette())
    drawn = {(st["color"], st["marker"], st["line"], st["hatch"]) for st in styles}
    assert len(drawn) == 12, styles
    by_label = dict(zip((c.label for c in section.configurations), styles))
    # one backbone keeps its hue across heads (a lighter shade for pooled), another backbone has another
    i3d_k, i3d_p, magvit_k = (by_label[f"{b} ({h}, fp32)"] for b, h in (("i3d", "keypoints"), ("i3d", "pooled"), ("magvit", "keypoints")))
    assert len({i3d_k["color"], i3d_p["color"], magvit_k["color"]}) == 3
    report(tmp_path, replicates=50)  # and every chart draws with them
    assert all((tmp_path / "reports" / f"{name}.png").stat().st_size > 1000 for name in CHARTS)


def plt_palette():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab20").colors


def test_an_ensemble_of_records_is_the_mean_of_their_stored_predictions(records):
    """No model: the members' stored probabilities and positions, averaged (equal weights, and
    1 / val RMSE^2), scored against the stored targets; other data is refused in one line."""
    from trajvid.tools.ensemble import EnsembleError, ensemble_of_records

    loaded = {r.name: r for r in load_records(records)}
    names = ["i3d-keypoints-fp32-seed0-dddd0000", "magvit-keypoints-fp32-seed1-dddd0001"]
    for r, rmse in zip(names, (0.02, 0.04)):  # validation curves, for the weighting: 1/0.02^2 : 1/0.04^2 = 0.8 : 0.2
        loaded[r].curves["val/position_rmse"] = [[1, 0.1], [2, rmse]]
        folder = records / "results" / "runs" / r
        data = (folder / "predictions.parquet").read_bytes()
        with pytest.raises(RecordError, match="exists with another curves.json"):  # never replaced silently
            write_record(loaded[r], data, records / "results" / "runs")
        shutil.rmtree(folder)
        write_record(loaded[r], data, records / "results" / "runs")
    for weighting, weights in (("equal", [0.5, 0.5]), ("validation", [0.8, 0.2])):
        result = ensemble_of_records(records, names, records / "ensemble.json", weighting)
        tables = [loaded[n].predictions for n in names]
        probabilities = sum(w * np.stack([t[f"prob_{c}"] for c in CLASS_NAMES], 1).astype(np.float64) for w, t in zip(weights, tables))
        position = sum(w * np.stack([t[f"next_{c}"] for c in "xyz"], 1).astype(np.float64) for w, t in zip(weights, tables))
        target = np.stack([tables[0][f"target_{c}"] for c in "xyz"], 1).astype(np.float64)
        assert result["test"]["accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == tables[0]["label"]), abs=1e-12)
        assert result["test"]["position_rmse"] == pytest.approx(np.sqrt(np.mean((position - target) ** 2)), rel=1e-6)  # SplitMetrics: float32 differences
        assert [m["weight"] for m in result["ensemble"]["members"]] == pytest.approx(weights)
    other, data = make_record("i3d", 5, 3.0, data="e" * 64)
    write_record(other, data, records / "results" / "runs")
    with pytest.raises(EnsembleError, match="scored other data"):
        ensemble_of_records(records, [names[0], other.name], records / "ensemble2.json")
    assert not (records / "ensemble2.json").exists()


def shifted(accuracy: float, rmse: float, fingerprint: str = "e" * 64) -> dict:
    figures = {"accuracy": accuracy, "position_rmse": rmse}
    return {"changes": {"pixel_noise_std": 2.0}, "data": {"fingerprint": fingerprint, "samples": 40, "seed": 4242,
                                                        "cameras_moved_by": 0.0},
            "model": figures, "baseline": {"accuracy": 1.0, "position_rmse": 0.001}, "copy_last": {"position_rmse": 0.07}}


def test_the_robustness_table_is_shift_by_model_from_the_records_that_have_it(tmp_path):
    """Records carry metrics/robustness.json (robustness.json, checked like their other files);
    the report shows each configuration's mean over its seeds on every shifted set, the baseline
    and copy-last on the same set, and keeps sets of other params (fingerprints) apart."""
    out = tmp_path / "results" / "runs"
    figures = {("i3d", 0): (0.9, 0.010), ("i3d", 1): (0.8, 0.020), ("magvit", 0): (0.5, 0.030)}
    for (backbone, seed), (accuracy, rmse) in figures.items():
        record, data = make_record(backbone, seed, 2.0)
        record.robustness = {"model": {"name": backbone, "head": "keypoints"},
                             "shifts": {"sensor_noise_2": shifted(accuracy, rmse)}}
        if backbone == "magvit":  # the same name, other data: another column
            record.robustness["shifts"]["sensor_noise_2"] = shifted(accuracy, rmse, "9" * 64)
        write_record(record, data, out)
    loaded = {r.name: r for r in load_records(tmp_path)}
    assert all(r.robustness["shifts"]["sensor_noise_2"]["model"]["accuracy"] == figures[(r.run["backbone"], r.run["train_seed"])][0]
               for r in loaded.values())
    text = (tmp_path / "reports" / "comparison.md")
    report(tmp_path, replicates=50)
    table = text.read_text().split("Robustness: accuracy / next RMSE per coordinate on shifted data", 1)[1]
    header = next(line for line in table.splitlines() if line.startswith("| configuration"))
    assert "sensor_noise_2 (eeeeeeee)" in header and "sensor_noise_2 (99999999)" in header
    i3d = next(line for line in table.splitlines() if line.startswith("| i3d"))
    assert "| 0.850 / 0.01500 | - |" in i3d  # the mean of its two seeds; magvit's set is not its
    magvit = next(line for line in table.splitlines() if line.startswith("| magvit"))
    assert magvit.endswith("| - | 0.500 / 0.03000 |")
    assert "| classical baseline | - |" in table and "1.000 / 0.00100" in table
    # a damaged robustness.json is refused like any other file of the record
    victim = next(out.iterdir()) / "robustness.json"
    victim.write_text(victim.read_text().replace("0.", "1.", 1))
    with pytest.raises(RecordError, match="robustness.json is damaged"):
        load_records(tmp_path)


def study_record(backbone: str, head: str, seed: int, skill: float, code: str = "c" * 16,
                 precision: str = "fp32") -> tuple[Record, bytes]:
    """A record of the study's protocol (params.yaml with this backbone, head and seed), or, with
    another precision, a record outside it."""
    record, _ = make_record(backbone, seed, skill, code=code)
    params = record.run["params"]
    params["head"]["type"], params["train"]["mixed_precision"] = head, precision
    name = f"{backbone}-{head}-{precision}-seed{seed}-{code[:4]}{seed:04d}"
    record.name = name
    record.run.update({"name": name, "head": head, "mixed_precision": precision,
                       "config_fingerprint": config_fingerprint(params)})
    record.curves["val/position_rmse"] = [[1, 0.5], [2, 0.05 / skill]]  # the best seed on validation: the most skilled
    if head == "keypoints":  # a pooled head has no keypoints, so no curve of them
        record.curves["val/keypoint_distance_px"] = [[1, 2.0], [2, 0.1 / skill]]
    table = record.predictions  # every run of the study scores the same samples: the same true positions
    common = np.random.default_rng(7).uniform(-1, 1, (5 * N + 3, 3))[table["sample_id"]].astype(np.float32)
    for i, c in enumerate("xyz"):
        shift = common[:, i] - table[f"target_{c}"]
        for prefix in ("next", "last"):
            table[f"{prefix}_{c}"] = table[f"{prefix}_{c}"] + shift
        table[f"target_{c}"] = common[:, i]
    return record, parquet(table)


def test_the_answer_and_the_grid_are_the_study_cells_of_the_records(tmp_path):
    """The study's block counts only runs of params.yaml's protocol, one configuration per cell
    (most seeds first; other code named), and its sentences carry the figures and resolved/not
    resolved verdicts of the paired differences the tables compute."""
    write_params(tmp_path / "params.yaml", default_params())
    out = tmp_path / "results" / "runs"
    runs = [("i3d", "keypoints", 0, 3.0, "c" * 16), ("i3d", "keypoints", 1, 2.5, "c" * 16),
            ("i3d", "keypoints", 2, 3.5, "c" * 16), ("i3d", "keypoints", 0, 3.0, "a" * 16),
            ("magvit", "keypoints", 0, 1.5, "c" * 16), ("magvit", "keypoints", 1, 1.8, "c" * 16),
            ("frame2d", "keypoints", 0, 1.0, "c" * 16), ("i3d", "pooled", 0, 2.0, "c" * 16)]
    for backbone, head, seed, skill, code in runs:
        record, data = study_record(backbone, head, seed, skill, code)
        if (backbone, seed) == ("magvit", 0):  # validation prefers the seed that is worse on test
            record.curves["val/position_rmse"][-1][1] = 0.001
        if (backbone, head, seed, code[0]) == ("i3d", "keypoints", 0, "c"):
            record.baseline = {"test": {"accuracy": 1.0, "position_rmse": 0.001}}
        write_record(record, data, out)
    write_record(*study_record("transformer", "keypoints", 0, 4.0, precision="bf16"), out)
    report(tmp_path, replicates=300)
    md = (tmp_path / "reports" / "comparison.md").read_text()
    answer = md.split("## The answer so far", 1)[1].split("## The grid", 1)[0]
    assert "**The grid**: 7 of 30 runs recorded" in answer  # i3d keypoints 3, magvit 2, frame2d 1, i3d pooled 1
    grid = md.split("## The grid", 1)[1].split("## Both heads", 1)[0]
    i3d = next(line for line in grid.splitlines() if line.startswith("| i3d |"))
    assert "seeds 0, 1, 2 (complete); other code aaaaaa: seed 0 | seed 0 |" in i3d
    assert "| slowfast | not run | not run |" in grid and "| frame2d (control) | seed 0 | not run |" in grid
    assert "| transformer | not run | not run |" in grid  # its bf16 run is not of the protocol
    assert "does not count: transformer (keypoints, bf16)" in answer
    [section] = sections(load_records(tmp_path), replicates=300)
    label = {c.first["backbone"] + c.first["head"] + c.first["code_fingerprint"][:1]: c.label for c in section.configurations}
    rows = {(d["a"], d["b"]): d for d in differences(section)}

    def versus(a: str, b: str) -> tuple:  # the table's A − B for the study's cells a and b
        if (label[a], label[b]) in rows:
            return rows[(label[a], label[b])]["next_rmse"]
        value, low, high, resolved = rows[(label[b], label[a])]["next_rmse"]
        return -value, -high, -low, resolved

    value, low, high, resolved = versus("magvitkeypointsc", "i3dkeypointsc")
    assert value > 0  # i3d (the most skilled) is the keypoints head's best
    assert "Lowest next-position error: **i3d**" in answer
    assert f"magvit {section.configurations[[c.label for c in section.configurations].index(label['magvitkeypointsc'])].figure('next_rmse'):.5f} " \
           f"({value:+.5f} [{low:+.5f}, {high:+.5f}], {'resolved' if resolved else 'not resolved'})" in answer
    for backbone in ("i3d", "magvit"):
        value, _, _, resolved = versus(f"{backbone}keypointsc", "frame2dkeypointsc")
        verdict = "not resolved" if not resolved else "lower error, resolved" if value < 0 else "higher error, resolved"
        clause = answer.split(f"{verdict}: ", 1)[1].split(";", 1)[0]
        assert backbone in clause, (backbone, verdict, answer)
    assert "pooled head**" in answer and "frame2d control is not run under this head yet" in answer
    untouched = ", ".join(b for b in STUDY_BACKBONES if b not in {r[0] for r in runs})
    others = ", ".join(b for b in STUDY_BACKBONES if b != "i3d")
    missing = answer.split("not run yet: ", 1)[1]  # i3d's keypoints cell is complete, so not named
    assert missing.startswith(f"under the keypoints head {untouched} (seeds 0, 1, 2), magvit (seed 2), ")
    assert missing.startswith("frame2d (seeds 1, 2); under the pooled head ", len(untouched) + 60)
    assert f"under the pooled head i3d (seeds 1, 2), {others} (seeds 0, 1, 2);" in missing
    assert "Both heads" not in answer  # one network has both heads: no ranking to compare
    heads = md.split("## Both heads", 1)[1].split("## Ensembles", 1)[0]
    value, low, high, resolved = versus("i3dpooledc", "i3dkeypointsc")
    assert f"| {value:+.5f} [{low:+.5f}, {high:+.5f}] {'resolved' if resolved else 'not resolved'} |" in heads
    # the ensemble of each network's best seed on validation (i3d seed 2, magvit seed 0: not its better seed
    # on test, frame2d seed 0) is what `trajvid ensemble` of those records gives, and is compared on the same
    # sample draws with its best member on validation; the pooled head has one network: no ensemble
    ensembles = md.split("## Ensembles", 1)[1].split("## By configuration", 1)[0]
    [row] = [line for line in ensembles.splitlines() if line.startswith("| keypoints |")]
    members = [("i3d", 2), ("magvit", 0), ("frame2d", 0)]  # in the grid's order
    assert f"| {', '.join(f'{b} seed {seed}' for b, seed in members)} |" in row and "| pooled |" not in ensembles
    chosen = {r.run["backbone"]: r for r in load_records(tmp_path) if r.run["head"] == "keypoints"
              and r.run["code_fingerprint"] == "c" * 16 and r.run["mixed_precision"] == "fp32"
              and (r.run["backbone"], r.run["train_seed"]) in {("i3d", 2), ("magvit", 0), ("frame2d", 0)}}
    direct = ensemble_of_records(tmp_path, sorted(r.name for r in chosen.values()), out=tmp_path / "ensemble.json")["test"]
    assert f"| {direct['accuracy']:.4f} [" in row and f"| {direct['position_rmse']:.5f} [" in row
    tables = [r.predictions for r in chosen.values()]
    averaged = {**tables[0], **{c: np.mean([t[c].astype(np.float64) for t in tables], 0)
                                for c in tables[0] if c.startswith(("prob_", "next_"))}}
    # its best member on validation, never on test: magvit seed 0 (the test above gave it the lowest validation
    # figure), not i3d, the best network on test
    reference = chosen["magvit"].predictions
    [combined], [member] = (looped_bootstrap([[t]], ["-"], 300) for t in (averaged, reference))
    gap = direct_figures([averaged])["next_rmse"] - direct_figures([reference])["next_rmse"]
    low, high = np.percentile(combined["next_rmse"] - member["next_rmse"], [2.5, 97.5])
    verdict = "resolved" if low > 0 or high < 0 else "not resolved"
    assert f"| magvit seed 0: {direct_figures([reference])['next_rmse']:.5f} | {gap:+.5f} [{low:+.5f}, {high:+.5f}] {verdict} |" in row
    assert (f"The ensemble of the best seed (chosen on validation) of each of 3 networks ({', '.join(b for b, _ in members)}) reaches "
            f"{direct['position_rmse']:.5f}, {gap:+.5f} [{low:+.5f}, {high:+.5f}] against its member magvit seed 0 ({verdict})." in answer)
    best = section.configurations[[c.label for c in section.configurations].index(label["i3dkeypointsc"])].figure("next_rmse")
    assert f"For scale: the classical baseline (no learning) 0.00100, {best / 0.001:.1f} × lower than the best network's;" in answer
    worst = min(stats.point([q], "accuracy") for c in section.configurations  # of any run, not of a mean over seeds
                if c.label in (label["i3dkeypointsc"], label["magvitkeypointsc"], label["frame2dkeypointsc"]) for q in c.quantities)
    assert f"Accuracy: {np.floor(worst * 1e4) / 1e4:.4f} or higher for every run." in answer
    assert "put these 3 networks in the same order as their next RMSE (point estimates)." in answer


def test_runs_on_another_kind_of_device_are_kept_apart_from_the_grid(tmp_path):
    """A GPU run of a cell is its own configuration (never pooled over seeds with the CPU runs, nor
    dropped as a repeat of the CPU run of the same seed); the answer counts one kind of device (the
    one holding the most of the grid's runs, cpu on a tie) and names the other's runs apart; the CPU
    figures are the same with or without them."""
    write_params(tmp_path / "params.yaml", default_params())
    out = tmp_path / "results" / "runs"

    def add(backbone: str, seed: int, skill: float, device: str) -> None:
        record, data = study_record(backbone, "keypoints", seed, skill)
        if device != "cpu":
            record.name = record.run["name"] = record.name.replace("-seed", f"-{device.split(':')[0]}-seed")
        record.run["device"] = device
        assert write_record(record, data, out) == "written"

    add("i3d", 0, 3.0, "cpu")
    add("frame2d", 0, 1.0, "cpu")
    [alone] = [c for c in sections(load_records(tmp_path), replicates=300)[0].configurations if c.first["backbone"] == "i3d"]
    add("i3d", 0, 2.0, "cuda:0")  # the same cell and seed as a CPU run
    add("i3d", 1, 2.2, "cuda:0")
    [section] = sections(load_records(tmp_path), replicates=300)
    by_label = {c.label: c for c in section.configurations}
    assert sorted(by_label) == ["frame2d (keypoints, fp32)", "i3d (keypoints, fp32)", "i3d (keypoints, fp32, cuda)"]
    assert by_label["i3d (keypoints, fp32, cuda)"].seeds == [0, 1] and by_label["i3d (keypoints, fp32)"].seeds == [0]
    cpu = by_label["i3d (keypoints, fp32)"]
    assert cpu.interval("next_rmse") == alone.interval("next_rmse") and cpu.figure("next_rmse") == alone.figure("next_rmse")
    report(tmp_path, replicates=300)
    md = (tmp_path / "reports" / "comparison.md").read_text()
    answer = md.split("## The answer so far", 1)[1].split("## The grid", 1)[0]
    assert "**The grid**: 2 of 30 runs recorded on cpu" in answer  # a tie (2 and 2): cpu
    assert "kept apart (shown in the tables below, never pooled with these): i3d (keypoints, fp32, cuda)" in answer
    assert "does not count" not in answer  # apart, not outside the protocol
    grid = md.split("## The grid", 1)[1]
    assert "| i3d | seed 0; on cuda (not counted): seeds 0, 1 | not run |" in grid
    # once the GPU's grid holds more runs, the answer is the GPU's, and the CPU runs are the ones apart
    add("frame2d", 0, 1.1, "cuda:0")
    report(tmp_path, replicates=300)
    md = (tmp_path / "reports" / "comparison.md").read_text()
    assert "**The grid**: 3 of 30 runs recorded on cuda" in md
    assert "| i3d | seeds 0, 1; on cpu (not counted): seed 0 | not run |" in md
    assert "every run counted here trained on cuda;" in md


def test_seeds_outside_the_grid_are_named_and_not_counted(tmp_path):
    """A run of a cell with a training seed outside 0, 1, 2 stays in the tables of every run, but the
    study's figures are those of the grid's seeds alone: the answer is word for word the one without
    that run, but for the grid line and the limit naming it; a cell with no grid seed is not run."""
    grid_only, _, _ = study_answer(tmp_path / "grid", KEYPOINTS_RUNS)
    extra = [("i3d", "keypoints", 7, 0.5), ("magvit", "keypoints", 9, 5.0), ("frame2d", "keypoints", 11, 1.0)]
    answer, md, cells = study_answer(tmp_path / "extra", KEYPOINTS_RUNS + extra)
    assert cells["i3d keypoints"].seeds == [0, 1, 2, 7]  # the tables keep every seed
    assert "| i3d (keypoints, fp32) | 0, 1, 2, 7 (n=4) |" in md.split("## By configuration", 1)[1]
    assert "seeds outside the grid's 0, 1, 2 are not counted: i3d (keypoints) seed 7; magvit (keypoints) seed 9; " in answer
    assert "magvit (keypoints) seed 9; frame2d (keypoints) seed 11." in answer  # in the grid's order
    assert "does not count" not in answer  # of the protocol, only not of its seeds
    grid = md.split("## The grid", 1)[1].split("\n#", 1)[0]
    assert "| i3d | seeds 0, 1, 2 (complete); seeds outside the grid (not counted): 7 | not run |" in grid
    # one outside the grid on another kind of device is named with it
    record, data = study_record("i3d", "keypoints", 5, 2.0)
    record.run["device"], record.name = "cuda:0", record.name + "-cuda"
    record.run["name"] = record.name
    write_record(record, data, tmp_path / "extra" / "results" / "runs")
    report(tmp_path / "extra", replicates=300)
    with_cuda = (tmp_path / "extra" / "reports" / "comparison.md").read_text()
    assert "| i3d | seeds 0, 1, 2 (complete); seeds outside the grid (not counted): 7 on cpu, 5 on cuda | not run |" in with_cuda
    assert "i3d (keypoints) seeds 7 on cpu, 5 on cuda;" in with_cuda
    assert "| frame2d (control) | not run; seeds outside the grid (not counted): 11 | not run |" in grid
    # (copy-last, "For scale", is read off the section's first record: these fakes' last positions differ)
    drop = lambda text: text.split("**Limits**", 1)[0].split("For scale", 1)[0]  # noqa: E731
    assert drop(answer) == drop(grid_only), (answer, grid_only)
    assert "**The grid**: 4 of 30 runs recorded" in answer


def study_answer(tmp_path, runs: list[tuple]) -> tuple[str, str, dict]:
    """The report's answer and markdown for study records (backbone, head, seed, skill[, code
    fingerprint]), and each study cell's configuration ("i3d pooled" -> Configuration) of the same
    section (with two codes in a cell: the one whose label sorts last)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_params(tmp_path / "params.yaml", default_params())
    out = tmp_path / "results" / "runs"
    for backbone, head, seed, skill, *code in runs:
        write_record(*study_record(backbone, head, seed, skill, *code), out)
    report(tmp_path, replicates=300)
    md = (tmp_path / "reports" / "comparison.md").read_text()
    [section] = sections(load_records(tmp_path), replicates=300)
    cells = {f"{c.first['backbone']} {c.first['head']}": c for c in section.configurations}
    return md.split("## The answer so far", 1)[1].split("## The grid", 1)[0], md, cells


def gap(a, b) -> tuple[float, float, float]:
    """A − B in next RMSE on the same sample draws, with its 95 % interval."""
    low, high = stats.interval(a.replicates["next_rmse"] - b.replicates["next_rmse"])
    return a.figure("next_rmse") - b.figure("next_rmse"), low, high


KEYPOINTS_RUNS = [("i3d", "keypoints", 0, 3.0), ("i3d", "keypoints", 1, 2.5), ("i3d", "keypoints", 2, 3.5),
                  ("magvit", "keypoints", 0, 1.5)]


@pytest.mark.parametrize("pooled, verdict", [
    ({"i3d": 3.0, "magvit": 1.5}, "The head does not change the order of the point estimates."),
    ({"i3d": 1.5, "magvit": 3.0}, "The head reverses resolved gaps (i3d − magvit "),
    ({"i3d": 2.0, "magvit": 2.1}, "The heads order some pairs differently without a gap resolved in opposite directions"),
])
def test_both_heads_say_the_head_decides_the_ranking_only_on_gaps_resolved_both_ways(tmp_path, pooled, verdict):
    """An order of point estimates flips on noise: the answer says the head reverses the ranking only
    where the pair's paired difference is resolved under each head, in opposite directions."""
    answer, md, cells = study_answer(tmp_path, KEYPOINTS_RUNS + [(b, "pooled", 0, s) for b, s in pooled.items()])
    both = answer.split("**Both heads**", 1)[1].split("\n\n", 1)[0]
    assert verdict in both, both
    gaps = {h: gap(cells[f"i3d {h}"], cells[f"magvit {h}"]) for h in ("keypoints", "pooled")}
    resolved = {h: low > 0 or high < 0 for h, (_, low, high) in gaps.items()}
    flipped = (gaps["keypoints"][0] < 0) != (gaps["pooled"][0] < 0)
    # the pair's figures under each head, as the differences table has them (magvit has one seed under each)
    # (under keypoints magvit's side is one seed, under pooled both are: each says which side is over test samples only)
    sides = {"keypoints": "magvit n=1: its side", "pooled": "i3d and magvit n=1: both sides"}
    figures = "i3d − magvit " + ", ".join(f"{v:+.5f} [{low:+.5f}, {high:+.5f}] under {h} ({sides[h]} over test samples only)"
                                         for h, (v, low, high) in gaps.items())
    if "reverses resolved" in verdict:
        assert all(resolved.values()) and flipped
        assert figures + "): a ranking under one head" in both
    elif "differently" in verdict:  # the case this guards: swapped point estimates, a gap not resolved
        assert flipped and not all(resolved.values()), gaps
        assert f"which noise can do ({figures})." in both
    else:
        assert not flipped and "i3d − magvit" not in both
    # each head's order with its seeds: keypoints i3d over 3 seeds, pooled over 1
    order = sorted(("i3d", "magvit"), key=lambda b: cells[f"{b} pooled"].figure("next_rmse"))
    assert f"pooled orders them {order[0]} (n=1) < {order[1]} (n=1)." in both
    assert "keypoints orders them i3d (n=3) < magvit (n=1);" in both


def test_a_pooled_head_reads_as_its_own_runs_without_keypoint_figures(tmp_path):
    """A pooled run has no keypoints: its configuration shows no keypoint error (not a 0, not the
    keypoints head's), its paragraph ranks only what it ran, one network is not a ranking, the
    control alone is held against nothing, and an empty pooled head is only named as not run."""
    answer, md, cells = study_answer(tmp_path, KEYPOINTS_RUNS)
    assert "pooled head**" not in answer and "## Both heads" not in md and "| pooled |" not in md
    assert "under the pooled head every network" in answer.split("not run yet: ", 1)[1]

    answer, md, cells = study_answer(tmp_path, [("frame2d", "pooled", 0, 2.0)])
    pooled = answer.split("**pooled head**", 1)[1].split("\n\n", 1)[0]
    assert "Only **frame2d** is run under this head, so there is no ranking yet" in pooled
    assert "Lowest" not in pooled and "Against the frame2d control" not in pooled
    accuracy = cells["frame2d pooled"].figure("accuracy")
    assert (f"Accuracy: frame2d {np.floor(accuracy * 1e4) / 1e4:.4f}." if accuracy < 1 else
            "Accuracy: 1.0000 for frame2d (every test sample classified correctly).") in pooled, pooled

    answer, md, cells = study_answer(tmp_path, KEYPOINTS_RUNS + [("i3d", "pooled", 0, 3.0), ("i3d", "pooled", 1, 2.0),
                                                                  ("magvit", "pooled", 0, 1.5), ("frame2d", "pooled", 0, 2.0)])
    pooled = answer.split("**pooled head**", 1)[1].split("\n\n", 1)[0]
    assert pooled.startswith(" (3 of 5 networks run, 1–2 seeds each). Lowest next-position error: ")
    ranked = sorted([c.split()[0] for c in cells if c.endswith(" pooled")], key=lambda b: cells[f"{b} pooled"].figure("next_rmse"))
    assert f"Lowest next-position error: **{ranked[0]}**" in pooled
    for other in ranked[1:]:
        value, low, high = gap(cells[f"{other} pooled"], cells[f"{ranked[0]} pooled"])
        assert f"{other} {cells[f'{other} pooled'].figure('next_rmse'):.5f} ({value:+.5f} [{low:+.5f}, {high:+.5f}], " in pooled
    assert "Against the frame2d control" in pooled and "validation keypoint errors" not in pooled
    table = md.split("## By configuration", 1)[1].split("\n#", 1)[0].splitlines()
    header = next(line for line in table if line.startswith("| configuration | seeds |")).split(" | ")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table if "fp32) |" in line}
    px = header.index("val keypoint px")
    assert {name: row[px] for name, row in rows.items() if "pooled" in name} == dict.fromkeys(
        ("frame2d (pooled, fp32)", "i3d (pooled, fp32)", "magvit (pooled, fp32)"), "-"), rows
    assert rows["i3d (keypoints, fp32)"][px] == f"{cells['i3d keypoints'].keypoint_px():.3f}"
    assert "| pooled | " in md.split("## Ensembles", 1)[1].split("## By configuration", 1)[0]
    # a configuration with a seed that lacks the curve has no keypoint figure: not the mean of the others
    i3d = cells["i3d keypoints"]
    del i3d.runs[1].curves["val/keypoint_distance_px"]
    assert np.isnan(i3d.keypoint_px())


def test_paired_differences_are_under_one_head_or_of_one_backbone(tmp_path):
    """The differences table pairs configurations under one head (one head's pairs, then the
    other's) and one backbone across heads, then says what it leaves out: another backbone under
    another head (or in another precision) changes two things at once. With one head it leaves
    nothing out and says nothing."""
    _, md, _ = study_answer(tmp_path / "one", KEYPOINTS_RUNS)
    table = md.split("## Paired differences", 1)[1].split("\n#", 1)[0]
    assert "left out" not in table
    assert [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| i3d")] == [
        ["| i3d (keypoints, fp32)", "magvit (keypoints, fp32)"]]

    _, md, cells = study_answer(tmp_path / "both", KEYPOINTS_RUNS + [("i3d", "pooled", 0, 2.0), ("magvit", "pooled", 0, 1.0)])
    table = md.split("## Paired differences", 1)[1].split("\n#", 1)[0]
    assert "a pair that differs in two or more is left out" in table
    pairs = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table.splitlines()
             if line.startswith("| ") and "fp32)" in line]
    assert pairs == [("i3d (keypoints, fp32)", "magvit (keypoints, fp32)"), ("i3d (pooled, fp32)", "magvit (pooled, fp32)"),
                     ("i3d (keypoints, fp32)", "i3d (pooled, fp32)"), ("magvit (keypoints, fp32)", "magvit (pooled, fp32)")]
    # each row is still the paired difference of its two configurations
    row = next(line for line in table.splitlines() if line.startswith("| i3d (keypoints, fp32) | i3d (pooled, fp32) |"))
    value, low, high = gap(cells["i3d keypoints"], cells["i3d pooled"])
    assert f"{value:+.5f} [{low:+.5f}, {high:+.5f}]" in row, row

    # another precision is a third thing that can change: i3d bf16 pairs with i3d fp32 under its head only
    write_record(*study_record("i3d", "keypoints", 0, 2.0, precision="bf16"), tmp_path / "both" / "results" / "runs")
    report(tmp_path / "both", replicates=300)
    table = (tmp_path / "both" / "reports" / "comparison.md").read_text().split("## Paired differences", 1)[1].split("\n#", 1)[0]
    pairs = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table.splitlines() if "bf16" in line]
    assert pairs == [("i3d (keypoints, bf16)", "i3d (keypoints, fp32)")], pairs

    # a precision on other code is two changes of one backbone: magvit bf16 of code aaaa pairs with nothing
    write_record(*study_record("magvit", "keypoints", 0, 2.0, code="a" * 16, precision="bf16"),
                 tmp_path / "both" / "results" / "runs")
    report(tmp_path / "both", replicates=300)
    table = (tmp_path / "both" / "reports" / "comparison.md").read_text().split("## Paired differences", 1)[1].split("\n#", 1)[0]
    pairs = {tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table.splitlines() if "bf16" in line}
    assert ("i3d (keypoints, bf16)", "magvit (keypoints, bf16)") in pairs  # one change: the backbone
    assert not {p for p in pairs if "magvit (keypoints, fp32)" in p and "magvit (keypoints, bf16)" in p}, pairs


def test_networks_not_below_copying_the_last_position_and_one_seed_networks_are_named(tmp_path):
    """A network whose error is not resolved below copying the last visible position (paired, on the
    same draws) is named under its head; a head where every network is below it says nothing. A
    network with one seed is named as such beside the others' paired differences."""
    answer, _, cells = study_answer(tmp_path, KEYPOINTS_RUNS + [("i3d", "pooled", 0, 3.0), ("magvit", "pooled", 0, 0.4)])
    pooled = answer.split("**pooled head**", 1)[1].split("\n\n", 1)[0]
    assert cells["magvit pooled"].figure("next_rmse") > 0.1  # 0.05 / 0.4 per coordinate against copy-last's 0.07
    assert ("Against copying the last visible position (no learning; next RMSE "
            in pooled and "): higher error, resolved: magvit; not resolved: none; lower error, resolved: i3d." in pooled)
    keypoints = answer.split("**keypoints head**", 1)[1].split("\n\n", 1)[0]
    assert "copying the last visible position (no learning" not in keypoints
    assert ("One seed only (n=1) for magvit: its own interval covers the test samples only and says nothing about "
            "another seed." in keypoints)
    assert "One seed only (n=1) for i3d, magvit: their own interval" in pooled


def test_both_heads_name_networks_whose_heads_ran_different_code(tmp_path):
    """A head comparison of one backbone is the head's only when both heads' runs are of the same
    code: the heads table marks a backbone whose two heads' runs have different code fingerprints,
    and the answer's limits name it, with one backbone under both heads or several."""
    answer, md, _ = study_answer(tmp_path / "same", KEYPOINTS_RUNS + [("i3d", "pooled", 0, 3.0), ("magvit", "pooled", 0, 1.5)])
    assert "different code" not in md
    for case, runs in {"one": [("i3d", "pooled", 0, 3.0, "a" * 16)],
                       "two": [("i3d", "pooled", 0, 3.0, "a" * 16), ("magvit", "pooled", 0, 1.5)]}.items():
        answer, md, _ = study_answer(tmp_path / case, KEYPOINTS_RUNS + runs)
        limits = answer.split("**Limits**", 1)[1]
        assert ("the two heads' runs of i3d (keypoints cccccc, pooled aaaaaa) are of different code (code "
                "fingerprints), so a difference between the heads may not be the head's alone") in limits, limits
        heads = md.split("## Both heads", 1)[1].split("\n## ", 1)[0]
        [i3d] = [line for line in heads.splitlines() if line.startswith("| i3d |")]
        assert i3d.endswith(" (different code: keypoints cccccc, pooled aaaaaa) |"), i3d
        assert [line for line in heads.splitlines() if "different code" in line] == [i3d]


def test_an_order_with_equal_figures_says_equal():
    assert _chain([("a", 0.1), ("b", 0.2), ("c", 0.2)]) == "a < b = c"
    assert _chain([("a", 0.1)]) == "a"


def test_the_limits_say_where_training_stopped_on_the_validation_curves(tmp_path):
    """From the validation curves, the limits give each configuration's change of the validation next
    RMSE (mean over seeds) over its last 3 epochs and over the last one (fell, less than 1 %, rose),
    what the learning rate did meanwhile, since which epoch the networks' order on validation has
    been the final one (under a head with two or more), and which configurations' curves are too
    short to tell; nothing at all when every run is."""
    i3d = {0: [0.5, 0.4, 0.3, 0.2, 0.1, 0.08], 1: [0.5, 0.4, 0.3, 0.2, 0.1, 0.1]}  # 73 % and 67 % from epoch 3 to 6
    magvit = [0.6, 0.3, 0.25, 0.22, 0.2, 0.16]  # 36 %; below i3d's mean at epochs 2-3, above it from epoch 4
    rate = [1e-3, 8e-4, 5e-4, 2.5e-4, 1e-4, 0.0]

    def limits(case: str, runs: list[tuple[str, str, int, list[float]]]) -> str:
        (tmp_path / case).mkdir()
        write_params(tmp_path / case / "params.yaml", default_params())
        for backbone, head, seed, curve in runs:
            record, data = study_record(backbone, head, seed, 2.0)
            record.curves["val/position_rmse"] = [[epoch, value] for epoch, value in enumerate(curve, start=1)]
            record.curves["lr"] = [[epoch, value] for epoch, value in enumerate(rate[:len(curve)], start=1)]
            write_record(record, data, tmp_path / case / "results" / "runs")
        report(tmp_path / case, replicates=300)
        md = (tmp_path / case / "reports" / "comparison.md").read_text()
        return md.split("**Limits**", 1)[1].split("\n\n", 1)[0]

    keypoints = [("i3d", "keypoints", 0, i3d[0]), ("i3d", "keypoints", 1, i3d[1])]
    falling = limits("falling", keypoints + [("magvit", "keypoints", 0, magvit)])
    assert ("; over the last 3 of 6 epochs, while the learning rate went from 0.0005 to 0, the validation next RMSE "
            "(mean over seeds) fell for every configuration, by 36 % for magvit (keypoints) to 70 % for i3d (keypoints); "
            "over the last epoch alone it fell for every configuration, by 10 % for i3d (keypoints) to 20 % for magvit "
            "(keypoints); the figures are those of this protocol's 6-epoch schedule, and a longer one might lower them "
            "or change their order; under the keypoints head the networks' order on validation (means over seeds) has "
            "been the final one since epoch 4 of 6;") in falling, falling
    # magvit flat over the last 3 epochs and rising over the last; frame2d's curve too short to tell
    rising = limits("rising", keypoints + [("magvit", "keypoints", 0, magvit[:-1] + [0.25]),
                                           ("frame2d", "keypoints", 0, [0.5, 0.3])])
    assert ("the validation next RMSE (mean over seeds) fell for i3d (keypoints) (by 70 %), changed by less than 1 % for "
            "magvit (keypoints); over the last epoch alone it fell for i3d (keypoints) (by 10 %), rose for magvit "
            "(keypoints) (by 25 %); the figures") in rising, rising
    assert ("has been the final one since epoch 4 of 6 (frame2d (keypoints): no validation curve of more than 3 epochs "
            "in every run);") in rising, rising
    # the order changes at the last epoch; one network under the pooled head: no order there
    late = limits("late", keypoints + [("magvit", "keypoints", 0, magvit[:-2] + [0.09, 0.095]),
                                       ("i3d", "pooled", 0, i3d[0])])
    assert "under the keypoints head the networks' order on validation (means over seeds) has been the final one only " \
           "at the last epoch;" in late, late
    assert "under the pooled head the networks' order" not in late
    short, _, _ = study_answer(tmp_path / "short", KEYPOINTS_RUNS)  # 2 epochs: too short to say anything
    assert "epochs" not in short.split("**Limits**", 1)[1] and "order on validation" not in short
