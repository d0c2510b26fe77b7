"""``report()``: read runs, write both papers' tables, the figures and one Markdown page (ALGORITHMS.md section 6)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hcmarl.report.discovery import discover, resolve_metric, split_incomplete
from hcmarl.report.marl_eval import write_marl_eval
from hcmarl.report.page import report_page
from hcmarl.report.plots import Band, iqm_plot, learning_curves
from hcmarl.report.published import published_table, read_published, unmatched
from hcmarl.report.runs import write_export
from hcmarl.report.stats import CONFIDENCE, RESAMPLES
from hcmarl.report.tables import (
    LAST_EVALUATIONS,
    aggregate,
    hcpo_scores,
    magpo_scores,
    score_rules,
    scored_by_absolute_metric,
    scores_table,
)

PAGE = "report.md"


def _slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    metric: str = "auto",
    last: int = LAST_EVALUATIONS,
    band: Band = "ci",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    title: str = "Results",
    export: str | Path | None = None,
    score: str = "auto",
    marl_eval: str | Path | None = None,
    published: str | Path | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write a report of the runs under ``paths`` into ``out_dir``; returns the files written.

    Files: ``curves_<task>.png`` and ``.svg`` per task, ``iqm.png`` and ``.svg`` (when some task
    has runs of every algorithm), and ``report.md`` linking them; with ``export``, also a compact
    CSV of every run's evaluations (:func:`hcmarl.report.runs.write_export`), from which the same
    report can be made again; with ``marl_eval``, also the marl-eval JSON of the runs of the hcmarl
    run folders among ``paths`` (:func:`hcmarl.report.marl_eval.marl_eval_export`; runs read from
    ``.csv`` or ``.json`` files are not written into it) and their software records beside it
    (:func:`hcmarl.report.marl_eval.software_file`). A seed that stops before the other seeds of
    its algorithm and task is left out of tables and figures (and named on the page).

    Args:
        paths: run folders (searched for ``metrics.csv``), exported ``.csv`` files or marl-eval ``.json`` files.
        metric: ``auto`` (win rate where every run of a task logs it, else return), ``return``,
            ``win_rate`` or a column such as ``eval/guider/return``.
        last: evaluations per seed whose median is the HCPO table's score.
        band: learning-curve band, ``ci`` (bootstrap interval of the mean) or ``std``.
        bounds: per-task ``(min, max)`` for normalisation instead of the observed ones.
        resamples, confidence, seed: the bootstrap's resamples, interval level and generator seed.
        score: the MAGPO aggregate's per-seed score: ``auto`` (the absolute metric on tasks where every
            run has one, else the final evaluation), ``final``, ``absolute`` or ``median`` (of the last ``last``
            evaluations; :func:`hcmarl.report.tables.score_rules`).
        published: a CSV of published values (:mod:`hcmarl.report.published`), set beside each algorithm's score
            (the same per-seed score as the aggregate's, before normalisation) in one table.
        labels: algorithm -> the name it gets on the page and in the exports, e.g. a sweep's long
            ``hcpo (model.learner.init_args...=harl)`` -> ``hcpo (harl)`` (:func:`hcmarl.report.runs.relabel`).
    """
    runs, notes = discover(paths, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_export(runs, Path(export))] if export is not None else []
    exported = write_marl_eval(paths, marl_eval, labels) if marl_eval is not None else None
    written += [f for f in (exported.file, exported.software) if f is not None] if exported is not None else []
    runs, incomplete = split_incomplete(runs)
    notes = notes + [f"{r.label}: its last evaluation is at {r.last_frames:,.0f} frames, earlier than its other seeds' last" for r in incomplete]
    tasks = sorted({r.task for r in runs})
    metrics = {task: resolve_metric([r for r in runs if r.task == task], metric) for task in tasks}
    rules = score_rules(runs, metrics, score)
    scores = magpo_scores(runs, metrics, rules, last)
    agg = aggregate(scores, bounds, resamples, confidence, seed)
    beside = None
    if published is not None:
        values = read_published(published)
        frames = {(r.task, r.algorithm): max(x.last_frames for x in runs if (x.task, x.algorithm) == (r.task, r.algorithm)) for r in runs}
        beside = (published_table(values, scores, frames), [f"{t}: published values, but no run here" for t in unmatched(values, tasks)])
    curve_images = {}
    for task in tasks:
        task_runs = [r for r in runs if r.task == task]
        images = learning_curves(task_runs, metrics[task], out / f"curves_{_slug(task)}", band, resamples, confidence, seed)
        curve_images[task] = images[0]
        written += images
    iqm_images = iqm_plot(agg, out / "iqm") if agg.tasks else []
    written += iqm_images
    page = report_page(
        title,
        [str(p) for p in paths],
        runs,
        notes,
        scores_table(scores if scored_by_absolute_metric(rules) else hcpo_scores(runs, metrics, last), metrics),
        last,
        agg,
        curve_images,
        iqm_images[0] if iqm_images else None,
        rules,
        exported,
        beside,
    )
    (out / PAGE).write_text(page)
    return [*written, out / PAGE]
