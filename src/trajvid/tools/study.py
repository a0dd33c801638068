"""The study: every backbone (the frame2d control included) x head x training seed under the
protocol of params.yaml, what of it is recorded, and the answer in plain words, all generated from
the run records (what `trajvid report` shows first and `--publish` writes into docs/results.md and
the README).

The grid's networks are the backbones with a block in params.yaml's `models` (the registry's,
in that order). A *cell* of the grid is a backbone and a head; its runs are those whose config fingerprint is the
one params.yaml gives with `model` and `head.type` set to the cell's (tools/records.py: every
param that changes the result but the training seed; `train.threads` and the other runtime keys
left out), so a run of other data, precision, sizes, epochs or loss weights is not a run of the
study, whatever its name. Within a cell, runs of different code (code fingerprint) are different
configurations; the cell's figures are those of the configuration holding the most of the grid's
seeds (ties: the one whose runs carry robustness scores, then by label), and the grid names the
others. The answer is one kind of device's grid (the kind holding the most of the grid's runs; cpu
on a tie): runs of the same cell on another kind (a GPU's arithmetic is not the CPU's) are kept
apart, named in the grid and never pooled or ranked with it. Every figure of the answer is one the
tables beside it show (same replicates: tools/stats.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from trajvid.backbones import BACKBONES
from trajvid.data.scene import CLASS_NAMES
from trajvid.tools import stats
from trajvid.tools.records import config_fingerprint, device_kind

HEADS = ("keypoints", "pooled")
SEEDS = (0, 1, 2)
CONTROL = "frame2d"  # a per-frame 2D network: no temporal mixing before the head


def networks(params: dict) -> tuple[str, ...]:
    """The study's backbones: those of the registry with a block in params.yaml's `models`."""
    return tuple(name for name in (params.get("models") or {}) if name in BACKBONES)


def protocol(params: dict) -> dict[str, tuple[str, str]]:
    """config fingerprint -> (backbone, head) for every cell under `params` (params.yaml's contents)."""
    out = {}
    for backbone in networks(params):
        for head in HEADS:
            cell = copy.deepcopy(params)
            cell["model"] = backbone
            cell["head"] = {**(cell.get("head") or {}), "type": head}
            out[config_fingerprint(cell)] = (backbone, head)
    return out


def _in_grid(seed) -> bool:
    return type(seed) is int and seed in SEEDS


def _grid_seeds(c) -> list:
    return sorted({s for s in c.seeds if _in_grid(s)})


def _grid_part(c):
    """`c` with only its runs of the grid's seeds, their replicates drawn anew on the section's sample
    draws (stats.replicates: the same draws for every group of a section): `c` itself when it has no
    other seed, None when it has none of the grid's. A figure of the study is a mean over the grid's
    seeds, whatever other seeds a configuration has been run with."""
    keep = [i for i, r in enumerate(c.runs) if _in_grid(r.run["train_seed"])]
    if len(keep) == len(c.runs):
        return c
    if not keep:
        return None
    quantities = [c.quantities[i] for i in keep]
    [replicates] = stats.replicates([quantities], [c.key], len(c.replicates["next_rmse"]))
    return dataclasses.replace(c, runs=[c.runs[i] for i in keep], quantities=quantities, replicates=replicates)


@dataclass
class Study:
    section: object  # report.Section: the dataset the protocol's runs were scored on
    cells: dict[tuple[str, str], list]  # (backbone, head) -> its configurations on `device`, the chosen one first
    backbones: tuple[str, ...]  # the grid's networks (networks())
    device: str = "cpu"  # the kind of device of every run the answer counts (records.device_kind)
    elsewhere: dict[tuple[str, str], list] = field(default_factory=dict)  # the cells' configurations on other kinds
    placed: set[int] = field(default_factory=set)  # id() of the section's configurations in a cell (whole or in part)
    beyond: dict[tuple[str, str], list] = field(default_factory=dict)  # per cell: runs of seeds outside SEEDS, not counted

    @property
    def size(self) -> int:
        return len(self.backbones) * len(HEADS) * len(SEEDS)

    def chosen(self, backbone: str, head: str):
        return (self.cells.get((backbone, head)) or [None])[0]

    def missing(self) -> list[tuple[str, str, list[int]]]:
        """(backbone, head, the grid's seeds its chosen configuration lacks) for every cell not complete."""
        out = []
        for backbone in self.backbones:
            for head in HEADS:
                c = self.chosen(backbone, head)
                lacking = [s for s in SEEDS if c is None or s not in _grid_seeds(c)]
                if lacking:
                    out.append((backbone, head, lacking))
        return out

    def done(self) -> int:
        return self.size - sum(len(lacking) for _, _, lacking in self.missing())


def study_of(section, params: dict | None) -> Study | None:
    """The study's cells among `section`'s configurations; None when none of them is one, and for
    a section scored on another split than test (the ensemble picks seeds on validation)."""
    if not params or section.split != "test":
        return None
    cells_of = protocol(params)
    by_kind: dict[str, dict[tuple[str, str], list]] = {}
    placed, beyond = set(), {}
    for c in section.configurations:
        cell = cells_of.get(c.first["config_fingerprint"])
        if not cell:
            continue
        placed.add(id(c))
        beyond.setdefault(cell, []).extend(r for r in c.runs if not _in_grid(r.run["train_seed"]))
        part = _grid_part(c)
        if part is not None:
            by_kind.setdefault(device_kind(c.first), {}).setdefault(cell, []).append(part)
    beyond = {cell: runs for cell, runs in beyond.items() if runs}
    if not by_kind:
        return None  # no run of the grid's seeds: nothing of the study to show
    for cells in by_kind.values():
        for configurations in cells.values():
            configurations.sort(key=lambda c: (-len(_grid_seeds(c)), not all(r.robustness for r in c.runs), c.label))
    # the kind whose grid is furthest along (its chosen configurations' seeds); cpu, then by name, on a tie
    device = min(by_kind, key=lambda k: (-sum(len(_grid_seeds(cs[0])) for cs in by_kind[k].values()), k != "cpu", k))
    elsewhere: dict[tuple[str, str], list] = {}
    for kind in sorted(k for k in by_kind if k != device):
        for cell, configurations in by_kind[kind].items():
            elsewhere.setdefault(cell, []).extend(configurations)
    return Study(section, by_kind[device], networks(params), device, elsewhere, placed, beyond)


def _seed_list(seeds) -> str:
    return ", ".join(str(s) for s in sorted(set(seeds), key=lambda s: (not isinstance(s, int), s if isinstance(s, int) else 0, str(s))))


def _beyond_seeds(study: Study, runs: list) -> str:
    """The seeds of runs outside the grid, each kind of device's named where any is not the answer's."""
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(device_kind(r.run), []).append(r.run["train_seed"])
    if set(by_kind) == {study.device}:
        return _seed_list(by_kind[study.device])
    return ", ".join(f"{_seed_list(seeds)} on {kind}" for kind, seeds in sorted(by_kind.items()))


def _seeds(c) -> str:
    """ "seed 0" or "seeds 0, 1": a configuration's seeds, as the grid's cells name them."""
    return ("seed " if len(set(c.seeds)) == 1 else "seeds ") + _seed_list(c.seeds)


def grid_table(study: Study) -> tuple[list[str], list[list[str]]]:
    """Backbone x head: the training seeds recorded (the chosen configuration's, then any other code's)."""
    rows = []
    for backbone in study.backbones:
        row = [backbone + (" (control)" if backbone == CONTROL else "")]
        for head in HEADS:
            configurations = study.cells.get((backbone, head)) or []
            apart = "".join(f"; on {device_kind(c.first)} (not counted): {_seeds(c)}"
                            for c in study.elsewhere.get((backbone, head)) or [])
            beyond = study.beyond.get((backbone, head))
            if beyond:
                apart += f"; seeds outside the grid (not counted): {_beyond_seeds(study, beyond)}"
            if not configurations:
                row.append("not run" + apart)
                continue
            first, *others = configurations
            text = _seeds(first) + (" (complete)" if _grid_seeds(first) == list(SEEDS) else "")
            text += "".join(f"; other code {c.first['code_fingerprint'][:6]}: {_seeds(c)}" for c in others)
            row.append(text + apart)
        rows.append(row)
    return ["backbone", *(f"{h} head" for h in HEADS)], rows


def _heads_code(study: Study, backbone: str) -> str | None:
    """Each head's code fingerprint ("keypoints 871434, pooled 9c851c") where `backbone`'s two heads'
    chosen configurations ran different code (so a difference between its heads may not be the
    head's alone); None where they ran the same code or a head is not run."""
    chosen = {h: study.chosen(backbone, h) for h in HEADS}
    if None in chosen.values() or len({c.first["code_fingerprint"] for c in chosen.values()}) == 1:
        return None
    return ", ".join(f"{h} {c.first['code_fingerprint'][:6]}" for h, c in chosen.items())


def heads_table(study: Study) -> tuple[list[str], list[list[str]]] | None:
    """Per backbone with both heads: each head's next RMSE and the paired difference pooled − keypoints."""
    rows = []
    for backbone in study.backbones:
        pair = [study.chosen(backbone, h) for h in HEADS]
        if None in pair:
            continue
        keypoints, pooled = pair
        value, low, high = stats.difference(pooled, keypoints, "next_rmse")
        code = _heads_code(study, backbone)
        rows.append([backbone, *(f"{c.figure('next_rmse'):.5f} [{c.interval('next_rmse')[0]:.5f}, "
                                 f"{c.interval('next_rmse')[1]:.5f}] (n={len(c.runs)})" for c in pair),
                     f"{value:+.5f} [{low:+.5f}, {high:+.5f}] {stats.verdict(low, high)}"
                     + (f" (different code: {code})" if code else "")])
    if not rows:
        return None
    return ["backbone", "keypoints head: next RMSE [95 % CI]", "pooled head: next RMSE [95 % CI]",
            "pooled − keypoints [95 % CI]"], rows


@dataclass
class Fixed:
    """One fixed model's per-sample quantities with replicates on the section's sample draws (so a
    difference to a configuration or another fixed model is paired); no seed level to draw."""

    quantities: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]

    def figure(self, name: str) -> float:
        return stats.point([self.quantities], name)

    def interval(self, name: str) -> tuple[float, float]:
        return stats.interval(self.replicates[name])


