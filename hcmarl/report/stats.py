"""Aggregate statistics of the MAGPO evaluation protocol (ALGORITHMS.md section 6).

Definitions follow Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice",
as implemented by their library rliable:

- IQM: ``scipy.stats.trim_mean(scores, 0.25)`` over all runs of all tasks. With ``n`` scores
  sorted, ``floor(n / 4)`` are removed from each end and the rest averaged with equal weights.
  There is no fractional weighting of the boundary scores: for ``n`` not divisible by 4 this
  differs from the textbook interquartile mean (which weights the two boundary scores by the
  fractional part); rliable's choice is kept so that figures compare with the papers'.
- Stratified bootstrap: seeds are resampled with replacement independently within each task
  (each stratum), and the statistic recomputed on every resample; the interval is the
  percentile interval of those estimates.
- Probability of improvement P(X > Y): per task, the Mann-Whitney U statistic over all pairs of
  seeds (a tie counts 1/2) divided by the number of pairs, averaged over tasks.

Every function is numpy only; ``seed`` makes each interval reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from hcmarl.errors import ConfigError, RunDataError

RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float


def iqm(scores: ArrayLike, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean, rliable's definition (``scipy.stats.trim_mean(scores, 0.25)``).

    Along ``axis`` (all scores when None): sort, drop ``floor(n / 4)`` scores at each end, average
    the rest with equal weights. IQM([1..8]) = mean(3, 4, 5, 6) = 4.5; for n < 4 it is the mean.
    """
    values = np.asarray(scores, dtype=float)
    if axis is None:
        values, axis = values.reshape(-1), -1
    values = np.sort(np.moveaxis(values, axis, -1), axis=-1)
    n = values.shape[-1]
    if n == 0:
        raise RunDataError("the interquartile mean of no scores is undefined: every algorithm needs at least one run")
    cut = n // 4
    result = values[..., cut : n - cut].mean(axis=-1)
    return float(result) if result.ndim == 0 else result


