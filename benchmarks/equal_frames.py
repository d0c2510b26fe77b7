"""Compare finished runs at one frame budget: a Markdown table of each algorithm's evaluation at exactly N frames.

Runs trained to different lengths (a 1M-frame run beside 409,600-frame ones) are compared at the same point of
their curves: each seed's evaluation logged at ``--frames`` (the periodic evaluation or the final one), for the
deployment policy (``eval/return``) and any second evaluation the module logs (``eval/central/return`` for a
conductor, ``eval/guider/return`` for a guider). A seed without an evaluation at that frame count is an error.

    python benchmarks/equal_frames.py RUN_FOLDERS... --frames 409600 --task coordsum/3x10 --out table.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from hcmarl.report.discovery import discover
from hcmarl.report.runs import Run

COLUMNS = {"eval/return": "deployed", "eval/central/return": "central conductor", "eval/guider/return": "guider"}


def value_at(run: Run, metric: str, frames: float) -> float | None:
    """The run's ``metric`` at exactly ``frames`` (None if the run never logs the metric)."""
    if metric not in run.curves:
        return None
    points = dict(run.curves[metric])
    if frames not in points:
        logged = sorted(points)
        raise SystemExit(f"{run.label}: no {metric} at {frames:,.0f} frames (evaluations at {logged[:3]} ... {logged[-3:]})")
    return points[frames]


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.2f} ({std:.2f})"


def table(runs: list[Run], task: str, frames: float, order: list[str] | None = None) -> str:
    """One row per algorithm: mean (std) over seeds of each evaluation, and the deployed policy's per-seed values."""
    chosen = [run for run in runs if run.task == task]
    algorithms = order or sorted({run.algorithm for run in chosen})
    lines = [f"| algorithm | seeds | {' | '.join(COLUMNS.values())} | deployed, per seed |", "|---" * (len(COLUMNS) + 3) + "|"]
    for algorithm in algorithms:
        seeds = sorted((run for run in chosen if run.algorithm == algorithm), key=lambda run: run.seed)
        if not seeds:
            raise SystemExit(f"no runs of {algorithm} on {task}")
        cells = []
        for metric in COLUMNS:
            values = [value_at(run, metric, frames) for run in seeds]
            cells.append("-" if None in values else mean_std(values))
        per_seed = ", ".join(f"{value_at(run, 'eval/return', frames):.2f}" for run in seeds)
        lines.append(f"| {algorithm} | {len(seeds)} | {' | '.join(cells)} | {per_seed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders (searched for metrics.csv)")
    parser.add_argument("--frames", type=float, required=True, help="the frame budget every run is read at")
    parser.add_argument("--task", required=True, help="e.g. coordsum/3x10 or vmas/simple_spread")
    parser.add_argument("--algorithms", nargs="*", help="row order (default: sorted)")
    parser.add_argument("--out", type=Path, help="write the table here as well as printing it")
    args = parser.parse_args(argv)
    runs, _ = discover(args.paths)
    text = table(runs, args.task, args.frames, args.algorithms)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