def _fixed(study: Study, quantities: dict[str, np.ndarray], key: str) -> Fixed:
    count = len(study.section.configurations[0].replicates["next_rmse"])
    [replicates] = stats.replicates([[quantities]], [key], count)
    return Fixed(quantities, replicates)


ENSEMBLE_NOTE = ("The equal-weight ensemble of each network's best seed under one head (best: the lowest validation "
                 "next RMSE at the last epoch, never the scored split), from the stored predictions: the members' class "
                 "probabilities and next positions averaged per sample, as `trajvid ensemble` of the same records does. "
                 "It is compared with its best member, again chosen on validation (the lowest validation next RMSE of "
                 "all members), never on the test split: two fixed models, so the interval covers the test samples "
                 "only, on the same draws.")


@dataclass
class Ensemble:
    """See ENSEMBLE_NOTE."""

    head: str
    members: list[tuple[str, object]]  # (backbone, record), in the grid's order
    combined: Fixed
    reference: tuple[str, object, Fixed]  # the member best on validation: (backbone, record, its figures)
    left_out: list[str]  # networks run under the head without a validation curve
    gap: tuple[float, float, float]  # ensemble − that member in next RMSE, with its 95 % interval (stats.difference)


def best_seed_ensemble(study: Study, head: str) -> Ensemble | None:
    """The ensemble of `head`'s networks (None with fewer than two that have a validation curve)."""
    members, left_out, validation = [], [], {}
    ran = {b: c for b in study.backbones if (c := study.chosen(b, head)) is not None}
    for backbone, c in ran.items():
        val = [(r.curves.get("val/position_rmse") or [[0, math.nan]])[-1][1] for r in c.runs]
        finite = [(v, i) for i, v in enumerate(val) if isinstance(v, (int, float)) and math.isfinite(v)]
        if finite:
            members.append((backbone, c.runs[min(finite)[1]]))
            validation[backbone] = min(finite)[0]
        else:
            left_out.append(backbone)
    if len(members) < 2:
        return None
    tables = [r.predictions for _, r in members]
    first = tables[0]
    mean = {k: first[k] for k in ("sample_id", "label", *(f"{p}_{c}" for p in ("target", "last") for c in "xyz"))}
    for column in (*(f"prob_{c}" for c in CLASS_NAMES), *(f"next_{c}" for c in "xyz")):
        mean[column] = np.mean([t[column].astype(np.float64) for t in tables], axis=0)
    combined = _fixed(study, stats.per_sample(mean, CLASS_NAMES), f"ensemble {head}: " + " + ".join(r.name for _, r in members))
    backbone, record = min(members, key=lambda m: validation[m[0]])  # the member best on validation
    reference = _fixed(study, stats.per_sample(record.predictions, CLASS_NAMES), f"run {record.name}")
    return Ensemble(head, members, combined, (backbone, record, reference), left_out,
                    stats.difference(combined, reference, "next_rmse"))


