"""The two papers' result tables as Markdown (ALGORITHMS.md section 6).

- HCPO: per seed, the median of the last ten evaluations; mean (std) over seeds; one row per
  task, one column per algorithm (:func:`scores_table`, which also tabulates any other per-seed score).
- MAGPO: each seed's final score (its final evaluation, its absolute metric, or HCPO's median: :func:`magpo_scores`),
  min-max normalised per task; IQM with a stratified bootstrap 95% interval per algorithm; probability of
  improvement for each pair of algorithms (Agarwal et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from hcmarl.errors import ConfigError, RunDataError
from hcmarl.report.runs import Run
from hcmarl.report.stats import CONFIDENCE, RESAMPLES, Estimate, improvement_estimate, iqm_estimate, minmax_normalise

LAST_EVALUATIONS = 10
SCORES = ("auto", "final", "absolute", "median")

Scores = dict[str, dict[str, np.ndarray]]
"""task -> algorithm -> one score per seed, in seed order"""


def _per_seed(runs: Sequence[Run], score: Callable[[Run], float]) -> Scores:
    scores: dict[str, dict[str, list[float]]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        scores.setdefault(run.task, {}).setdefault(run.algorithm, []).append(score(run))
    return {task: {alg: np.asarray(v) for alg, v in per_alg.items()} for task, per_alg in scores.items()}


def hcpo_scores(runs: Sequence[Run], metrics: Mapping[str, str], last: int = LAST_EVALUATIONS) -> Scores:
    """HCPO's per-seed score: the median of the seed's last ``last`` evaluations of ``metrics[task]``."""
    return _per_seed(runs, lambda run: float(np.median(run.curve(metrics[run.task])[1][-last:])))


def final_scores(runs: Sequence[Run], metrics: Mapping[str, str]) -> Scores:
    """MAGPO's per-seed score: the seed's final (last) evaluation of ``metrics[task]``."""
    return _per_seed(runs, lambda run: float(run.curve(metrics[run.task])[1][-1]))


def absolute_scores(runs: Sequence[Run], metrics: Mapping[str, str]) -> Scores:
    """Mava's per-seed score: the seed's absolute metric of ``metrics[task]`` (:attr:`Run.absolute`)."""
    missing = [f"{r.label} ({', '.join(r.sources)})" for r in runs if metrics[r.task] not in r.absolute]
    if missing:
        raise RunDataError(
            f"--score absolute needs every run's absolute metric, and these have none of {', '.join(sorted({metrics[r.task] for r in runs}))}: "
            f"{'; '.join(missing)}. Their runs were not made by the magpo evaluation protocol; use --score auto or final"
        )
    return _per_seed(runs, lambda run: run.absolute[metrics[run.task]])


def score_rules(runs: Sequence[Run], metrics: Mapping[str, str], score: str = "auto") -> dict[str, str]:
    """Per task, the MAGPO aggregate's per-seed score: ``absolute`` (the absolute metric), ``final`` (the last
    evaluation) or ``median`` (the median of the last evaluations, HCPO's score: :func:`hcpo_scores`).

    ``auto``: ``absolute`` on a task where every run has an absolute metric of the task's metric (runs of the
    magpo protocol and imported marl-eval runs), else ``final``; the others choose their rule for every task.
    """
    if score not in SCORES:
        raise ConfigError(f"score={score!r} is not one of: {', '.join(SCORES)}")
    tasks = sorted({r.task for r in runs})
    if score != "auto":
        return dict.fromkeys(tasks, score)
    return {t: "absolute" if all(metrics[t] in r.absolute for r in runs if r.task == t) else "final" for t in tasks}


def scored_by_absolute_metric(rules: Mapping[str, str]) -> bool:
    """Whether every task's score is the absolute metric (all runs under the magpo protocol): the page's per-task table
    then shows that score, since the median of the last evaluations is no one's score there."""
    return set(rules.values()) == {"absolute"}


def magpo_scores(runs: Sequence[Run], metrics: Mapping[str, str], rules: Mapping[str, str], last: int = LAST_EVALUATIONS) -> Scores:
    """Per-seed scores of the MAGPO aggregate, by ``rules[task]`` (:func:`score_rules`; ``median`` of the last ``last``)."""
    by_rule = {rule: [r for r in runs if rules[r.task] == rule] for rule in set(rules.values())}
    scorers: dict[str, Callable[[Sequence[Run]], Scores]] = {
        "absolute": lambda chosen: absolute_scores(chosen, metrics),
        "final": lambda chosen: final_scores(chosen, metrics),
        "median": lambda chosen: hcpo_scores(chosen, metrics, last),
    }
    scores: Scores = {}
    for rule, chosen in by_rule.items():
        scores |= scorers[rule](chosen)
    return scores


