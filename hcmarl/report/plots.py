"""Figures of a report: learning curves per task with a band over seeds, and the aggregate IQM.

Drawn with matplotlib's Agg canvas (no display, no pyplot state) and saved as PNG and SVG;
SVG ids are salted with a fixed string so a regenerated figure is byte-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from hcmarl.errors import ConfigError, MissingDependencyError
from hcmarl.report.runs import Run
from hcmarl.report.stats import CONFIDENCE, RESAMPLES, mean_band
from hcmarl.report.tables import Aggregate

FORMATS = ("png", "svg")
Band = Literal["ci", "std"]


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError("matplotlib", "plots", "hcmarl report's figures") from err
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: Path) -> list[Path]:
    from matplotlib import rc_context

    paths = []
    with rc_context({"svg.hashsalt": "hcmarl"}):
        for fmt in FORMATS:
            path = stem.parent / f"{stem.name}.{fmt}"
            fig.savefig(path, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
            paths.append(path)
    return paths


def common_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Frames at which every seed's curve is defined: the seeds' evaluation frames, from the latest start to the earliest end."""
    start = max(frames[0] for frames, _ in curves)
    end = min(frames[-1] for frames, _ in curves)
    grid = np.unique(np.concatenate([frames for frames, _ in curves]))
    return grid[(grid >= start) & (grid <= end)]


def seed_band(
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
    band: Band = "ci",
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, mean, low, high)``: seeds' curves interpolated linearly to :func:`common_grid`, their mean and band.

    ``band="ci"``: the bootstrap percentile interval of the mean over seeds; ``"std"``: mean +- the
    sample std (ddof 1). With one seed the band is the curve itself.
    """
    if band not in ("ci", "std"):
        raise ConfigError(f"band='{band}' is not one of: ci (bootstrap interval of the mean), std (mean +- std over seeds)")
    grid = common_grid(curves)
    values = np.stack([np.interp(grid, frames, v) for frames, v in curves])
    if len(values) == 1:
        return grid, values[0], values[0], values[0]
    if band == "std":
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
        return grid, mean, mean - std, mean + std
    mean, low, high = mean_band(values, resamples, confidence, seed)
    return grid, mean, low, high


def learning_curves(
    runs: Sequence[Run],
    metric: str,
    stem: Path,
    band: Band = "ci",
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[Path]:
    """One task's curves (``runs`` all of one task): per algorithm the mean over seeds and its band; PNG and SVG at ``stem``."""
    task = runs[0].task
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    for algorithm in sorted({r.algorithm for r in runs}):
        curves = [r.curve(metric) for r in runs if r.algorithm == algorithm]
        grid, mean, low, high = seed_band(curves, band, resamples, confidence, seed)
        (line,) = ax.plot(grid, mean, label=f"{algorithm} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    shown = f"{100 * confidence:g}% bootstrap interval of the mean" if band == "ci" else "mean +- std"
    ax.set_title(f"{task}: {metric} (band: {shown})", fontsize=10)
    ax.set_xlabel("environment frames")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, stem)


def iqm_plot(agg: Aggregate, stem: Path) -> list[Path]:
    """The aggregate IQM per algorithm with its interval as horizontal error bars; PNG and SVG at ``stem``."""
    algorithms = list(agg.iqm)
    fig = _figure(6.4, 0.6 + 0.45 * len(algorithms))
    ax = fig.subplots()
    y = np.arange(len(algorithms))[::-1]
    values = np.array([agg.iqm[a].value for a in algorithms])
    errors = np.array([[agg.iqm[a].value - agg.iqm[a].low for a in algorithms], [agg.iqm[a].high - agg.iqm[a].value for a in algorithms]])
    ax.errorbar(values, y, xerr=errors, fmt="o", capsize=4)
    ax.set_yticks(y, algorithms)
    ax.set_ylim(-0.6, len(algorithms) - 0.4)
    ax.set_xlabel(f"IQM of min-max normalised final score ({100 * agg.confidence:g}% interval); tasks: {', '.join(agg.tasks)}", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, stem)
