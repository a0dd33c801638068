"""`trajvid report [NAME ...]`: the comparison of backbones, from run records, as tables and charts.

Reads the run records in `results/runs/` (tools/records.py) and every finished DVC experiment not
recorded yet (read through git, as `trajvid collect` would record it); with NAMEs, only those
records, experiments or revisions. Neither a model nor the DVC cache is needed: every figure is
computed from the records' per-sample predictions (tools/stats.py).

- Runs are grouped into configurations by code fingerprint (the train stage's code in dvc.lock)
  and config fingerprint (every param that changes the result but the training seed): a
  configuration's runs are repeats over training seeds; a second run with the same seed is left
  out and named.
- Runs on different data (data fingerprint: the SHA-256 of the dataset's SHA256SUMS) never share a
  table or a chart: each dataset has its own section, with the classical baseline that scored the
  same data and copying the last visible position on the same samples.
- Figures: the mean over seeds with a 95 % interval over seeds (a t interval) and test samples
  (bootstrapped), and the paired differences between configurations on the same test samples
  (tools/stats.py).

Writes reports/comparison.md, reports/comparison.html (self-contained: charts inlined as data
URIs, no script or style from anywhere) and the charts as PNG files. `--publish` also writes the
generated parts of docs/results.md and of the README (between their `<!-- results -->` markers).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trajvid.backbones import BACKBONES
from trajvid.data.scene import CLASS_NAMES
from trajvid.errors import TrajvidError
from trajvid.params import DataParams, TrainParams
from trajvid.runtime.files import atomic_write, write_text
from trajvid.tools import stats, study
from trajvid.tools.git import default_revisions, resolve
from trajvid.tools.records import Record, RecordError, device_kind, load_records, record_of

CHARTS = ("accuracy_rmse", "per_class_accuracy", "learning_curves", "error_gflop", "time_tradeoff")
CURVES = ("val/accuracy", "val/position_rmse")
KEYPOINT_CURVE = "val/keypoint_distance_px"


class ReportError(TrajvidError):
    """Nothing to report, or a name that is neither a record nor a revision."""


# -- runs and configurations --------------------------------------------------------------------


@dataclass
class Configuration:
    """The runs of one configuration (same data, code, params but the training seed, and kind of device)."""

    label: str
    key: str  # code and config fingerprints (and a device kind other than cpu): what the seeds' t draws are named by
    runs: list[Record]
    quantities: list[dict[str, np.ndarray]] = field(default_factory=list)  # per run: stats.per_sample
    replicates: dict[str, np.ndarray] = field(default_factory=dict)  # stats.replicates of this group

    @property
    def first(self) -> dict:
        return self.runs[0].run

    @property
    def seeds(self) -> list:
        return [r.run["train_seed"] for r in self.runs]

    def figure(self, name: str) -> float:
        return stats.point(self.quantities, name)

    def interval(self, name: str) -> tuple[float, float]:
        return stats.interval(self.replicates[name])

    def mean(self, values) -> float:
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(values)) if values else math.nan

    def class_accuracy(self) -> dict[str, float]:
        """Per class present in the scored split: the mean over seeds of the class's accuracy."""
        out = {}
        for c, name in enumerate(CLASS_NAMES):
            if np.any(self.runs[0].predictions["label"] == c):
                out[name] = self.mean([float(q["correct"][r.predictions["label"] == c].mean())
                                       for r, q in zip(self.runs, self.quantities)])
        return out

    def seed_std(self) -> str:
        """The sample standard deviation over seeds of each seed's accuracy and next RMSE ("-" for one seed)."""
        if len(self.runs) < 2:
            return "-"
        accuracy = [stats.point([q], "accuracy") for q in self.quantities]
        rmse = [stats.point([q], "next_rmse") for q in self.quantities]
        return f"{np.std(accuracy, ddof=1):.4f} / {np.std(rmse, ddof=1):.5f}"

    def keypoint_px(self) -> float:
        """The validation keypoint error (px) at the last epoch, mean over seeds (keypoints head); NaN
        unless every seed has it (a mean over fewer seeds would not be the configuration's)."""
        values = [(r.curves.get(KEYPOINT_CURVE) or [[0, math.nan]])[-1][1] for r in self.runs]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        return self.mean(values) if finite else math.nan