def ensemble_table(study: Study) -> tuple[list[str], list[list[str]]] | None:
    rows = []
    for head in HEADS:
        found = best_seed_ensemble(study, head)
        if found is None:
            continue
        e, (backbone, record, reference), (value, low, high) = found.combined, found.reference, found.gap
        rows.append([head, ", ".join(f"{b} seed {r.run['train_seed']}" for b, r in found.members),
                     f"{e.figure('accuracy'):.4f} [{e.interval('accuracy')[0]:.4f}, {e.interval('accuracy')[1]:.4f}]",
                     f"{e.figure('next_rmse'):.5f} [{e.interval('next_rmse')[0]:.5f}, {e.interval('next_rmse')[1]:.5f}]",
                     f"{backbone} seed {record.run['train_seed']}: {reference.figure('next_rmse'):.5f}",
                     f"{value:+.5f} [{low:+.5f}, {high:+.5f}] {stats.verdict(low, high)}"])
    if not rows:
        return None
    return ["head", "members (each network's best seed on validation)", "accuracy [95 % CI]",
            "next RMSE per coord. [95 % CI]", "its best member on validation: next RMSE",
            "ensemble − that member [95 % CI]"], rows


def _order(configurations: list) -> list:
    return sorted(configurations, key=lambda c: c.figure("next_rmse"))


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _head_paragraph(study: Study, head: str) -> str | None:
    ran = {b: study.chosen(b, head) for b in study.backbones if study.chosen(b, head) is not None}
    if not ran:
        return None
    ranked = _order(list(ran.values()))
    best = ranked[0]
    backbone_of = {id(c): b for b, c in ran.items()}
    seeds = sorted({len(c.runs) for c in ranked})
    n = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''} each" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds each"
    figure = (f"RMSE per coordinate {best.figure('next_rmse'):.5f} "
              f"[{best.interval('next_rmse')[0]:.5f}, {best.interval('next_rmse')[1]:.5f}]")
    alone = backbone_of[id(best)] if len(ranked) == 1 else None  # one network: no ranking
    text = [f"**{head} head** ({len(ranked)} of {len(study.backbones)} networks run, {n}). "
            + (f"Only **{alone}** is run under this head, so there is no ranking yet: next-position {figure}." if alone else
               f"Lowest next-position error: **{backbone_of[id(best)]}**, {figure}.")]
    if not alone:
        gaps = []
        for c in ranked[1:]:
            value, low, high = stats.difference(c, best, "next_rmse")
            gaps.append(f"{backbone_of[id(c)]} {c.figure('next_rmse'):.5f} ({value:+.5f} [{low:+.5f}, {high:+.5f}], "
                        f"{stats.verdict(low, high)})")
        text.append("The others, with their paired difference to it: " + "; ".join(gaps) + ".")
        single = [backbone_of[id(c)] for c in ranked if len(c.runs) == 1]
        if single:
            text.append(f"One seed only (n=1) for {_names(single)}: "
                        f"{'its' if len(single) == 1 else 'their'} own interval covers the test samples only and says "
                        "nothing about another seed.")
    accuracy = (ranked[0].figure("accuracy") if alone  # its figure, as its table row; else the lowest of any run
                else min(stats.point([q], "accuracy") for c in ranked for q in c.quantities))
    shown = f"{math.floor(accuracy * 1e4) / 1e4:.4f}"  # rounded down: never above what a network reached
    if accuracy == 1:
        text.append(f"Accuracy: 1.0000 for {alone or 'every network run'} (every test sample classified correctly).")
    else:
        text.append(f"Accuracy: {alone} {shown}." if alone else f"Accuracy: {shown} or higher for every run.")
    control = ran.get(CONTROL)
    if control is None:
        text.append(f"The {CONTROL} control is not run under this head yet, so nothing here says whether seeing "
                    "frames together helps.")
    elif len(ran) > 1:  # (the control alone: nothing to hold against it)
        better, worse, unresolved = [], [], []
        for backbone, c in ran.items():
            if backbone == CONTROL:
                continue
            _, low, high = stats.difference(c, control, "next_rmse")
            {-1: better, 1: worse, 0: unresolved}[stats.side(low, high)].append(backbone)
        text.append(f"Against the {CONTROL} control (a per-frame 2D network that never sees two frames together; "
                    f"next RMSE {control.figure('next_rmse'):.5f}): lower error, resolved: {_names(better)}; "
                    f"higher error, resolved: {_names(worse)}; not resolved: {_names(unresolved)}.")
    if head == "keypoints" and len(ranked) >= 2:
        px = {backbone_of[id(c)]: c.keypoint_px() for c in ranked}
        if all(np.isfinite(v) for v in px.values()):
            same = [backbone_of[id(c)] for c in ranked] == sorted(px, key=px.get)
            text.append("Their validation keypoint errors (px: " + ", ".join(f"{b} {v:.3f}" for b, v in px.items())
                        + ") put these " + str(len(px)) + " networks in " + ("the same order as their next RMSE (point "
                                                                             "estimates)." if same else "another order than their next RMSE."))
    found = best_seed_ensemble(study, head)
    if found is not None:
        e, (backbone, record, _), (value, low, high) = found.combined, found.reference, found.gap
        text.append(f"The ensemble of the best seed (chosen on validation) of each of {len(found.members)} networks "
                    f"({', '.join(b for b, _ in found.members)}) reaches {e.figure('next_rmse'):.5f}, "
                    f"{value:+.5f} [{low:+.5f}, {high:+.5f}] against its "
                    f"member {backbone} seed {record.run['train_seed']} ({stats.verdict(low, high)})"
                    + (f"; {_names(found.left_out)} left out (no validation curve)" if found.left_out else "") + ".")
    copy_last = _against_copy_last(study, {backbone_of[id(c)]: c for c in ranked})
    if copy_last:
        text.append(copy_last)
    text.append(_scale(study.section, best.figure("next_rmse"), f"{alone}'s" if alone else "the best network's"))
    return " ".join(text)