def _number(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric.endswith("win_rate") else f"{value:.2f}"


def scores_table(scores: Scores, metrics: Mapping[str, str]) -> str:
    """Markdown: one row per task, one ``mean (std)`` column per algorithm, the best mean in bold.

    The std is the sample std over seeds (ddof 1); a cell with fewer seeds than the table's most
    says how many it has; a missing algorithm-task pair is a dash.
    """
    algorithms = sorted({alg for per_alg in scores.values() for alg in per_alg})
    most = max(len(s) for per_alg in scores.values() for s in per_alg.values())
    lines = ["| task | metric | " + " | ".join(algorithms) + " |", "|---|---|" + "---|" * len(algorithms)]
    for task in sorted(scores):
        metric = metrics[task]
        best = max(float(np.mean(s)) for s in scores[task].values())
        cells = []
        for alg in algorithms:
            s = scores[task].get(alg)
            if s is None:
                cells.append("-")
                continue
            std = f" ({_number(float(np.std(s, ddof=1)), metric)})" if len(s) > 1 else ""
            cell = f"{_number(float(np.mean(s)), metric)}{std}"
            cell = f"**{cell}**" if float(np.mean(s)) == best else cell
            cells.append(cell + (f", {len(s)} seed{'s' if len(s) > 1 else ''}" if len(s) < most else ""))
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class Aggregate:
    """The MAGPO protocol's aggregate over the tasks every algorithm has run."""

    tasks: list[str]
    skipped: dict[str, str]
    bounds: dict[str, tuple[float, float]]
    normalised: dict[str, dict[str, np.ndarray]]
    iqm: dict[str, Estimate]
    improvement: list[tuple[str, str, Estimate]]
    confidence: float


def aggregate(
    scores: Scores,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Aggregate:
    """Normalise ``scores`` (final scores) per task, then IQM per algorithm and P(X > Y) per pair.

    Only tasks on which every algorithm has runs enter (rliable's score matrices are
    runs x tasks for every algorithm), and without ``bounds`` only tasks whose scores are not all
    equal (min-max normalisation divides by max - min); the others are in ``skipped`` with the
    reason. Algorithms are ordered by IQM, highest first, and each pair is reported as
    P(higher > lower).
    """
    bounds = dict(bounds or {})
    unknown = sorted(set(bounds) - set(scores))
    if unknown:
        raise ConfigError(f"bounds given for unknown task(s) {', '.join(unknown)}; the tasks are: {', '.join(sorted(scores))}")
    algorithms = sorted({alg for per_alg in scores.values() for alg in per_alg})
    skipped = {}
    for task in sorted(scores):
        values = np.concatenate(list(scores[task].values()))
        if any(alg not in scores[task] for alg in algorithms):
            skipped[task] = "not every algorithm has runs there"
        elif task not in bounds and values.min() == values.max():
            skipped[task] = f"every final score is {values.min():g}, so min-max normalisation needs --bounds {task}=MIN:MAX"
    tasks = [t for t in sorted(scores) if t not in skipped]
    if not tasks:
        return Aggregate([], skipped, {}, {}, {}, [], confidence)
    by_algorithm = {alg: {t: scores[t][alg] for t in tasks} for alg in algorithms}
    normalised, used = minmax_normalise(by_algorithm, {t: b for t, b in bounds.items() if t in tasks})
    estimates = {alg: iqm_estimate([normalised[alg][t] for t in tasks], resamples, confidence, seed) for alg in algorithms}
    ranked = sorted(algorithms, key=lambda a: -estimates[a].value)
    pairs = [
        (x, y, improvement_estimate([normalised[x][t] for t in tasks], [normalised[y][t] for t in tasks], resamples, confidence, seed))
        for x, y in combinations(ranked, 2)
    ]
    return Aggregate(tasks, skipped, used, normalised, {a: estimates[a] for a in ranked}, pairs, confidence)


def aggregate_tables(agg: Aggregate) -> str:
    """Markdown: the normalisation bounds, IQM with its interval per algorithm, P(X > Y) per pair."""
    left_out = [f"- {task}: {reason}" for task, reason in agg.skipped.items()]
    if not agg.tasks:
        return "\n".join(["No task can enter the aggregate:", "", *left_out]) + "\n"
    pct = f"{100 * agg.confidence:g}%"
    lines = [
        "| task | min | max |",
        "|---|---|---|",
        *[f"| {t} | {lo:.2f} | {hi:.2f} |" for t, (lo, hi) in agg.bounds.items()],
        "",
        f"| algorithm | IQM of normalised final score | {pct} interval | seeds per task |",
        "|---|---|---|---|",
        *[
            f"| {alg} | {e.value:.3f} | [{e.low:.3f}, {e.high:.3f}] | {', '.join(str(len(agg.normalised[alg][t])) for t in agg.tasks)} |"
            for alg, e in agg.iqm.items()
        ],
    ]
    if agg.improvement:
        lines += ["", f"| X | Y | P(X > Y) | {pct} interval |", "|---|---|---|---|"]
        lines += [f"| {x} | {y} | {e.value:.3f} | [{e.low:.3f}, {e.high:.3f}] |" for x, y, e in agg.improvement]
    if left_out:
        lines += ["", "Left out of the aggregate:", "", *left_out]
    return "\n".join(lines) + "\n"