def percentile_interval(estimates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The ``confidence`` percentile interval of bootstrap ``estimates`` along axis 0.

    Percentiles ``100 (1 - confidence) / 2`` and ``100 (1 + confidence) / 2`` with numpy's
    default linear interpolation (2.5 and 97.5 for 95%).
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must lie strictly between 0 and 1, e.g. 0.95")
    tail = 100 * (1 - confidence) / 2
    return np.percentile(estimates, tail, axis=0), np.percentile(estimates, 100 - tail, axis=0)


def stratified_bootstrap(
    strata: Sequence[ArrayLike],
    statistic: Callable[[list[np.ndarray]], ArrayLike],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap estimates of ``statistic``, resampling within each stratum (Agarwal et al. 2021).

    ``strata[t]`` has the per-seed values of stratum ``t`` on axis 0 (``[n_t]`` or ``[n_t, ...]``).
    With ``rng = numpy.random.default_rng(seed)``, for each stratum in order one call
    ``rng.integers(0, n_t, size=(resamples, n_t))`` draws the seed indices, so stratum ``t``'s
    resamples are ``strata[t][indices]`` of shape ``[resamples, n_t, ...]``. ``statistic`` maps
    that list to ``resamples`` estimates along axis 0.
    """
    if resamples < 1:
        raise ConfigError(f"resamples={resamples} must be at least 1 (the usual value is {RESAMPLES})")
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, dtype=float) for s in strata]
    for i, values in enumerate(arrays):
        if values.ndim == 0 or len(values) == 0:
            raise RunDataError(f"stratum {i} of the bootstrap has no seeds: every task needs at least one run")
    resampled = [values[rng.integers(0, len(values), size=(resamples, len(values)))] for values in arrays]
    return np.asarray(statistic(resampled))


def iqm_estimate(per_task: Sequence[ArrayLike], resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """IQM over all seeds of all tasks, with its stratified-bootstrap percentile interval.

    ``per_task[t]`` holds one score per seed of task ``t`` (seed counts may differ by task).
    """
    point = iqm(np.concatenate([np.asarray(s, dtype=float).reshape(-1) for s in per_task]))
    estimates = stratified_bootstrap(per_task, lambda rs: iqm(np.concatenate(rs, axis=1), axis=1), resamples, seed)
    low, high = percentile_interval(estimates, confidence)
    return Estimate(float(point), float(low), float(high))


def _pairwise_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) over all seed pairs along the last axis (ties 1/2): U / (n_x n_y)."""
    diff = x[..., :, None] - y[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def probability_of_improvement(x_per_task: Sequence[ArrayLike], y_per_task: Sequence[ArrayLike]) -> float:
    """P(X > Y) averaged over tasks (Agarwal et al. 2021; rliable's ``probability_of_improvement``).

    On task ``t``: the fraction of seed pairs ``(i, j)`` with ``x_t[i] > y_t[j]``, a tie counting
    1/2 (the Mann-Whitney U statistic over ``n_x n_y``); then the plain mean over tasks.
    """
    if len(x_per_task) != len(y_per_task) or not x_per_task:
        raise RunDataError("probability of improvement needs both algorithms' scores on the same, non-empty list of tasks")
    return float(np.mean([_pairwise_improvement(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(x_per_task, y_per_task, strict=True)]))


def improvement_estimate(
    x_per_task: Sequence[ArrayLike],
    y_per_task: Sequence[ArrayLike],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """P(X > Y) with its stratified-bootstrap interval.

    The strata are X's tasks then Y's tasks (in that order for the draws of
    :func:`stratified_bootstrap`): each algorithm's seeds are resampled independently within each task.
    """
    point = probability_of_improvement(x_per_task, y_per_task)
    tasks = len(x_per_task)

    def statistic(rs: list[np.ndarray]) -> np.ndarray:
        return np.mean([_pairwise_improvement(rs[t], rs[tasks + t]) for t in range(tasks)], axis=0)

    estimates = stratified_bootstrap([*x_per_task, *y_per_task], statistic, resamples, seed)
    low, high = percentile_interval(estimates, confidence)
    return Estimate(point, float(low), float(high))


def mean_band(
    curves: ArrayLike, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds of ``curves`` ``[seeds, points]`` and its bootstrap percentile band (one stratum)."""
    values = np.asarray(curves, dtype=float)
    estimates = stratified_bootstrap([values], lambda rs: rs[0].mean(axis=1), resamples, seed)
    low, high = percentile_interval(estimates, confidence)
    return values.mean(axis=0), low, high


def minmax_normalise(
    scores: Mapping[str, Mapping[str, ArrayLike]], bounds: Mapping[str, tuple[float, float]] | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[float, float]]]:
    """Per-task min-max normalisation (ALGORITHMS.md section 6): ``(s - lo) / (hi - lo)``.

    ``scores[algorithm][task]`` holds per-seed scores. For each task ``lo`` and ``hi`` are the
    minimum and maximum over every algorithm's scores on that task, unless ``bounds[task]``
    gives them. Returns the normalised scores and the bounds used per task.
    """
    bounds = dict(bounds or {})
    tasks = sorted({task for per_task in scores.values() for task in per_task})
    unknown = sorted(set(bounds) - set(tasks))
    if unknown:
        raise ConfigError(f"bounds given for unknown task(s) {', '.join(unknown)}; the tasks are: {', '.join(tasks)}")
    used: dict[str, tuple[float, float]] = {}
    for task in tasks:
        if task in bounds:
            lo, hi = (float(b) for b in bounds[task])
        else:
            values = np.concatenate([np.asarray(per_task[task], float).reshape(-1) for per_task in scores.values() if task in per_task])
            lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise ConfigError(
                f"task {task}: min-max normalisation needs max > min, got min {lo:g} and max {hi:g}; "
                f"give the task's bounds, e.g. --bounds {task}=0:100"
            )
        used[task] = (lo, hi)
    normalised = {
        algorithm: {task: (np.asarray(s, float) - used[task][0]) / (used[task][1] - used[task][0]) for task, s in per_task.items()}
        for algorithm, per_task in scores.items()
    }
    return normalised, used