def _against_copy_last(study: Study, ran: dict) -> str | None:
    """The networks (name -> configuration) not resolved below copying the last visible position, on
    the same resampled test samples; None when every one is (the learning did something)."""
    section = study.section
    copy_last = Fixed(section.copy_last, section.copy_last_replicates)
    above, unresolved = [], []
    for backbone, c in ran.items():
        _, low, high = stats.difference(c, copy_last, "next_rmse")
        {1: above, 0: unresolved}.get(stats.side(low, high), []).append(backbone)
    if not above and not unresolved:
        return None
    return (f"Against copying the last visible position (no learning; next RMSE {copy_last.figure('next_rmse'):.5f}): "
            f"higher error, resolved: {_names(above)}; not resolved: {_names(unresolved)}; lower error, resolved: "
            f"{_names([b for b in ran if b not in above + unresolved])}.")


def _scale(section, best: float, whose: str) -> str:
    """The classical baseline and copy-last beside the best network's next RMSE (`whose`: how to name it)."""
    copy_last = f"copying the last position {stats.point([section.copy_last], 'next_rmse'):.5f}"
    baseline = ((section.baseline or {}).get(section.split) or {}).get("position_rmse")
    if not isinstance(baseline, (int, float)) or not math.isfinite(baseline):
        return f"For scale: {copy_last}."
    if baseline > 0 and best > baseline:
        ratio = f"{best / baseline:.1f} × lower than {whose}"
    elif best > 0 and baseline > best:
        ratio = f"{baseline / best:.1f} × higher than {whose}"
    else:
        ratio = f"equal to {whose}" if baseline == best else f"beside {whose}"
    return f"For scale: the classical baseline (no learning) {baseline:.5f}, {ratio}; {copy_last}."


