"""Published results beside a report's runs: a CSV of values transcribed from a paper's table.

A paper's table gives a mean and a spread over seeds per task and algorithm, not the seeds' values,
so it cannot enter the aggregate statistics; it is set beside each algorithm's own score in one
table. The CSV's columns (one row per task and algorithm):

- ``task``: an hcmarl task (``coordsum/3x10``) or a marl-eval ``environment/task`` (``CoordSum/3x10-30-v0``),
  read with :func:`hcmarl.report.marl_eval.hcmarl_task`;
- ``algorithm``: matched to the report's algorithm names without regard to case;
- ``mean``, ``std``: the published value and its spread (``std`` may be empty);
- ``seeds``, ``frames``: the seeds and environment frames behind it (may be empty);
- ``source``: where the value was transcribed from, e.g. ``MAGPO paper, Table 1``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hcmarl.errors import RunDataError
from hcmarl.report.marl_eval import hcmarl_task
from hcmarl.report.tables import Scores

COLUMNS = ("task", "algorithm", "mean", "std", "seeds", "frames", "source")
REQUIRED = ("task", "algorithm", "mean", "source")


@dataclass(frozen=True)
class Published:
    """One published value: ``mean`` (``std`` over ``seeds`` seeds) of ``algorithm`` on ``task`` after ``frames``."""

    task: str
    algorithm: str
    mean: float
    std: float | None
    seeds: int | None
    frames: float | None
    source: str


def _task(name: str) -> str:
    """An hcmarl task name: ``coordsum/3x10`` stays, ``CoordSum/3x10-30-v0`` maps to it."""
    environment, _, task = name.strip().partition("/")
    return hcmarl_task(environment, task) if task else name.strip()


def _number(row: Mapping[str, str], column: str, where: str, required: bool = False) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        if required:
            raise RunDataError(f"{where}: column '{column}' is empty; it needs a number")
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        raise RunDataError(f"{where}: column '{column}' holds '{text}', which is not a number") from None
    if not math.isfinite(value):
        raise RunDataError(f"{where}: column '{column}' holds '{text}'; it must be finite")
    return value


def read_published(path: str | Path) -> list[Published]:
    """The rows of a published-results CSV; a ``RunDataError`` naming the file, the row and the rule broken."""
    file = Path(path)
    if not file.is_file():
        raise RunDataError(f"--published {file}: no such file")
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise RunDataError(f"{file}: missing column(s) {', '.join(missing)}; the columns are {', '.join(COLUMNS)} (docs/report.md)")
        rows = list(reader)
    published, seen = [], set()
    for line, row in enumerate(rows, start=2):
        where = f"{file}, line {line}"
        task, algorithm, source = _task(row["task"]), row["algorithm"].strip().lower(), row["source"].strip()
        if not (task and algorithm and source):
            raise RunDataError(f"{where}: 'task', 'algorithm' and 'source' must not be empty")
        if (task, algorithm) in seen:
            raise RunDataError(f"{where}: a second value for {algorithm} on {task}")
        seen.add((task, algorithm))
        seeds = _number(row, "seeds", where)
        if seeds is not None and (seeds < 1 or seeds != int(seeds)):
            raise RunDataError(f"{where}: column 'seeds' must be a whole number of at least 1, got {row['seeds']}")
        mean = _number(row, "mean", where, required=True)
        assert mean is not None
        published.append(
            Published(task, algorithm, mean, _number(row, "std", where), None if seeds is None else int(seeds), _number(row, "frames", where), source)
        )
    return published


def _ours(scores: np.ndarray, frames: float) -> str:
    spread = f" ({scores.std(ddof=1):.2f})" if len(scores) > 1 else ""
    return f"{scores.mean():.2f}{spread} | {len(scores)} | {frames:,.0f}"


def _theirs(value: Published) -> str:
    spread = f" ± {value.std:.2f}" if value.std is not None else ""
    seeds = "" if value.seeds is None else str(value.seeds)
    frames = "" if value.frames is None else f"{value.frames:,.0f}"
    return f"{value.mean:.2f}{spread} | {seeds} | {frames} | {value.source}"


def published_table(published: Sequence[Published], scores: Scores, frames: Mapping[tuple[str, str], float]) -> str:
    """One Markdown row per task and algorithm that either side has, on the tasks of ``scores``: hcmarl's score
    (mean, sample std over seeds, seeds, frames reached) beside the published value; an empty side is ``-``."""
    by_key = {(p.task, p.algorithm): p for p in published}
    algorithms_of = {task: {a.lower(): a for a in per_alg} for task, per_alg in scores.items()}
    lines = [
        "| task | algorithm | hcmarl: score (std) | seeds | frames | published: score ± std | seeds | frames | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in sorted(scores):
        names = sorted(set(algorithms_of[task]) | {a for t, a in by_key if t == task})
        for name in names:
            ours = algorithms_of[task].get(name)
            left = _ours(scores[task][ours], frames[(task, ours)]) if ours is not None else "- | |"
            right = _theirs(by_key[(task, name)]) if (task, name) in by_key else "- | | |"
            lines.append(f"| {task} | {ours or name} | {left} | {right} |")
    return "\n".join(lines) + "\n"


def unmatched(published: Sequence[Published], tasks: Sequence[str]) -> list[str]:
    """The published tasks that no run of the report has (named on the page, so a misspelt task is seen)."""
    return sorted({p.task for p in published} - set(tasks))