@dataclass
class Section:
    """Every configuration scored on one dataset."""

    data_fingerprint: str
    configurations: list[Configuration]
    copy_last: dict[str, np.ndarray]  # stats.per_sample of copying the last visible position
    copy_last_replicates: dict[str, np.ndarray]
    baseline: dict | None
    scored: int  # samples scored
    split: str
    data_seed: object
    dataset_size: object  # data.num_samples of the whole dataset


def gather(root: Path, names: list[str] | None, live: bool = True) -> tuple[list[Record], list[str]]:
    """The records (and, with `live`, finished experiments not recorded yet) to report, and notes
    on what was left out."""
    notes = []
    records = {r.name: r for r in load_records(root)}
    if names:
        chosen = {}
        for name in names:
            if name in records:
                chosen[name] = records[name]
                continue
            ref = resolve(root, name)
            if ref is None:
                raise ReportError(f"{name!r} is neither a run record in results/runs/ nor a branch, tag, commit or "
                                  "DVC experiment; see `ls results/runs` and `dvc exp list --all-commits`")
            record, why = record_of(root, name, ref)
            if record is None:
                raise ReportError(f"revision {name!r} cannot be reported: {why}")
            chosen.setdefault(record.name, record)
        return list(chosen.values()), notes
    for name, ref in default_revisions(root) if live else []:
        if not ref.startswith("refs/exps/"):
            continue  # branches are reported by name, or recorded with `trajvid collect`
        record, why = record_of(root, name, ref)
        if record is None:
            notes.append(f"experiment {name}: {why}")
        elif record.name not in records:
            records[record.name] = record
    if not records:
        raise ReportError("no run to report: no record in results/runs/ and no finished DVC experiment "
                          "(train and evaluate first: `dvc exp run`; `trajvid collect` records a run)")
    return [records[n] for n in sorted(records)], notes


def drop_repeats(runs: list[Record]) -> tuple[list[Record], list[str]]:
    """One run per configuration and training seed: the first in `runs`' order is kept (by name by
    default; the order given with NAMEs), the others named."""
    kept, dropped, seen = [], [], {}
    for r in runs:
        key = (r.run["data_fingerprint"], r.run["code_fingerprint"], r.run["config_fingerprint"], device_kind(r.run),
               str(r.run["train_seed"]))
        if key in seen:
            dropped.append(f"{r.name} (the same configuration and training seed as {seen[key]})")
            continue
        seen[key] = r.name
        kept.append(r)
    return kept, dropped


def _base_label(r: Record) -> str:
    kind = device_kind(r.run)
    return f"{r.run['backbone']} ({r.run['head']}, {r.run['mixed_precision']}{'' if kind == 'cpu' else ', ' + kind})"


def sections(runs: list[Record], replicates: int = stats.REPLICATES) -> list[Section]:
    """The runs by dataset and scored split, then by configuration, with their bootstrap replicates."""
    by_data: dict[tuple[str, str], list[Record]] = {}
    for r in runs:
        by_data.setdefault((str(r.run["data_fingerprint"]), str(r.run["scored_split"])), []).append(r)
    out = []
    for (fingerprint, split) in sorted(by_data):
        members = by_data[(fingerprint, split)]
        ids = members[0].predictions["sample_id"]
        for r in members:
            if not np.array_equal(r.predictions["sample_id"], ids):
                raise RecordError(f"run {r.name} scored other samples than {members[0].name} on the same data "
                                  f"({fingerprint[:12]}, {split}): one of their predictions files is not what its record says")
        by_config: dict[tuple, list[Record]] = {}
        for r in members:
            by_config.setdefault((r.run["code_fingerprint"], r.run["config_fingerprint"], device_kind(r.run)), []).append(r)
        configurations = []
        for (code, config, kind), group in by_config.items():
            label = _base_label(group[0])
            if sum(_base_label(g[0]) == label for g in by_config.values()) > 1:
                label += f" [code {code[:6]}, config {config[:6]}]"  # the same backbone, head and precision otherwise
            group = sorted(group, key=lambda r: (str(r.run["train_seed"]), r.name))
            key = f"{code}/{config}" + ("" if kind == "cpu" else f"/{kind}")  # CPU runs keep the draws they had
            configurations.append(Configuration(label, key, group,
                                                [stats.per_sample(r.predictions, CLASS_NAMES) for r in group]))
        configurations.sort(key=lambda c: c.label)
        copy_last = stats.copy_last_per_sample(members[0].predictions)
        drawn = stats.replicates([c.quantities for c in configurations] + [[copy_last]],
                                 [c.key for c in configurations] + ["copy last"], replicates)
        for c, figures in zip(configurations, drawn):
            c.replicates = figures
        baseline = next((r.baseline for r in members if r.baseline and r.baseline.get("split", "test") == split), None)
        first = members[0].run
        out.append(Section(fingerprint, configurations, copy_last, drawn[-1], baseline, len(ids), split,
                           first["data_seed"], (first["params"].get("data") or {}).get("num_samples")))
    return out