VALIDATION_CURVE = "val/position_rmse"  # DVCLive's per-epoch validation next RMSE
LAST_EPOCHS = 3  # how far back from the last epoch the end-of-training check looks
FLAT = 0.01  # a relative change of the validation error below this is "less than 1 %"


def _by_epoch(curve) -> dict[int, float]:
    """A DVCLive series [[epoch, value], ...] as epoch -> value (an epoch logged twice: its last value)."""
    return {int(step): float(value) for step, value in curve or []}


def _changes(falls: dict[str, float]) -> str:
    """How the validation error changed per configuration ("name" -> mean relative fall), in words."""
    fell = {n: f for n, f in falls.items() if f >= FLAT}
    flat = [n for n, f in falls.items() if abs(f) < FLAT]
    rose = {n: -f for n, f in falls.items() if f <= -FLAT}

    def extent(group: dict[str, float]) -> str:
        low, high = min(group, key=group.get), max(group, key=group.get)
        return f"by {100 * group[low]:.0f} %" if low == high else (
            f"by {100 * group[low]:.0f} % for {low} to {100 * group[high]:.0f} % for {high}")

    if len(fell) == len(falls):
        return f"fell for every configuration, {extent(fell)}"
    out = [f"fell for {', '.join(fell)} ({extent(fell)})"] if fell else []
    if flat:
        out.append(f"changed by less than {100 * FLAT:.0f} % for {', '.join(flat)}")
    if rose:
        out.append(f"rose for {', '.join(rose)} ({extent(rose)})")
    return ", ".join(out)


