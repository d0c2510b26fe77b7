"""Every run under the paths a report is given, merged across versions and sources (:func:`discover`).

Run folders and W&B exports are read by :mod:`hcmarl.report.runs`, marl-eval JSON files by
:mod:`hcmarl.report.marl_eval`; here their parts are merged into one :class:`~hcmarl.report.runs.Run` per
algorithm, task and seed, and a report's runs are checked for completeness and scored by one metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hcmarl.errors import RunDataError
from hcmarl.report.marl_eval import SOFTWARE_SUFFIX, read_marl_eval
from hcmarl.report.runs import METRIC_ALIASES, Run, RunPart, read_export, read_folder, relabel, run_folders


def _merge(parts: Iterable[RunPart]) -> list[Run]:
    """One run per (algorithm, task, seed): its parts in version order, a later point replacing an earlier one at
    equal frames (and the latest absolute metric and software record the run's); sorted by task, algorithm and seed."""
    merged: dict[tuple[str, str, int], Run] = {}
    for part in sorted(parts, key=lambda p: p.order):
        run = merged.setdefault(part.key, Run(*part.key, curves={}))
        points = {m: dict(c) for m, c in run.curves.items()}
        for metric, new in part.points.items():
            points.setdefault(metric, {}).update(new)
        run.curves = {m: sorted(p.items()) for m, p in points.items()}
        run.sources.append(part.source)
        run.absolute = part.absolute or run.absolute
        run.software = part.software or run.software
    return sorted(merged.values(), key=lambda r: (r.task, r.algorithm, r.seed))


def _imported_parts(path: Path) -> list[RunPart]:
    """The runs of a marl-eval JSON file as unmerged parts."""
    return [
        RunPart((r.algorithm, r.task, r.seed), (str(path), i), {m: dict(c) for m, c in r.curves.items()}, r.sources[0], r.absolute, True, r.software)
        for i, r in enumerate(read_marl_eval(path))
    ]


def _place_imported(parts: list[RunPart]) -> None:
    """Give imported runs (whose names marl-eval lower-cases) the spelling of an hcmarl run's task that equals
    theirs but for case; refuse an imported run that is also read from elsewhere (a second file or a run folder)."""
    spelling = {p.key[1].lower(): p.key[1] for p in parts if not p.imported}
    for part in parts:
        if part.imported:
            part.key = (part.key[0], spelling.get(part.key[1].lower(), part.key[1]), part.key[2])
    sources: dict[tuple[str, str, int], list[RunPart]] = {}
    for part in parts:
        sources.setdefault(part.key, []).append(part)
    for (algorithm, task, seed), same in sources.items():
        if len(same) > 1 and any(p.imported for p in same):
            raise RunDataError(
                f"{algorithm} on {task}, seed {seed} is read twice: from {same[0].source} and from {same[1].source}; "
                "give only one of them (a marl-eval file written by hcmarl report --marl-eval repeats its run folders)"
            )


def discover(paths: Sequence[str | Path], labels: Mapping[str, str] | None = None) -> tuple[list[Run], list[str]]:
    """Every run under ``paths``: folders searched for ``metrics.csv``, export ``.csv`` files, marl-eval ``.json`` files,
    each algorithm named in ``labels`` given its label (:func:`~hcmarl.report.runs.relabel`).

    Returns the runs (sorted by task, algorithm, seed) and notes on what was left out: folders whose logs hold no
    evaluation, and the software records of marl-eval files given as paths (they are read with their file).
    """
    parts: list[RunPart] = []
    notes = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise RunDataError(f"{path} does not exist; give run folders (written by hcmarl fit), an exported .csv or a marl-eval .json")
        if path.name.endswith(SOFTWARE_SUFFIX):
            notes.append(f"{path}: the software records of a marl-eval file, read with that file, not as runs")
        elif path.is_file() and path.suffix.lower() == ".json":
            parts.extend(_imported_parts(path))
        elif path.is_file() and path.name != "metrics.csv":
            parts.extend(read_export(path))
        else:
            parts.extend(read_folder(folder, root) for folder, root in run_folders(path))
    if not parts:
        raise RunDataError(
            f"no runs found in {', '.join(str(p) for p in paths)}: expected folders holding metrics.csv "
            "(as hcmarl fit writes them), an exported .csv of runs or a marl-eval .json"
        )
    _place_imported(parts)
    for part, key in zip(parts, relabel([p.key for p in parts], labels or {}), strict=True):
        part.key = key
    notes += [f"{p.source}: no evaluation logged, left out" for p in parts if not p.points]
    runs = _merge(p for p in parts if p.points)
    if not runs:
        raise RunDataError(f"no evaluation in any run found in {', '.join(str(p) for p in paths)}: train longer than data.eval_every iterations")
    return runs, notes


def split_incomplete(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """``(complete, incomplete)``: a run is incomplete when it stops before another seed of its algorithm and task."""
    longest: dict[tuple[str, str], float] = {}
    for run in runs:
        key = (run.algorithm, run.task)
        longest[key] = max(longest.get(key, 0.0), run.last_frames)
    complete = [r for r in runs if r.last_frames >= longest[(r.algorithm, r.task)]]
    return complete, [r for r in runs if r.last_frames < longest[(r.algorithm, r.task)]]


def resolve_metric(runs: Sequence[Run], metric: str) -> str:
    """The column to score ``runs`` by: ``auto`` is ``eval/win_rate`` when every run logs it, else ``eval/return``.

    ``return`` and ``win_rate`` are short for ``eval/return`` and ``eval/win_rate``; any other
    name is a column (``eval/guider/return``) that every run must have.
    """
    if metric == "auto":
        metric = "win_rate" if runs and all("eval/win_rate" in r.curves for r in runs) else "return"
    column = METRIC_ALIASES.get(metric, metric)
    for run in runs:
        run.curve(column)
    return column
