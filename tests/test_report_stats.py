"""``hcmarl report``'s statistics (IQM, stratified bootstrap, probability of improvement, min-max normalisation)
against hand-computed values and loop references."""

from __future__ import annotations

import numpy as np
import pytest

from hcmarl.errors import ConfigError
from hcmarl.report.stats import (
    improvement_estimate,
    iqm,
    iqm_estimate,
    minmax_normalise,
    probability_of_improvement,
)


def test_iqm_of_one_to_eight_is_the_mean_of_the_middle_four() -> None:
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx((3 + 4 + 5 + 6) / 4)


def test_iqm_of_nine_scores_drops_two_at_each_end_without_fractional_weights() -> None:
    # floor(9 / 4) = 2 cut at each end: mean of 1, 2, 4, 8, 16 (a fractional IQM would give 26.75 / 4.5)
    assert iqm([64, 0, 16, 1, 32, 2, 0, 8, 4]) == pytest.approx(31 / 5)
    assert iqm([5, 1, 3]) == pytest.approx(3.0)  # fewer than four scores: nothing is cut
    assert iqm([[1, 2], [2, 2], [1, 1], [2, 1]]) == pytest.approx(1.5)  # all runs of all tasks together


def _iqm_by_hand(values: np.ndarray) -> float:
    ordered = sorted(values)
    cut = len(ordered) // 4
    middle = ordered[cut : len(ordered) - cut]
    return sum(middle) / len(middle)


def test_stratified_bootstrap_matches_a_loop_reference() -> None:
    tasks = [np.array([1.0, 5.0, 2.0]), np.array([10.0, 0.0, 3.0, 7.0])]
    resamples, seed = 50, 3
    estimate = iqm_estimate(tasks, resamples=resamples, seed=seed)

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(t), size=(resamples, len(t))) for t in tasks]  # per task, in task order
    reference = []
    for b in range(resamples):
        sample = [float(t[i]) for t, d in zip(tasks, draws, strict=False) for i in d[b]]
        reference.append(_iqm_by_hand(np.array(sample)))
    assert estimate.value == pytest.approx(_iqm_by_hand(np.array([1, 5, 2, 10, 0, 3, 7.0])))  # = (1+2+3+5+7)/5
    assert estimate.value == pytest.approx(3.6)
    assert estimate.low == pytest.approx(np.percentile(reference, 2.5))
    assert estimate.high == pytest.approx(np.percentile(reference, 97.5))
    assert estimate.low < estimate.high


def test_bootstrap_interval_of_equal_seeds_has_zero_width() -> None:
    estimate = iqm_estimate([np.full(4, 0.7), np.full(3, 0.7)], resamples=200, seed=0)
    assert estimate.value == estimate.low == estimate.high == pytest.approx(0.7)


def test_probability_of_improvement_by_hand() -> None:
    # task 1: pairs (3,1)=1 (3,3)=1/2 (3,5)=0 (4,1)=1 (4,3)=1 (4,5)=0 -> 3.5/6; task 2: 1 > 0 -> 1
    x, y = [[3, 4], [1]], [[1, 3, 5], [0]]
    assert probability_of_improvement(x, y) == pytest.approx((3.5 / 6 + 1.0) / 2)
    assert probability_of_improvement(y, x) == pytest.approx(1 - (3.5 / 6 + 1.0) / 2)
    # rliable's own test case: 1/3
    xs = np.array([[1, 2], [2, 2], [1, 1], [2, 1]])
    ys = np.array([[1, 1], [2, 2], [3, 3]])
    assert probability_of_improvement(list(xs.T), list(ys.T)) == pytest.approx(1 / 3)


def test_probability_of_improvement_interval_matches_a_loop_reference() -> None:
    x, y = [np.array([3.0, 4.0, 1.0]), np.array([1.0, 2.0])], [np.array([1.0, 3.0, 5.0]), np.array([0.0, 2.0, 2.5])]
    resamples, seed = 40, 7
    estimate = improvement_estimate(x, y, resamples=resamples, seed=seed)

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(s), size=(resamples, len(s))) for s in [*x, *y]]  # X's tasks, then Y's
    reference = []
    for b in range(resamples):
        per_task = []
        for t in range(2):
            xs, ys = x[t][draws[t][b]], y[t][draws[2 + t][b]]
            wins = sum(1.0 if a > c else 0.5 if a == c else 0.0 for a in xs for c in ys)
            per_task.append(wins / (len(xs) * len(ys)))
        reference.append(sum(per_task) / 2)
    assert estimate.low == pytest.approx(np.percentile(reference, 2.5))
    assert estimate.high == pytest.approx(np.percentile(reference, 97.5))
    # task 1: 3 vs (1,3,5) = 1.5, 4 = 2, 1 = 0.5 -> 4/9; task 2: 1 vs (0,2,2.5) = 1, 2 = 1.5 -> 2.5/6
    assert estimate.value == pytest.approx((4 / 9 + 2.5 / 6) / 2)


def test_minmax_normalisation_over_all_algorithms_or_given_bounds() -> None:
    scores = {"a": {"t": [0.0, 10.0], "u": [1.0]}, "b": {"t": [5.0], "u": [3.0]}}
    normalised, bounds = minmax_normalise(scores)
    assert bounds == {"t": (0.0, 10.0), "u": (1.0, 3.0)}
    np.testing.assert_allclose(normalised["a"]["t"], [0.0, 1.0])
    np.testing.assert_allclose(normalised["b"]["t"], [0.5])
    np.testing.assert_allclose(normalised["b"]["u"], [1.0])
    normalised, _ = minmax_normalise(scores, {"t": (0.0, 20.0)})
    np.testing.assert_allclose(normalised["a"]["t"], [0.0, 0.5])
    with pytest.raises(ConfigError, match="max > min"):
        minmax_normalise({"a": {"t": [2.0, 2.0]}})
    with pytest.raises(ConfigError, match="unknown task"):
        minmax_normalise(scores, {"nope": (0.0, 1.0)})