def _end_of_training(study: Study) -> str | None:
    """Where training stopped on the validation curves: per chosen configuration, the change of the
    validation next RMSE (mean over seeds) over the last LAST_EPOCHS epochs and over the last one,
    what the learning rate did meanwhile, and per head since which epoch the networks' mean curves
    have kept their final order. None when no configuration has a curve longer than LAST_EPOCHS."""
    curves_of, left_out, lr = {}, [], []
    for backbone in study.backbones:
        for head in HEADS:
            c = study.chosen(backbone, head)
            if c is None:
                continue
            curves = [_by_epoch(r.curves.get(VALIDATION_CURVE)) for r in c.runs]
            end = max(curves[0], default=0)
            wanted = range(end - LAST_EPOCHS, end + 1)
            if (end <= LAST_EPOCHS or any(set(cv) != set(curves[0]) for cv in curves)
                    or not all(e in cv and math.isfinite(cv[e]) and cv[e] > 0 for cv in curves for e in wanted)):
                left_out.append(f"{backbone} ({head})")
                continue
            curves_of[(backbone, head)] = curves
            for r in c.runs:
                rate = _by_epoch(r.curves.get("lr"))
                if end - LAST_EPOCHS in rate and end in rate:
                    lr.append((rate[end - LAST_EPOCHS], rate[end]))
    if not curves_of:
        return None
    name = {cell: f"{cell[0]} ({cell[1]})" for cell in curves_of}
    ends = sorted({max(cvs[0]) for cvs in curves_of.values()})
    of = f"{ends[0]}" if len(ends) == 1 else f"{ends[0]}–{ends[-1]}"

    def falls(back: int) -> dict[str, float]:
        return {name[cell]: float(np.mean([1 - cv[max(cv)] / cv[max(cv) - back] for cv in cvs]))
                for cell, cvs in curves_of.items()}

    over = falls(LAST_EPOCHS)
    text = f"over the last {LAST_EPOCHS} of {of} epochs"
    if lr:
        starts, stops = sorted({f"{a:.2g}" for a, _ in lr}), sorted({f"{b:.2g}" for _, b in lr})
        text += (f", while the learning rate went from {' to '.join(dict.fromkeys([starts[0], starts[-1]]))} to "
                 f"{' to '.join(dict.fromkeys([stops[0], stops[-1]]))}")
    text += (f", the validation next RMSE (mean over seeds) {_changes(over)}; over the last epoch alone it "
             f"{_changes(falls(1))}; the figures are those of this protocol's {of}-epoch schedule")
    if any(f >= FLAT for f in over.values()):
        text += ", and a longer one might lower them or change their order"
    for head in HEADS:
        cells = [cell for cell in curves_of if cell[1] == head]
        epochs = sorted(curves_of[cells[0]][0]) if cells else []
        if len(cells) < 2 or any(sorted(curves_of[cell][0]) != epochs for cell in cells):
            continue  # (one network, or curves of other epochs: no order along one schedule)
        mean = {cell: [np.mean([cv[e] for cv in curves_of[cell]]) for e in epochs] for cell in cells}
        order = [sorted(cells, key=lambda cell: mean[cell][i]) for i in range(len(epochs))]
        since = len(epochs) - 1
        while since > 0 and order[since - 1] == order[-1]:
            since -= 1
        text += (f"; under the {head} head the networks' order on validation (means over seeds) has been the final one "
                 + ("only at the last epoch" if since == len(epochs) - 1 else f"since epoch {epochs[since]} of {epochs[-1]}"))
    if left_out:
        text += f" ({', '.join(left_out)}: no validation curve of more than {LAST_EPOCHS} epochs in every run)"
    return text


