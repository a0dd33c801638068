"""`trajvid report [REV ...]`: the comparison of backbones as tables and charts.

Reads every given revision (default: every branch and every DVC experiment) straight from git,
without checking anything out: `metrics/metrics.json` (the test figures), `params.yaml`,
`models/config.json` is not needed (metrics.json names the model, its size and the training),
and DVCLive's per-epoch logs for the learning curves. Runs of one configuration that differ only in
their training seed (train.seed) are aggregated as mean ± standard deviation with the count; runs
on other data (another `seed`) never are. The classical baseline
(`metrics/baseline.json`) and copying the last visible position are drawn beside them.

Writes reports/comparison.md, reports/comparison.html (self-contained: charts inlined as data
URIs, no script or style from anywhere) and the charts as PNG files.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trajvid.errors import TrajvidError
from trajvid.params import DataParams, TrainParams
from trajvid.runtime.files import atomic_write, write_text
from trajvid.tools.git import default_revisions, experiment_commits, git, resolve

CURVES = ("val/accuracy", "val/position_rmse")
CHARTS = ("accuracy_rmse", "per_class_accuracy", "learning_curves", "time_tradeoff", "size")


class ReportError(TrajvidError):
    """A revision that cannot be read, or nothing to report."""


@dataclass
class ReportedRun:
    name: str  # the branch, tag or experiment name given or found
    rev: str  # the commit
    params: dict
    metrics: dict
    curves: dict = field(default_factory=dict)  # "val/accuracy" -> [(epoch, value)]

    @property
    def backbone(self) -> str:
        return self.metrics.get("model", {}).get("name") or self.params.get("model", "?")

    @property
    def seed(self):
        """The training's seed (train.seed; before it existed, the one seed of data and training)."""
        return self.metrics.get("train", {}).get("seed", (self.params.get("train") or {}).get("seed"))

    @property
    def head(self) -> str:
        return self.metrics.get("model", {}).get("head") or (self.params.get("head") or {}).get("type", "-")

    @property
    def config_key(self) -> str:
        """Everything that defines the run but its training seed (the data's seed is part of it:
        runs on other data are another configuration): runs with the same key are repeats."""
        without_seed = dict(self.params)
        selected = without_seed.get("model")
        models = without_seed.pop("models", {}) or {}
        without_seed["backbone_sizes"] = models.get(selected)
        for section, keys in (("data", DataParams.RUNTIME), ("train", TrainParams.RUNTIME)):
            without_seed[section] = {k: v for k, v in (without_seed.get(section) or {}).items()
                                     if k not in keys and (section, k) != ("train", "seed")}
        return json.dumps(without_seed, sort_keys=True, default=str)

    @property
    def label(self) -> str:
        return f"{self.backbone} ({self.head})"


def read_curves(root: Path, ref: str) -> dict:
    curves = {}
    for name in CURVES:
        text = git(root, "show", f"{ref}:dvclive/plots/metrics/{name}.tsv")
        if not text:
            continue
        rows = [line.split("\t") for line in text.strip().splitlines()[1:]]
        try:
            curves[name] = [(int(step), float(value)) for step, value in rows]
        except ValueError:
            continue
    return curves


