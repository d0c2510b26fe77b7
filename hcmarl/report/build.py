"""``report()``: read runs, write both papers' tables, the figures and one Markdown page (ALGORITHMS.md section 6)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hcmarl.report.page import report_page
from hcmarl.report.plots import Band, iqm_plot, learning_curves
from hcmarl.report.runs import discover, resolve_metric, split_incomplete, write_export
from hcmarl.report.stats import CONFIDENCE, RESAMPLES
from hcmarl.report.tables import LAST_EVALUATIONS, aggregate, final_scores, hcpo_scores, hcpo_table

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
) -> list[Path]:
    """Write a report of the runs under ``paths`` into ``out_dir``; returns the files written.

    Files: ``curves_<task>.png`` and ``.svg`` per task, ``iqm.png`` and ``.svg`` (when some task
    has runs of every algorithm), and ``report.md`` linking them; with ``export``, also a compact
    CSV of every run's evaluations (:func:`hcmarl.report.runs.write_export`), from which the same
    report can be made again. A seed that stops before the other seeds of its algorithm and task
    is left out of tables and figures (and named on the page).

    Args:
        paths: run folders (searched for ``metrics.csv``) or exported ``.csv`` files.
        metric: ``auto`` (win rate where every run of a task logs it, else return), ``return``,
            ``win_rate`` or a column such as ``eval/guider/return``.
        last: evaluations per seed whose median is the HCPO table's score.
        band: learning-curve band, ``ci`` (bootstrap interval of the mean) or ``std``.
        bounds: per-task ``(min, max)`` for normalisation instead of the observed ones.
        resamples, confidence, seed: the bootstrap's resamples, interval level and generator seed.
    """
    runs, notes = discover(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_export(runs, Path(export))] if export is not None else []
    runs, incomplete = split_incomplete(runs)
    notes = notes + [f"{r.label}: its last evaluation is at {r.last_frames:,.0f} frames, earlier than its other seeds' last" for r in incomplete]
    tasks = sorted({r.task for r in runs})
    metrics = {task: resolve_metric([r for r in runs if r.task == task], metric) for task in tasks}
    agg = aggregate(final_scores(runs, metrics), bounds, resamples, confidence, seed)
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
        hcpo_table(hcpo_scores(runs, metrics, last), metrics),
        last,
        agg,
        curve_images,
        iqm_images[0] if iqm_images else None,
    )
    (out / PAGE).write_text(page)
    return [*written, out / PAGE]