def _missing_text(study: Study) -> str:
    """The cells not run, per head, the backbones lacking the same seeds together."""
    missing, per_head = study.missing(), []
    for head in HEADS:
        lacking: dict[tuple, list[str]] = {}
        for backbone, h, seeds in missing:
            if h == head:
                lacking.setdefault(tuple(seeds), []).append(backbone)
        if not lacking:
            continue
        if list(lacking) == [SEEDS] and len(lacking[SEEDS]) == len(study.backbones):
            per_head.append(f"under the {head} head every network")
            continue
        groups = [f"{', '.join(b)} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})" for s, b in lacking.items()]
        per_head.append(f"under the {head} head " + ", ".join(groups))
    return "; ".join(per_head)


def _chain(items: list[tuple[str, float]]) -> str:
    """Names in ascending order of their figure: "a < b", or "a = b" where the figures are equal."""
    out = items[0][0]
    for (_, before), (name, figure) in zip(items, items[1:]):
        out += (" = " if figure == before else " < ") + name
    return out


def _one_seed_sides(chosen: dict, pair: tuple[str, ...]) -> str:
    """" (frame2d n=1: its side over test samples only)" for the networks of `pair` with one seed."""
    alone = [b for b in pair if len(chosen[b].runs) == 1]
    if not alone:
        return ""
    return f" ({' and '.join(alone)} n=1: {'its side' if len(alone) == 1 else 'both sides'} over test samples only)"


def _both_heads(study: Study) -> str | None:
    """How the head changes the ranking of the networks run under both heads (None for fewer than two).
    An order of point estimates flips on noise, so the head is said to decide the ranking only where a
    pair's paired difference is resolved under both heads, in opposite directions."""
    both = [b for b in study.backbones if all(study.chosen(b, h) for h in HEADS)]
    if len(both) < 2:
        return None
    chosen = {h: {b: study.chosen(b, h) for b in both} for h in HEADS}
    orders = {h: sorted(both, key=lambda b: chosen[h][b].figure("next_rmse")) for h in HEADS}
    text = "**Both heads**, on the networks run under both: " + "; ".join(
        f"{h} orders them " + _chain([(f"{b} (n={len(chosen[h][b].runs)})", chosen[h][b].figure("next_rmse")) for b in o])
        for h, o in orders.items()) + "."
    reversed_pairs, swapped = [], []
    for i, a in enumerate(both):
        for b in both[i + 1:]:
            gaps = {h: stats.difference(chosen[h][a], chosen[h][b], "next_rmse") for h in HEADS}
            figures = f"{a} − {b} " + ", ".join(f"{value:+.5f} [{low:+.5f}, {high:+.5f}] under {h}"
                                                  + _one_seed_sides(chosen[h], (a, b)) for h, (value, low, high) in gaps.items())
            (value_1, low_1, high_1), (value_2, low_2, high_2) = gaps.values()
            if stats.side(low_1, high_1) * stats.side(low_2, high_2) < 0:
                reversed_pairs.append(figures)
            elif value_1 * value_2 < 0:  # the point estimates swap (a tie under either head is no swap)
                swapped.append(figures)
    if not reversed_pairs and not swapped:
        return text + " The head does not change the order of the point estimates."
    if reversed_pairs:
        text += (" The head reverses resolved gaps (" + "; ".join(reversed_pairs) + "): a ranking under one "
                 "head is not an answer about the backbones alone.")
    if swapped:
        text += (" The heads order " + ("other pairs" if reversed_pairs else "some pairs") + " differently without "
                 "a gap resolved in opposite directions under the two heads, which noise can do (" + "; ".join(swapped) + ").")
    return text