# -- tables -------------------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _with_interval(value: float, bounds: tuple[float, float], spec: str) -> str:
    return f"{value:{spec}} [{bounds[0]:{spec}}, {bounds[1]:{spec}}]"


def configuration_table(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "seeds", "accuracy [95 % CI]", "worst class", "next RMSE per coord. [95 % CI]",
              "std over seeds: accuracy / next RMSE",
              "next mean distance [95 % CI]", "next Euclidean RMSE", "val keypoint px", "GFLOP/sample (train step)",
              "train min", "params", "model MB"]
    rows = []
    for c in section.configurations:
        worst = c.class_accuracy()
        name = min(worst, key=worst.get)  # ties: the first in CLASS_NAMES order
        rows.append([
            c.label, f"{', '.join(str(s) for s in c.seeds)} (n={len(c.runs)})",
            _with_interval(c.figure("accuracy"), c.interval("accuracy"), ".4f"), f"{name} {worst[name]:.3f}",
            _with_interval(c.figure("next_rmse"), c.interval("next_rmse"), ".5f"), c.seed_std(),
            _with_interval(c.figure("next_distance"), c.interval("next_distance"), ".5f"),
            _fmt(c.figure("next_euclidean_rmse"), ".5f"), _fmt(c.keypoint_px(), ".3f"),
            _fmt(c.first["gflop_per_sample"]["train_step"], ".2f"),
            _fmt(c.mean([r.run["train_time_s"] for r in c.runs]) / 60, ".1f"),
            _fmt(c.first["parameters"], ","), _fmt((c.first["model"]["size_bytes"] or math.nan) / 1e6, ".1f"),
        ])
    last = section.copy_last
    rmse = stats.point([last], "next_rmse")
    rows.append(["copy the last visible position (same samples)", "-", "-", "-",
                 _with_interval(rmse, stats.interval(section.copy_last_replicates["next_rmse"]), ".5f"), "-",
                 _with_interval(stats.point([last], "next_distance"), stats.interval(section.copy_last_replicates["next_distance"]), ".5f"),
                 _fmt(stats.point([last], "next_euclidean_rmse"), ".5f"), "-", "0", "-", "-", "-"])
    if section.baseline:
        test = section.baseline[section.split]
        per_class = test.get("per_class_accuracy") or {}
        worst = min((n for n in CLASS_NAMES if n in per_class), key=per_class.get, default=None)
        rows.append(["classical baseline (triangulate centroids + fit; no interval: no per-sample record)", "-",
                     _fmt(test["accuracy"], ".4f"), f"{worst} {per_class[worst]:.3f}" if worst else "-",
                     _fmt(test["position_rmse"], ".5f"), "-", _fmt(test.get("position_mean_distance"), ".5f"),
                     _fmt(test["position_rmse"] * math.sqrt(3), ".5f"), "-", "-", "-", "0", "-"])
    return header, rows


def _factors(c: Configuration) -> tuple[str, str, str, str]:
    """What a comparison of configurations can be about: backbone, head, precision, kind of device."""
    return c.first["backbone"], c.first["head"], c.first["mixed_precision"], device_kind(c.first)


def compared(a: Configuration, b: Configuration) -> bool:
    """Whether the differences table pairs a and b: where they differ in one of backbone, head,
    precision, kind of device and, for one backbone, code (every backbone has code of its own, so
    between backbones the code is part of the backbone). A pair that differs in two (another
    backbone under another head, another precision on other code) changes two things at once, so
    its difference answers neither question."""
    changes = sum(x != y for x, y in zip(_factors(a), _factors(b)))
    if a.first["backbone"] == b.first["backbone"]:
        changes += a.first["code_fingerprint"] != b.first["code_fingerprint"]
    return changes <= 1