def load_runs(root: Path, names: list[str] | None) -> list[ReportedRun]:
    if names:
        revisions = []
        for name in names:
            ref = resolve(root, name)
            if ref is None:
                raise ReportError(f"revision {name!r} is neither a branch, tag, commit nor DVC experiment of {root}; "
                                  "see `git branch -a` and `dvc exp list --all-commits` (`dvc exp pull` fetches one)")
            revisions.append((name, ref))
    else:
        revisions = default_revisions(root)
    runs, seen = [], set()
    for name, ref in revisions:
        commit = (git(root, "rev-parse", f"{ref}^{{commit}}") or "").strip()
        text = git(root, "show", f"{ref}:metrics/metrics.json")
        if not text or commit in seen:
            if names and not text:
                raise ReportError(f"revision {name!r} has no metrics/metrics.json: run `dvc repro` (or `dvc exp run`) there first")
            continue
        seen.add(commit)
        try:
            metrics = json.loads(text)
            params = yaml.safe_load(git(root, "show", f"{ref}:params.yaml") or "") or {}
        except (ValueError, yaml.YAMLError) as error:
            raise ReportError(f"revision {name!r}: unreadable metrics or params ({error})") from None
        if "test" not in metrics:
            continue
        runs.append(ReportedRun(name, commit, params, metrics, read_curves(root, ref)))
    if not runs:
        raise ReportError("no revision with metrics/metrics.json to report: train and evaluate first "
                          "(`dvc repro`, or `dvc exp run`)")
    return runs


@dataclass
class Ensemble:
    """A `trajvid ensemble` result (metrics/ensemble.json) of the workspace or of a revision."""

    source: str  # "workspace" or the revision it was committed in
    metrics: dict

    @property
    def label(self) -> str:
        info = self.metrics["ensemble"]
        return f"ensemble of {' + '.join(m['name'] for m in info['members'])} ({info['weights']} weights)"

    @property
    def short_label(self) -> str:
        """For a chart's axis: the members are in the tables."""
        info = self.metrics["ensemble"]
        return f"ensemble of {len(info['members'])} ({info['weights']})"