def answer(study: Study) -> str:
    """The answer and its limits in plain words, from the records alone (markdown paragraphs)."""
    section = study.section
    parts = [f"**The grid**: {study.done()} of {study.size} runs recorded on {study.device} ({len(study.backbones)} networks × {len(HEADS)} heads "
             f"× training seeds {', '.join(map(str, SEEDS))}; data seed {section.data_seed}, "
             f"{section.dataset_size} samples, {section.scored} {section.split} samples scored)."]
    parts += [p for p in (_head_paragraph(study, h) for h in HEADS) if p]
    both = _both_heads(study)
    if both:
        parts.append(both)
    devices = sorted({f"{r.run['device']} ×{r.run['processes']}" for cs in study.cells.values() for c in cs[:1] for r in c.runs})
    limits = [f"the runs' devices (device × processes): {_names(devices)}"]
    if any(len(c.runs) == 1 for cs in study.cells.values() for c in cs[:1]):
        limits.append("a configuration with one seed has an interval over test samples only, which says nothing "
                      "about another training seed")
    if study.missing():
        limits.append("not run yet: " + _missing_text(study))
    code = {b: found for b in study.backbones if (found := _heads_code(study, b))}
    if code:
        limits.append("the two heads' runs of " + ", ".join(f"{b} ({fps})" for b, fps in code.items()) + " are of "
                      "different code (code fingerprints), so a difference between the heads may not be the head's alone")
    trained = _end_of_training(study)
    if trained:
        limits.append(trained)
    limits.append("each interval is 95 % on its own, with no correction for the number of comparisons")
    limits.append("one synthetic dataset with one camera rig; the shifted sets (Robustness) are the only test of "
                  "anything else")
    apart = [c.label for cs in study.elsewhere.values() for c in cs]
    if apart:
        limits.append(f"every run counted here trained on {study.device}; the same cells run on another kind of "
                      f"device are kept apart (shown in the tables below, never pooled with these): {', '.join(sorted(apart))}")
    if study.beyond:
        limits.append("seeds outside the grid's " + ", ".join(map(str, SEEDS)) + " are not counted: " + "; ".join(
            f"{backbone} ({head}) seed{'s' if len({r.run['train_seed'] for r in runs}) > 1 else ''} "
            f"{_beyond_seeds(study, runs)}"
            for (backbone, head) in ((b, h) for b in study.backbones for h in HEADS) if (runs := study.beyond.get((backbone, head)))))
    outside = [c.label for c in section.configurations if id(c) not in study.placed]
    if outside:
        limits.append("the tables below also show runs outside the protocol (params other than params.yaml's "
                      f"with the grid's backbone, head and seed), which this answer does not count: {', '.join(outside)}")
    parts.append("**Limits**: " + "; ".join(limits) + ".")
    return "\n\n".join(parts)


def blocks(study: Study) -> list[tuple[str, list[str], tuple | None]]:
    """The study's part of a report, in order: (title, paragraphs, table as (header, rows) or None);
    the markdown and the HTML report both lay out these."""
    title = "The answer so far" if study.missing() else "The answer"  # "so far" until every cell is recorded
    out = [(title, answer(study).split("\n\n"), None), ("The grid", [], grid_table(study))]
    heads = heads_table(study)
    if heads:
        out.append(("Both heads", [], heads))
    ensembles = ensemble_table(study)
    if ensembles:
        out.append(("Ensembles", [ENSEMBLE_NOTE], ensembles))
    return out