def differences_note(section: Section) -> str:
    """What the differences table leaves out, where it leaves anything out ("" otherwise)."""
    configs = section.configurations
    if all(compared(a, b) for i, a in enumerate(configs) for b in configs[i + 1:]):
        return ""
    return ("Pairs of configurations that differ in one of backbone, head, precision, kind of device and (for one "
            "backbone) code; a pair that differs in two or more is left out (it changes two things at once).")


def differences(section: Section) -> list[dict]:
    """Each pair of configurations the table compares (`compared`): A - B for accuracy, next
    RMSE and next mean distance, with its paired interval (tools/stats.py) and whether it excludes 0."""
    configs = section.configurations
    pairs = [(a, b) for i, a in enumerate(configs) for b in configs[i + 1:] if compared(a, b)]
    # one head's pairs together, then the other's, then the backbones across heads
    pairs.sort(key=lambda p: (p[0].first["head"] != p[1].first["head"], p[0].first["head"]))
    out = []
    for a, b in pairs:
        row = {"a": a.label, "b": b.label}
        for name in ("accuracy", "next_rmse", "next_distance"):
            diff, low, high = stats.difference(a, b, name)
            row[name] = (diff, low, high, bool(stats.side(low, high)))
        out.append(row)
    return out


def difference_table(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["A", "B", "accuracy A − B [95 % CI]", "next RMSE A − B [95 % CI]", "next mean distance A − B [95 % CI]"]
    rows = []
    for d in differences(section):
        cells = []
        for name, spec in (("accuracy", ".4f"), ("next_rmse", ".5f"), ("next_distance", ".5f")):
            value, low, high, _ = d[name]
            cells.append(f"{value:+{spec}} [{low:+{spec}}, {high:+{spec}}] {stats.verdict(low, high)}")
        rows.append([d["a"], d["b"], *cells])
    return header, rows


def run_table(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["record", "from", "revision", "configuration", "train seed", "device × processes", "threads",
              "accuracy", "next RMSE", "next mean distance", "train min", "samples/s"]
    rows = []
    for c in section.configurations:
        for r, q in zip(c.runs, c.quantities):
            run = r.run
            revision = run["git_revision"] or {}
            rows.append([
                r.name, str(run["source"]), (revision.get("commit") or "-")[:7] + (" +changes" if revision.get("code_dirty") else ""),
                c.label, str(run["train_seed"]), f"{run['device']} ×{run['processes']}",
                ",".join(str(t) for t in run["threads"] or []) or "-",
                _fmt(stats.point([q], "accuracy"), ".4f"), _fmt(stats.point([q], "next_rmse"), ".5f"),
                _fmt(float(q["distance"].mean()), ".5f"), _fmt((run["train_time_s"] or math.nan) / 60, ".1f"),
                _fmt(run["samples_per_s"], ".1f"),
            ])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section_title(section: Section) -> str:
    return (f"Data {section.data_fingerprint[:12]} (data seed {section.data_seed}, {section.dataset_size} samples; "
            f"{section.scored} {section.split} samples scored)")


def reduced_note(runs: list[Record]) -> str:
    """Which runs are not the full protocol (params.yaml's defaults of samples and epochs)."""
    samples, epochs = DataParams().num_samples, TrainParams().epochs
    reduced = [r.name for r in runs if (r.run["params"].get("data") or {}).get("num_samples") != samples
               or (r.run["params"].get("train") or {}).get("epochs") != epochs]
    if not reduced:
        return ""
    return (f"Reduced runs (not the full {samples:,} samples × {epochs} epochs; their figures are not the full "
            f"protocol's): {', '.join(reduced)}.")


INTRO = ("Figures computed from each run's per-sample predictions on the scored split (run records, "
         "`results/runs/`). A configuration's figure is the mean over its training seeds; the 95 % interval is "
         "over training seeds (a t interval of their mean) and test samples (bootstrapped); with one seed: over test "
         "samples only. "
         "Differences are paired: both configurations on the same resampled test samples; *resolved* when the "
         "interval excludes 0. next RMSE per coord. = sqrt(mean over samples and x, y, z of the squared error); next "
         "mean distance = mean Euclidean distance; next Euclidean RMSE = sqrt(mean squared distance); world units. "
         "GFLOP per sample: forward + backward as torch's FlopCounterMode counts them (attention on the MATH backend).")


# -- charts -------------------------------------------------------------------------------------


def make_charts(section: Section, out: Path, prefix: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no browser
    import matplotlib.pyplot as plt

    styles = chart_styles(section.configurations, plt.get_cmap("tab20").colors)
    draw = {"accuracy_rmse": chart_accuracy_rmse, "per_class_accuracy": chart_per_class_accuracy,
            "learning_curves": chart_learning_curves, "error_gflop": chart_error_gflop,
            "time_tradeoff": chart_time_tradeoff}
    paths = {}
    for name in CHARTS:
        fig = draw[name](plt, section, styles)
        fig.tight_layout()
        paths[name] = out / f"{prefix}{name}.png"
        atomic_write(paths[name], lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
    return paths


VARIANTS = (("o", "-", ""), ("^", "--", "//"), ("s", ":", "xx"), ("D", "-.", ".."), ("v", (0, (1, 3)), "\\\\"))


def chart_styles(configurations: list[Configuration], palette) -> list[dict]:
    """A style per configuration, so that none is drawn like another: the backbone picks the hue
    (tab20's pairs, in the registry's order), the head its shade (keypoints dark, pooled light), and
    each further configuration of the same backbone and head (another precision, code or device)
    its own marker, line and hatch. (The default cycle of 10 colours repeated from the 11th.)"""
    order = list(BACKBONES) + sorted({c.first["backbone"] for c in configurations} - set(BACKBONES))
    seen: dict[tuple, int] = {}
    out = []
    for c in configurations:
        backbone, head = c.first["backbone"], c.first["head"]
        variant = seen[(backbone, head)] = seen.get((backbone, head), -1) + 1
        shade = study.HEADS.index(head) if head in study.HEADS else 0
        marker, line, hatch = VARIANTS[variant % len(VARIANTS)]
        out.append({"color": palette[(2 * order.index(backbone) + shade) % len(palette)], "marker": marker,
                    "line": line, "hatch": hatch})
    return out


def _errorbars(c: Configuration, name: str) -> tuple[float, float]:
    value, (low, high) = c.figure(name), c.interval(name)
    return value - low, high - value


def chart_accuracy_rmse(plt, section: Section, styles):
    """Accuracy and next RMSE per configuration with their 95 % intervals; the baseline and copy-last."""
    configs = section.configurations
    labels = [c.label for c in configs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name, title in ((left, "accuracy", "accuracy"), (right, "next_rmse", "next-position RMSE per coordinate")):
        ax.bar(range(len(configs)), [c.figure(name) for c in configs],
               yerr=np.array([_errorbars(c, name) for c in configs]).T.reshape(2, -1),
               color=[st["color"] for st in styles], hatch=[st["hatch"] for st in styles], edgecolor="0.25", capsize=4)
        ax.set_xticks(range(len(configs)), labels, rotation=20, ha="right")
        ax.set_title(f"{title} (95 % CI)")
    right.axhline(stats.point([section.copy_last], "next_rmse"), color="r", ls=":", label="copy last position")
    if section.baseline:
        left.axhline(section.baseline[section.split]["accuracy"], color="k", ls="--", label="classical baseline")
        right.axhline(section.baseline[section.split]["position_rmse"], color="k", ls="--", label="classical baseline")
    right.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylim(0, 1.02)
    return fig


def chart_per_class_accuracy(plt, section: Section, styles):
    fig, ax = plt.subplots(figsize=(11, 4))
    configs = section.configurations
    width = 0.8 / max(1, len(configs))
    for i, c in enumerate(configs):
        per_class = c.class_accuracy()
        ax.bar([j + i * width for j in range(len(CLASS_NAMES))], [per_class.get(n, math.nan) for n in CLASS_NAMES], width,
               label=c.label, color=styles[i]["color"], hatch=styles[i]["hatch"], edgecolor="0.25")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(CLASS_NAMES))], CLASS_NAMES)
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy per class (mean over seeds)")
    ax.legend(fontsize=8)
    return fig


def chart_learning_curves(plt, section: Section, styles):
    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    for ax, curve in zip(axes, CURVES):
        for i, c in enumerate(section.configurations):
            for j, r in enumerate(c.runs):
                points = r.curves.get(curve)
                if points:
                    ax.plot(*zip(*points), color=styles[i]["color"], ls=styles[i]["line"], alpha=0.85,
                            marker=styles[i]["marker"], ms=3,
                            label=c.label if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_title(curve)
        if curve.endswith("rmse"):
            ax.set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost and lower error), by cost."""
    front = []
    for i, (cost, error) in enumerate(points):
        if not any((c <= cost and e <= error) and (c < cost or e < error) for c, e in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def chart_error_gflop(plt, section: Section, styles):
    """Next RMSE against GFLOP per sample (train step), the Pareto front joined."""
    configs = section.configurations
    points = [(c.first["gflop_per_sample"]["train_step"], c.figure("next_rmse")) for c in configs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (c, (x, y)) in enumerate(zip(configs, points)):
        low, high = _errorbars(c, "next_rmse")
        ax.errorbar([x], [y], yerr=[[low], [high]], fmt=styles[i]["marker"], color=styles[i]["color"], label=c.label,
                    capsize=3)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("GFLOP per sample (train step)")
    ax.set_ylabel("next RMSE per coordinate")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("error against compute")
    return fig


def chart_time_tradeoff(plt, section: Section, styles):
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, c in enumerate(section.configurations):
        minutes = [(r.run["train_time_s"] or math.nan) / 60 for r in c.runs]
        left.scatter(minutes, [float(q["correct"].mean()) for q in c.quantities], color=styles[i]["color"],
                     marker=styles[i]["marker"], label=c.label)
        right.scatter(minutes, [stats.point([q], "next_rmse") for q in c.quantities], color=styles[i]["color"],
                      marker=styles[i]["marker"])
    for ax, title in ((left, "accuracy"), (right, "next RMSE per coordinate")):
        ax.set_xlabel("training time (min)")
        ax.set_title(f"{title}, one point per run")
    right.set_yscale("log")
    left.legend(fontsize=8)
    return fig


# -- the report ---------------------------------------------------------------------------------


ROBUSTNESS_NOTE = ("Each shifted set holds `robustness.num_samples` new samples (data seed `robustness.seed` of params.yaml, none of "
                   "them seen in training) with the data params of its shift changed (`robustness.shifts`); "
                   "every sample of a set is scored. A cell is the mean over the configuration's seeds; "
                   "no interval (the records keep per-sample predictions of the test split only).")


def robustness_table(section: Section) -> tuple[list[str], list[list[str]]] | None:
    """Shift x model: accuracy / next RMSE per coordinate on every shifted set (metrics/robustness.json
    of the records that have it; the mean over a configuration's seeds), the in-distribution test
    figure first, the baseline and copy-last on the same shifted samples last. A shift is a column
    per shifted dataset (name and fingerprint): sets of other params never share one. None when
    no run of the section has robustness figures."""
    columns: dict[tuple[str, str], dict] = {}  # (shift, data fingerprint) -> one run's figures for it
    for c in section.configurations:
        for r in c.runs:
            for name, shift in ((r.robustness or {}).get("shifts") or {}).items():
                columns.setdefault((name, shift["data"]["fingerprint"]), shift)
    if not columns:
        return None
    ambiguous = {name for name, _ in columns if sum(n == name for n, _ in columns) > 1}
    header = ["configuration", "seeds", f"in distribution ({section.split})"] + [
        f"{name} ({fp[:8]})" if name in ambiguous else name for name, fp in columns]

    def cell(figures: list[dict]) -> str:
        if not figures:
            return "-"
        return f"{np.mean([f['accuracy'] for f in figures]):.3f} / {np.mean([f['position_rmse'] for f in figures]):.5f}"

    rows = []
    for c in section.configurations:
        scored = [(r, q) for r, q in zip(c.runs, c.quantities) if r.robustness]  # the same runs in every cell
        if not scored:
            continue
        seeds = [q for _, q in scored]
        row = [c.label, ", ".join(str(r.run["train_seed"]) for r, _ in scored),
               f"{stats.point(seeds, 'accuracy'):.3f} / {stats.point(seeds, 'next_rmse'):.5f}"]
        for name, fp in columns:
            figures = [r.robustness["shifts"][name]["model"] for r, _ in scored
                       if (r.robustness["shifts"].get(name) or {}).get("data", {}).get("fingerprint") == fp]
            row.append(cell(figures) + ("" if len(figures) in (0, len(scored)) else f" (n={len(figures)})"))
        rows.append(row)
    test = (section.baseline or {}).get(section.split)
    rows.append(["classical baseline", "-", cell([test]) if test else "-"] + [cell([s["baseline"]]) for s in columns.values()])
    rows.append(["copy the last visible position", "-", f"- / {stats.point([section.copy_last], 'next_rmse'):.5f}"]
                + [f"- / {s['copy_last']['position_rmse']:.5f}" for s in columns.values()])
    return header, rows


def render(sections_: list[Section], notes: list[str], heading: int = 2, params: dict | None = None) -> str:
    """The tables of every section as markdown (what comparison.md and docs/results.md hold); a
    section holding runs of the study under `params` (params.yaml) opens with its answer and grid."""
    h = "#" * heading
    parts = []
    for s in sections_:
        parts += [f"{h} {section_title(s)}", ""]
        found = study.study_of(s, params)
        for title, paragraphs, table in study.blocks(found) if found else []:
            parts += [f"{h}# {title}", ""]
            for paragraph in paragraphs:
                parts += [paragraph, ""]
            if table:
                parts += [markdown_table(*table), ""]
        parts += [f"{h}# By configuration", "", markdown_table(*configuration_table(s)), ""]
        shifted = robustness_table(s)
        if shifted:
            parts += [f"{h}# Robustness: accuracy / next RMSE per coordinate on shifted data", "", ROBUSTNESS_NOTE, "",
                      markdown_table(*shifted), ""]
        if len(s.configurations) > 1:
            note = differences_note(s)
            parts += [f"{h}# Paired differences", "", *([note, ""] if note else []), markdown_table(*difference_table(s)), ""]
        parts += [f"{h}# Every run", "", markdown_table(*run_table(s)), ""]
    if notes:
        parts += ["Notes: " + " ".join(notes), ""]
    return "\n".join(parts)


def short_table(sections_: list[Section], params: dict | None = None) -> str:
    """The README's short version: the study's answer (where a section holds it), then per
    configuration of every section accuracy and next RMSE with intervals, the section's copy-last
    and baseline lines, and which data it is."""
    answers = [study.answer(found) for found in (study.study_of(s, params) for s in sections_) if found]
    rows = []
    for s in sections_:
        for c in s.configurations:
            rows.append([c.label, str(len(c.runs)), _with_interval(c.figure("accuracy"), c.interval("accuracy"), ".4f"),
                         _with_interval(c.figure("next_rmse"), c.interval("next_rmse"), ".5f"),
                         _fmt(c.first["gflop_per_sample"]["train_step"], ".2f"), s.data_fingerprint[:12]])
        rows.append(["copy the last visible position", "-", "-",
                     _fmt(stats.point([s.copy_last], "next_rmse"), ".5f"), "0", s.data_fingerprint[:12]])
        if s.baseline:
            rows.append(["classical baseline", "-", _fmt(s.baseline[s.split]["accuracy"], ".4f"),
                         _fmt(s.baseline[s.split]["position_rmse"], ".5f"), "-", s.data_fingerprint[:12]])
    table = markdown_table(["configuration", "seeds", "accuracy [95 % CI]", "next RMSE per coord. [95 % CI]",
                            "GFLOP/sample", "data"], rows)
    return "\n\n".join([*answers, table])


def study_params(root: Path) -> dict | None:
    """params.yaml of `root`, which defines the study's protocol (None without one)."""
    path = root / "params.yaml"
    if not path.is_file():
        return None
    import yaml

    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else None


BEGIN, END = "<!-- results: generated by `trajvid report --publish` from results/runs/; do not edit -->", "<!-- /results -->"


def replace_generated(text: str, generated: str, where: str) -> str:
    """`text` with the part between BEGIN and END replaced by `generated`."""
    if BEGIN not in text or END not in text:
        raise ReportError(f"{where} has no `{BEGIN}` ... `{END}` markers to write the results between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{generated.strip()}\n{END}{tail}"


def published_texts(root: Path, replicates: int = stats.REPLICATES) -> dict[Path, str]:
    """docs/results.md and README.md as `--publish` writes them: their generated parts from the
    records in git alone (no live experiment, no model, no DVC cache)."""
    records = load_records(root)
    runs, repeats = drop_repeats(records)
    notes = [reduced_note(runs)] if reduced_note(runs) else []
    if repeats:
        notes.append(f"Left out as repeats: {', '.join(repeats)}.")
    parts = sections(runs, replicates) if runs else []
    params = study_params(root)
    empty = "No run is recorded in results/runs/ yet."
    texts = {}
    for path, generated in ((root / "docs" / "results.md", render(parts, notes, 3, params) if parts else empty),
                            (root / "README.md", short_table(parts, params) if parts else empty)):
        texts[path] = replace_generated(path.read_text(), generated, str(path.relative_to(root)))
    return texts


def publish(root: Path, replicates: int = stats.REPLICATES) -> list[Path]:
    """Write the generated parts of docs/results.md and README.md from the records."""
    written = []
    for path, text in published_texts(root, replicates).items():
        if path.read_text() != text:
            write_text(path, text)
        written.append(path)
    return written


def report(root: Path | str = ".", names: list[str] | None = None, out: Path | str = "reports",
           publish_docs: bool = False, replicates: int = stats.REPLICATES) -> dict:
    root, out = Path(root).resolve(), Path(out)
    if not out.is_absolute():
        out = root / out
    found, notes = gather(root, names)
    if publish_docs:
        publish(root, replicates)  # from the records alone
    runs, repeats = drop_repeats(found)
    if repeats:
        notes.append(f"Left out as repeats: {', '.join(repeats)}.")
    reduced = reduced_note(runs)
    if reduced:
        notes.insert(0, reduced)
    parts = sections(runs, replicates)
    out.mkdir(parents=True, exist_ok=True)
    charts = {}
    for s in parts:
        prefix = "" if len(parts) == 1 else f"data-{s.data_fingerprint[:8]}-"
        charts.update({f"{prefix}{k}": v for k, v in make_charts(s, out, prefix).items()})
    params = study_params(root)
    body = render(parts, notes, params=params)
    md = ["# Backbone comparison", "", INTRO, "", body, "## Charts", ""] + [f"![{n}]({p.name})" for n, p in charts.items()]
    write_text(out / "comparison.md", "\n".join(md) + "\n")
    blocks = []
    for s in parts:
        blocks.append(f"<h2>{html.escape(section_title(s))}</h2>")
        found = study.study_of(s, params)
        for title, paragraphs, table in study.blocks(found) if found else []:
            blocks.append(f"<h3>{html.escape(title)}</h3>" + "".join(f"<p>{html.escape(p.replace('**', ''))}</p>" for p in paragraphs)
                          + (html_table(*table) if table else ""))
        blocks.append("<h3>By configuration</h3>" + html_table(*configuration_table(s)))
        shifted = robustness_table(s)
        if shifted:
            blocks.append(f"<h3>Robustness</h3><p>{html.escape(ROBUSTNESS_NOTE)}</p>" + html_table(*shifted))
        if len(s.configurations) > 1:
            note = differences_note(s)
            blocks.append("<h3>Paired differences</h3>" + (f"<p>{html.escape(note)}</p>" if note else "")
                          + html_table(*difference_table(s)))
        blocks.append("<h3>Every run</h3>" + html_table(*run_table(s)))
    images = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{n.replace('_', ' ')}</figcaption></figure>" for n, p in charts.items())
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>trajvid: backbone comparison</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:13px}th{background:#eee}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>Backbone comparison</h1><p>{html.escape(INTRO)}</p>"
        + "".join(f"<p><b>{html.escape(n)}</b></p>" for n in notes) + "".join(blocks)
        + "<h2>Charts</h2>" + images + "</body></html>\n"
    )
    write_text(out / "comparison.html", page)
    published = [str(root / "docs" / "results.md"), str(root / "README.md")] if publish_docs else []
    return {"runs": len(runs), "sections": len(parts), "configurations": sum(len(s.configurations) for s in parts),
            "out": str(out), "charts": [str(p) for p in charts.values()], "published": published}