def load_ensembles(root: Path, runs: list[ReportedRun]) -> list[Ensemble]:
    """metrics/ensemble.json of the workspace and of every revision reported, each result once."""
    found, seen = [], set()
    workspace = root / "metrics" / "ensemble.json"
    sources = [("workspace", workspace.read_text() if workspace.is_file() else None)]
    experiments = experiment_commits(root)
    for run in runs:
        text = git(root, "show", f"{run.rev}:metrics/ensemble.json")
        if text and run.rev in experiments and text == git(root, "show", f"{run.rev}^:metrics/ensemble.json"):
            continue  # carried over from the experiment's base commit: not this run's ensemble
        sources.append((run.name, text))
    for source, text in sources:
        if not text:
            continue
        try:
            metrics = json.loads(text)
        except ValueError:
            continue
        if not _complete_ensemble(metrics):
            continue  # half-written or foreign: the report is about the runs
        key = json.dumps([metrics["ensemble"]["members"], metrics["test"]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(Ensemble(source, metrics))
    return found


def _complete_ensemble(metrics) -> bool:
    """Whether an ensemble.json has every key the report reads."""
    try:
        info, test = metrics["ensemble"], metrics["test"]
        return (isinstance(info["weights"], str) and bool(info["members"])
                and all(isinstance(m["name"], str) and "seed" in m for m in info["members"])
                and all(isinstance(info["beats_best_member"][k], bool) for k in ("accuracy", "position_rmse"))
                and all(isinstance(test[k], (int, float)) for k in ("accuracy", "position_rmse")))
    except (KeyError, TypeError, AttributeError):
        return False


def read_baseline(root: Path, runs: list[ReportedRun]) -> dict | None:
    for ref in [*(r.rev for r in runs), "HEAD"]:
        text = git(root, "show", f"{ref}:metrics/baseline.json")
        if text:
            try:
                return json.loads(text)
            except ValueError:
                continue
    return None


# -- aggregation --------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def drop_repeats(runs: list[ReportedRun]) -> tuple[list[ReportedRun], list[str]]:
    """One run per (configuration, seed): the same params and seed again (a branch made from an
    experiment, a rerun) is one result, not two samples; the first found is kept."""
    kept, dropped, seen = [], [], {}
    for run in runs:
        key = (run.config_key, str(run.seed))
        if key in seen:
            dropped.append(f"{run.name} (same params and seed as {seen[key]})")
            continue
        seen[key] = run.name
        kept.append(run)
    return kept, dropped


def groups(runs: list[ReportedRun]) -> list[tuple[str, list[ReportedRun]]]:
    by_key: dict[str, list[ReportedRun]] = {}
    for run in runs:
        by_key.setdefault(run.config_key, []).append(run)
    labelled = []
    for members in by_key.values():
        label = members[0].label
        others = [m for m in by_key.values() if m[0].label == label]
        if len(others) > 1:  # the same backbone in several configurations: name them apart
            label += f" [{members[0].name}]"
        labelled.append((label, members))
    return sorted(labelled, key=lambda item: item[0])


def worst_class(metrics: dict) -> tuple[str, float]:
    per_class = metrics["test"].get("per_class_accuracy") or {}
    if not per_class:
        return "-", math.nan
    name = min(per_class, key=per_class.get)
    return name, per_class[name]


# -- charts -------------------------------------------------------------------------------------


def make_charts(runs: list[ReportedRun], baseline: dict | None, out: Path,
                ensembles: list[Ensemble] = ()) -> dict[str, Path]:
    """Every chart of CHARTS as out/<name>.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no browser
    import matplotlib.pyplot as plt

    grouped = groups(runs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    draw = {"accuracy_rmse": lambda: chart_accuracy_rmse(plt, grouped, colors, baseline, ensembles),
            "per_class_accuracy": lambda: chart_per_class_accuracy(plt, grouped, colors),
            "learning_curves": lambda: chart_learning_curves(plt, grouped, colors),
            "time_tradeoff": lambda: chart_time_tradeoff(plt, grouped, colors),
            "size": lambda: chart_size(plt, grouped, colors)}
    paths = {}
    for name in CHARTS:
        fig = draw[name]()
        fig.tight_layout()
        paths[name] = out / f"{name}.png"
        atomic_write(paths[name], lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
    return paths


def chart_accuracy_rmse(plt, grouped, colors, baseline: dict | None, ensembles: list[Ensemble]):
    """Accuracy and next-position RMSE per configuration (mean ± std over seeds), ensembles
    hatched after the runs, with the classical baseline and copy-last lines."""
    labels = [label for label, _ in grouped]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, field_name, title in ((left, "accuracy", "test accuracy"),
                                  (right, "position_rmse", "next-position RMSE (world units)")):
        values = [mean_std([r.metrics["test"][field_name] for r in members]) for _, members in grouped]
        ax.bar(range(len(labels)), [v[0] for v in values], yerr=[v[1] for v in values],
               color=[colors[i % len(colors)] for i in range(len(labels))], capsize=4)
        ax.bar(range(len(labels), len(labels) + len(ensembles)), [e.metrics["test"][field_name] for e in ensembles],
               color="0.75", hatch="//", edgecolor="k")
        ax.set_xticks(range(len(labels) + len(ensembles)), labels + [e.short_label for e in ensembles], rotation=20,
                      ha="right")
        ax.set_title(title)
    if baseline:
        left.axhline(baseline["test"]["accuracy"], color="k", ls="--", label="classical baseline")
        right.axhline(baseline["test"]["position_rmse"], color="k", ls="--", label="classical baseline")
        right.axhline(baseline["copy_last"]["position_rmse"], color="r", ls=":", label="copy last position")
        right.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylim(0, 1.02)
    return fig


def chart_per_class_accuracy(plt, grouped, colors):
    class_names = list(grouped[0][1][0].metrics["test"].get("per_class_accuracy", {}))
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(grouped))
    for i, (label, members) in enumerate(grouped):
        means = [mean_std([m.metrics["test"]["per_class_accuracy"].get(c) for m in members])[0] for c in class_names]
        ax.bar([j + i * width for j in range(len(class_names))], means, width, label=label, color=colors[i % len(colors)])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(class_names))], class_names)
    ax.set_ylim(0, 1.02)
    ax.set_title("test accuracy per class")
    ax.legend(fontsize=8)
    return fig


def chart_learning_curves(plt, grouped, colors):
    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    for ax, curve in zip(axes, CURVES):
        for i, (label, members) in enumerate(grouped):
            for j, member in enumerate(members):
                points = member.curves.get(curve)
                if points:
                    ax.plot(*zip(*points), color=colors[i % len(colors)], alpha=0.85, marker="o", ms=3,
                            label=label if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_title(curve)
        if curve.endswith("rmse"):
            ax.set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:  # runs without DVCLive logs draw no curve
        axes[0].legend(fontsize=8)
    return fig


def chart_time_tradeoff(plt, grouped, colors):
    """Accuracy and RMSE against training time, one point per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, members) in enumerate(grouped):
        minutes = [m.metrics.get("train", {}).get("time_s", math.nan) / 60 for m in members]
        left.scatter(minutes, [m.metrics["test"]["accuracy"] for m in members], color=colors[i % len(colors)], label=label)
        right.scatter(minutes, [m.metrics["test"]["position_rmse"] for m in members], color=colors[i % len(colors)])
    for ax, title in ((left, "test accuracy"), (right, "next-position RMSE")):
        ax.set_xlabel("training time (min)")
        ax.set_title(title)
    right.set_yscale("log")
    left.legend(fontsize=8)
    return fig


def chart_size(plt, grouped, colors):
    """Parameters and model file size per configuration."""
    labels = [label for label, _ in grouped]
    first = [members[0] for _, members in grouped]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(range(len(labels)), [m.metrics["model"]["params"] / 1e6 for m in first], color=colors[: len(labels)])
    right.bar(range(len(labels)), [m.metrics["model"]["size_bytes"] / 1e6 for m in first], color=colors[: len(labels)])
    for ax, title in ((left, "parameters (millions)"), (right, "model file (MB)")):
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_title(title)
    return fig


# -- tables -------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _pm(mean: float, std: float, n: int, spec: str) -> str:
    if n == 0:
        return "-"
    return f"{mean:{spec}} ± {std:{spec}} (n={n})" if n > 1 else f"{mean:{spec}}"


def tables(runs: list[ReportedRun], baseline: dict | None, ensembles: list[Ensemble] = ()) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    run_header = ["run", "revision", "backbone", "head", "seed", "samples", "epochs", "device", "accuracy",
                  "worst class", "next RMSE", "params", "model MB", "train min", "samples/s"]
    run_rows = []
    for r in sorted(runs, key=lambda r: (r.label, str(r.seed), r.name)):
        test, train = r.metrics["test"], r.metrics.get("train", {})
        worst, worst_acc = worst_class(r.metrics)
        run_rows.append([
            r.name, r.rev[:7], r.backbone, r.head, str(r.seed),
            str((r.params.get("data") or {}).get("num_samples", "-")), str(train.get("epochs", "-")),
            f"{train.get('device', '-')} ×{train.get('processes', 1)}", _fmt(test["accuracy"], ".4f"),
            f"{worst} {_fmt(worst_acc, '.3f')}", _fmt(test["position_rmse"], ".4f"),
            f"{r.metrics['model']['params']:,}", _fmt(r.metrics["model"]["size_bytes"] / 1e6, ".1f"),
            _fmt(train.get("time_s", math.nan) / 60, ".1f"), _fmt(train.get("samples_per_s"), ".1f"),
        ])
    group_header = ["configuration", "runs", "seeds", "accuracy", "worst class accuracy", "next RMSE"]
    group_rows = []
    for label, members in groups(runs):
        group_rows.append([
            label, str(len(members)), ", ".join(str(m.seed) for m in members),
            _pm(*mean_std([m.metrics["test"]["accuracy"] for m in members]), ".4f"),
            _pm(*mean_std([worst_class(m.metrics)[1] for m in members]), ".3f"),
            _pm(*mean_std([m.metrics["test"]["position_rmse"] for m in members]), ".4f"),
        ])
    for e in ensembles:
        members = e.metrics["ensemble"]["members"]
        group_rows.append([e.label + ("" if e.source == "workspace" else f" [{e.source}]"), str(len(members)),
                           ", ".join(str(m["seed"]) for m in members), _fmt(e.metrics["test"]["accuracy"], ".4f"),
                           _fmt(worst_class(e.metrics)[1], ".3f"), _fmt(e.metrics["test"]["position_rmse"], ".4f")])
    if baseline:
        group_rows.append(["classical baseline (triangulate + fit)", "-", "-", _fmt(baseline["test"]["accuracy"], ".4f"),
                           _fmt(worst_class(baseline)[1], ".3f"), _fmt(baseline["test"]["position_rmse"], ".4f")])
        group_rows.append(["copy the last visible position", "-", "-", "-", "-",
                           _fmt(baseline["copy_last"]["position_rmse"], ".4f")])
    return run_header, run_rows, group_header, group_rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def reduced_note(runs: list[ReportedRun]) -> str:
    """Which runs are not the full protocol: params.yaml's defaults (params.py) of samples and epochs."""
    samples, epochs = DataParams().num_samples, TrainParams().epochs
    reduced = [r.name for r in runs if (r.params.get("data") or {}).get("num_samples") != samples
               or (r.params.get("train") or {}).get("epochs") != epochs]
    if not reduced:
        return ""
    return (f"Reduced runs (not the full {samples:,} samples × {epochs} epochs; their figures are not the full "
            f"protocol's): {', '.join(reduced)}.")


def report(root: Path | str = ".", revisions: list[str] | None = None, out: Path | str = "reports") -> dict:
    root, out = Path(root).resolve(), Path(out)
    if not out.is_absolute():
        out = root / out
    runs, repeats = drop_repeats(load_runs(root, revisions))
    baseline = read_baseline(root, runs)
    out.mkdir(parents=True, exist_ok=True)
    ensembles = load_ensembles(root, runs)
    charts = make_charts(runs, baseline, out, ensembles)
    run_header, run_rows, group_header, group_rows = tables(runs, baseline, ensembles)
    note = reduced_note(runs)
    for e in ensembles:
        beats = e.metrics["ensemble"]["beats_best_member"]
        verdict = {True: "beats", False: "does not beat"}
        note = (note + " " if note else "") + (
            f"The {e.label} {verdict[beats['accuracy']]} its best member on accuracy and "
            f"{verdict[beats['position_rmse']]} it on next RMSE.")
    if repeats:
        note = (note + " " if note else "") + f"Left out as repeats: {', '.join(repeats)}."
    intro = ("Test split figures from `metrics/metrics.json` of each revision; accuracy over the four classes; next RMSE "
             "is the per-coordinate RMSE of the predicted next-frame 3D position in world units. Runs that differ "
             "only in their training seed (train.seed) are aggregated as mean ± standard deviation (n runs).")
    md = ["# Backbone comparison", "", intro, ""] + ([note, ""] if note else []) + [
        "## By configuration", "", markdown_table(group_header, group_rows), "",
        "## Every run", "", markdown_table(run_header, run_rows), "",
        "## Charts", ""] + [f"![{name}]({path.name})" for name, path in charts.items()]
    write_text(out / "comparison.md", "\n".join(md) + "\n")
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>" for name, path in charts.items())
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>trajvid: backbone comparison</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:13px}th{background:#eee}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>Backbone comparison</h1><p>{html.escape(intro)}</p>" + (f"<p><b>{html.escape(note)}</b></p>" if note else "")
        + "<h2>By configuration</h2>" + html_table(group_header, group_rows)
        + "<h2>Every run</h2>" + html_table(run_header, run_rows) + "<h2>Charts</h2>" + images + "</body></html>\n"
    )
    write_text(out / "comparison.html", page)
    return {"runs": len(runs), "groups": len(groups(runs)), "out": str(out), "charts": [str(p) for p in charts.values()]}
