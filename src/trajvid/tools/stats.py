"""Figures of run records with intervals over training seeds and test samples, and paired
differences between configurations on the same test samples (plain numpy).

A configuration's figure is the mean over its training seeds of each seed's figure on the scored
split. Its 95 % interval combines the two sources of doubt, each at its own level, in `REPLICATES`
replicates:
- test samples: each replicate draws the N test samples with replacement (a percentile bootstrap);
  the sample draws are shared by every configuration of one dataset, so that a difference A - B is
  computed on the same resampled samples for both (paired);
- training seeds: with S >= 2 seeds, each replicate adds to the mean over seeds a Student-t draw
  with S - 1 degrees of freedom times the seeds' standard error (the standard deviation of the S
  seeds' figures on all samples, over sqrt(S)), drawn apart for A and B. This is the t interval
  of a mean of S values, the standard one for S = 2 or 3: a bootstrap of the seeds themselves
  has 3 (S = 2) or 10 (S = 3) distinct draws, shrinks their variance by (S - 1)/S and ignores
  that it is estimated from S values, so its "95 %" intervals were far too narrow.
  With one seed there is nothing to estimate the spread from: the interval covers the test
  samples only, and the report says n = 1.
  Two things make these intervals err on the wide side, so that "resolved" is a cautious verdict:
  a difference A - B draws A's and B's t apart (the Behrens-Fisher fiducial interval: with equal
  spreads wider than Welch's, e.g. 6.5 standard errors against 3.9 for 3 + 3 seeds), and each
  seed's figure on all samples carries some test-sample noise of its own, so the seeds' spread
  counts part of the samples' doubt a second time.
Replicates are clipped to the figure's range (accuracy in [0, 1], errors >= 0). A difference is
*resolved* when its interval excludes 0.

The draws: the sample indices (R, N) from `numpy.random.default_rng(SEED)`, shared by every
configuration; each configuration's t draws (R,) from `default_rng([SEED, k]).standard_t(S - 1)`,
where k is the first 8 hex digits of the SHA-256 of the configuration's key, so that a
configuration's interval does not change when other runs are added to the report.

Figures (`FIGURES`), each from the per-sample predictions:
  accuracy             share of samples whose most probable class is the label
  next_rmse            per-coordinate RMSE of the next position: sqrt(mean over samples and x, y, z)
  next_distance        mean Euclidean distance of the next position
  next_euclidean_rmse  RMSE of the Euclidean distance: sqrt(mean over samples of |error|^2) = sqrt(3) * next_rmse
"""

from __future__ import annotations

import hashlib

import numpy as np

# A t with 1 or 2 degrees of freedom has heavy tails: the 2.5 % point of t(1) from 2,000 replicates
# is off by about 14 % (one standard error), from 10,000 by about 6 %.
REPLICATES = 10000
SEED = 0
FIGURES = ("accuracy", "next_rmse", "next_distance", "next_euclidean_rmse")


def per_sample(predictions: dict[str, np.ndarray], class_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The per-sample quantities the figures are means of (float64): correct, |error|^2, |error|."""
    probabilities = np.stack([predictions[f"prob_{c}"] for c in class_names], axis=1)
    error = np.stack([predictions[f"next_{c}"].astype(np.float64) - predictions[f"target_{c}"] for c in "xyz"], axis=1)
    squared = (error**2).sum(1)
    return {"correct": (probabilities.argmax(1) == predictions["label"]).astype(np.float64),
            "squared": squared, "distance": np.sqrt(squared)}


def copy_last_per_sample(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same quantities for copying the last visible position (no class: correct is NaN)."""
    error = np.stack([predictions[f"last_{c}"].astype(np.float64) - predictions[f"target_{c}"] for c in "xyz"], axis=1)
    squared = (error**2).sum(1)
    return {"correct": np.full(len(squared), np.nan), "squared": squared, "distance": np.sqrt(squared)}


def figure_of_means(name: str, means: dict[str, np.ndarray]) -> np.ndarray:
    """A figure from per-sample means (any shape: the means over samples of each quantity)."""
    if name == "accuracy":
        return means["correct"]
    if name == "next_rmse":
        return np.sqrt(means["squared"] / 3)
    if name == "next_distance":
        return means["distance"]
    if name == "next_euclidean_rmse":
        return np.sqrt(means["squared"])
    raise KeyError(name)


def point(seeds: list[dict[str, np.ndarray]], name: str) -> float:
    """The figure: the mean over seeds of each seed's figure on every sample."""
    return float(np.mean([figure_of_means(name, {k: v.mean() for k, v in s.items()}) for s in seeds]))


def group_rng(key: str, seed: int = SEED) -> np.random.Generator:
    """The generator of one configuration's seed draws."""
    return np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])


def replicates(groups: list[list[dict[str, np.ndarray]]], keys: list[str], replicates: int = REPLICATES,
               seed: int = SEED) -> list[dict[str, np.ndarray]]:
    """For each group (a configuration: its seeds' per-sample quantities on the same N samples;
    `keys`: their identities), every figure's replicates {name: (R,)}, drawn as the module says."""
    n = len(groups[0][0]["squared"])
    if any(len(s["squared"]) != n for g in groups for s in g):
        raise ValueError("every run must score the same samples")
    samples = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    out = []
    for group, key in zip(groups, keys, strict=True):
        size = len(group)
        # the seed level: one t draw per replicate, scaled per figure by the seeds' standard error
        t = group_rng(key, seed).standard_t(size - 1, size=replicates) if size > 1 else np.zeros(replicates)
        # per seed and replicate: the means over the drawn samples, (S, R)
        means = {k: np.stack([s[k][samples].mean(1) for s in group]) for k in group[0]}
        figures = {}
        for name in FIGURES:
            per_seed = figure_of_means(name, means)  # (S, R)
            spread = seed_spread(group, name)
            drawn = per_seed.mean(0) + t * spread / np.sqrt(size)
            figures[name] = np.clip(drawn, 0.0, 1.0 if name == "accuracy" else np.inf)
        out.append(figures)
    return out


def seed_spread(group: list[dict[str, np.ndarray]], name: str) -> float:
    """The standard deviation (ddof 1) of a figure over a configuration's seeds, each on all its
    samples; 0 with one seed."""
    if len(group) < 2:
        return 0.0
    return float(np.std([figure_of_means(name, {k: v.mean() for k, v in s.items()}) for s in group], ddof=1))


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of the replicates."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def difference(a, b, name: str) -> tuple[float, float, float]:
    """A − B of two figured things (configurations, fixed models: `figure(name)` and
    `replicates[name]` on the same sample draws): the point difference and its paired 95 % interval."""
    low, high = interval(a.replicates[name] - b.replicates[name])
    return a.figure(name) - b.figure(name), low, high


def side(low: float, high: float) -> int:
    """Which side of 0 the interval of a difference A − B lies on: +1 (A higher, resolved), −1
    (A lower, resolved) or 0 (it holds 0: not resolved)."""
    return 1 if low > 0 else -1 if high < 0 else 0


def verdict(low: float, high: float) -> str:
    """How the report names a difference's interval: "resolved" when it excludes 0."""
    return "resolved" if side(low, high) else "not resolved"
