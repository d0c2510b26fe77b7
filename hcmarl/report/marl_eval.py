"""marl-eval's JSON layout: hcmarl runs written into it, published results read from it.

marl-eval (instadeepai/marl-eval, Gorsane et al. 2022) is the file format in which Mava, the MAGPO authors
and BenchMARL release raw results. One file holds::

    {environment: {task: {algorithm: {run: {
        "step_<k>": {"step_count": <environment steps>, <metric>: [<values>], ...},   # k = 0, 1, ...
        "absolute_metrics": {<metric>: [<values>], ...}}}}}}

- ``step_count`` is a number; every other metric is a list: one value per evaluation episode (BenchMARL's
  ``return``, what hcmarl writes) or one value for the whole evaluation (Mava's ``mean_episode_return``,
  ``win_rate``, ``steps_per_second``). Mava and marl-eval's own ``JsonLogger`` write ``elapsed_time`` (seconds
  since the first evaluation) as a plain number, so it may be either.
- ``absolute_metrics`` is Mava's absolute metric: the best parameters of the run re-evaluated over ten times
  the evaluation episodes (marl-eval needs it to draw its aggregate plots).
- ``win_rate`` is a percentage, 0 to 100: Mava's logger multiplies the fraction of won episodes by 100
  (``calc_winrate`` in Mava's ``mava/utils/logger.py``; ``winrate_custom_metric`` in the MAGPO code), and
  marl-eval's JSON tooling guide logs a win rate of 85.3. hcmarl's ``eval/win_rate`` is a fraction, so the
  export multiplies by 100 and the import divides by 100.
- marl-eval lower-cases every key before it reads a file (``lower_case_dictionary_keys`` in
  ``data_process_pipeline`` and ``DiagnoseData``) and the names given to its functions, so names are
  case-insensitive and two keys of one object that differ only in case collide. hcmarl writes every key in
  lower case (as BenchMARL does), so a file reads the same before and after that step, and reads files the
  same way marl-eval does: keys lower-cased, collisions refused.
- marl-eval compares runs as arrays, so within one environment every task must have the same algorithms,
  every algorithm on every task the same number of runs, every run the same number of steps, and every
  step the same metrics; algorithm names must not contain commas.

marl-eval has no place for the software that trained a run, so :func:`write_marl_eval` keeps each run's record
(``hcmarl.provenance``, from its ``final_eval.json``) in a file beside, ``<name>.software.json``
(:func:`software_file`), laid out as the runs are (``{environment: {task: {algorithm: {run: {name: version}}}}}``), and
:func:`read_marl_eval` reads it back when it is there.

Names (:func:`marl_eval_names`, :func:`hcmarl_task`) follow Mava's ``env_name`` and ``task_name`` (its
``mava/configs/env`` files, which the MAGPO code keeps) where the task is the same; other families keep their
hcmarl name, which for VMAS is also BenchMARL's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hcmarl.errors import RunDataError
from hcmarl.report.json_text import parse_json
from hcmarl.report.marl_eval_rules import ELAPSED, PERCENT, STEP_COUNT, STEP_KEY, is_number, load_marl_eval, problems, run_seed
from hcmarl.report.runs import (
    FINAL_EVAL,
    RETURN,
    WIN_RATE,
    Run,
    folder_identity,
    read_config,
    read_final_eval,
    read_software,
    relabel,
    run_folders,
)

EVALUATIONS = "evaluations.jsonl"
DEPLOYED = "eval"
"""The evaluation prefix of the deployed policy: the one exported (``eval/guider``, ``eval/central``... are not)."""
ABSOLUTE = "absolute_metrics"
SOFTWARE_SUFFIX = ".software.json"
"""The name ending of the file beside a marl-eval file that keeps its runs' software records (:func:`software_file`)."""

COORDSUM_TASKS = {"3x10": "3x10-30-v0", "3x30": "3x30-50-v0", "5x20": "5x20-80-v0", "8x15": "8x15-100-v0"}
"""hcmarl's CoordSum tasks -> the MAGPO code's ``task_name`` of the same task (agents x actions - target)."""
FAMILY_ENVS = {"coordsum": "CoordSum", "smax": "Smax", "mpe": "MPE", "rware": "RobotWarehouse", "lbf": "LevelBasedForaging", "connector": "Connector"}
"""hcmarl env families -> Mava's ``env_name`` of the same environment."""
ENV_FAMILIES = {env.lower(): family for family, env in FAMILY_ENVS.items()} | {"maconnector": "connector"}
"""marl-eval environment (lower case) -> hcmarl family; Mava's current configs call Connector ``MaConnector``."""
MPE_SPREAD = "simple_spread_v3"
MPE_DEFAULT_AGENTS = 3  # mpe2's simple_spread_v3 default N
_MPE_TASK = re.compile(r"simple_spread_(\d+)ag")

IMPORTED_METRICS = (("return", RETURN, 1.0), ("mean_episode_return", RETURN, 1.0), ("win_rate", WIN_RATE, 1 / PERCENT))
"""(marl-eval metric, hcmarl metric, factor) in order of preference: ``return`` (per-episode lists of BenchMARL
and hcmarl) before Mava's ``mean_episode_return``; ``win_rate`` from percent to a fraction."""


# ---------------------------------------------------------------- names


def marl_eval_names(task: str, env_kwargs: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(environment, task)`` of an hcmarl task in marl-eval, lower case.

    ``coordsum/3x10`` -> ``("coordsum", "3x10-30-v0")`` (also 3x30-50-v0, 5x20-80-v0, 8x15-100-v0);
    ``smax/3s5z`` -> ``("smax", "3s5z")``; ``mpe/simple_spread_v3`` with ``env_kwargs`` ``N`` agents (mpe2's
    default 3) -> ``("mpe", "simple_spread_<N>ag")``; ``rware/``, ``lbf/``, ``connector/<task>`` ->
    ``robotwarehouse``, ``levelbasedforaging``, ``connector`` with the same task; any other ``family/task``
    -> ``(family, task)``.
    """
    family, sep, name = task.partition("/")
    if not sep or not name:
        raise RunDataError(f"the task '{task}' is not family/task (such as coordsum/3x10), so its marl-eval environment is unknown")
    if family == "coordsum":
        name = COORDSUM_TASKS.get(name, name)
    elif family == "mpe" and name == MPE_SPREAD:
        name = f"simple_spread_{int((env_kwargs or {}).get('N', MPE_DEFAULT_AGENTS))}ag"
    return FAMILY_ENVS.get(family, family).lower(), name.lower()


def hcmarl_task(environment: str, task: str) -> str:
    """The hcmarl task of a marl-eval ``(environment, task)``, the inverse of :func:`marl_eval_names`.

    Case-insensitive: ``("CoordSum", "3x10-30-v0")`` -> ``coordsum/3x10``. Mava's simple spread with N agents is
    ``mpe/simple_spread_v3`` for N = 3 and ``mpe/simple_spread_v3 (N=<N>)`` otherwise; an environment the map does
    not know gives ``<environment>/<task>`` in lower case.
    """
    family = ENV_FAMILIES.get(environment.lower(), environment.lower())
    name = task.lower()
    if family == "coordsum":
        name = {v: k for k, v in COORDSUM_TASKS.items()}.get(name, name)
    elif family == "mpe" and (match := _MPE_TASK.fullmatch(name)):
        agents = int(match.group(1))
        name = MPE_SPREAD if agents == MPE_DEFAULT_AGENTS else f"{MPE_SPREAD} (N={agents})"
    return f"{family}/{name}"


# ---------------------------------------------------------------- import


def _metric_means(metrics: Mapping[str, Any]) -> dict[str, float]:
    """hcmarl metric -> value of one step or absolute_metrics: the mean of its list, scaled (win rate to a fraction)."""
    means: dict[str, float] = {}
    for name, metric, factor in IMPORTED_METRICS:
        if name in metrics and metric not in means:
            means[metric] = factor * sum(metrics[name]) / len(metrics[name])
    return means


def _run_curves(run: Mapping[str, Any]) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """One run's curves (``(step_count, mean)`` per known metric, in step order) and absolute metric."""
    curves: dict[str, list[tuple[float, float]]] = {}
    absolute: dict[str, float] = {}
    for key, entry in sorted(run.items(), key=lambda item: _step_order(item[0])):
        if "absolute" in key:
            absolute = _metric_means(entry)
            continue
        for metric, value in _metric_means(entry).items():
            curves.setdefault(metric, []).append((float(entry[STEP_COUNT]), value))
    return curves, absolute


def _step_order(key: str) -> int:
    match = STEP_KEY.fullmatch(key)
    return int(match.group(1)) if match else -1


def software_file(path: str | Path) -> Path:
    """The file beside the marl-eval file ``path`` that keeps its runs' software records: ``x.json`` -> ``x.software.json``."""
    path = Path(path)
    return path.with_name(path.stem + SOFTWARE_SUFFIX)


def _read_software_file(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    """``(environment, task, algorithm, run) -> software record`` from the file beside the marl-eval file ``path``
    (keys lower-cased as the runs' are); empty when there is none."""
    beside = software_file(path)
    if not beside.exists():
        return {}
    data = parse_json(beside.read_text(), beside, f"; it should hold the software records of {path.name}'s runs")
    records = {}
    try:
        for env, tasks in data.items():
            for task, algorithms in tasks.items():
                for algorithm, seeds in algorithms.items():
                    for run_key, record in seeds.items():
                        names = (env, task, algorithm, run_key)
                        records[tuple(n.lower() for n in names)] = read_software(record, f"{beside}, {'/'.join(names)}")
    except AttributeError:
        raise RunDataError(f"{beside} is not laid out as {{environment: {{task: {{algorithm: {{run: {{name: version}}}}}}}}}}") from None
    return records


def read_marl_eval(path: Path) -> list[Run]:
    """The runs of a marl-eval file: per run, ``eval/return`` and ``eval/win_rate`` curves of (``step_count``, mean
    over the list) points, the absolute metric's means in :attr:`Run.absolute`, and the software record kept beside
    the file (:func:`software_file`) in :attr:`Run.software` where there is one.

    Tasks are named by :func:`hcmarl_task` and algorithms lower-cased, so published runs share tables with hcmarl's.
    """
    software = _read_software_file(path)
    runs = []
    for env, tasks in load_marl_eval(path).items():
        for task, algorithms in tasks.items():
            for algorithm, seeds in algorithms.items():
                for run_key, run in seeds.items():
                    seed = run_seed(run_key)
                    assert seed is not None  # load_marl_eval refuses a run key without a seed
                    curves, absolute = _run_curves(run)
                    source = f"{path} ({env}/{task}/{algorithm}/{run_key})"
                    record = software.get((env, task, algorithm, run_key), {})
                    runs.append(Run(algorithm, hcmarl_task(env, task), seed, curves, [source], absolute, record))
    return runs


# ---------------------------------------------------------------- export


@dataclass
class _Record:
    """One run's evaluations, merged over its version folders."""

    env_kwargs: Mapping[str, Any]
    evaluations: dict[int, dict[str, Any]]  # frames -> the evaluation's line of evaluations.jsonl
    final: dict[str, Any] | None


def _read_evaluations(path: Path) -> list[dict[str, Any]]:
    """The lines of an ``evaluations.jsonl``, each checked for ``frames`` and the deployed policy's returns."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        where = f"{path}, line {number}"
        line = parse_json(text, where)
        frames = line.get("frames") if isinstance(line, dict) else None
        episodes = (line.get("episodes") or {}).get(DEPLOYED) if isinstance(line, dict) else None
        if not is_number(frames) or not isinstance(episodes, dict) or not episodes.get("return"):
            raise RunDataError(f"{where}: an evaluation needs 'frames' and per-episode values under episodes.{DEPLOYED}.return")
        lines.append(line)
    return lines


def _records(paths: Sequence[str | Path], labels: Mapping[str, str]) -> tuple[dict[tuple[str, str, int], _Record], list[str]]:
    """Every run folder's record (versions merged: a later evaluation at equal frames replaces an earlier one; the
    latest ``final_eval.json`` counts), its algorithm relabelled by ``labels``, and notes on folders without
    ``evaluations.jsonl``. Labels of algorithms that no run folder has are skipped: a report's labels may name the
    runs of its ``.csv`` and marl-eval paths, which the export does not write (``hcmarl report`` checks every label
    against all of its runs first)."""
    found = []
    for given in paths:
        path = Path(given)
        if path.is_dir() or path.name == "metrics.csv":
            for folder, root in run_folders(path):
                config = read_config(folder)
                key, order = folder_identity(folder, root, config)
                found.append((order, key, folder, config))
    algorithms = {key[0] for _, key, _, _ in found}
    keys = relabel([key for _, key, _, _ in found], {name: label for name, label in labels.items() if name in algorithms})
    found = [(order, key, folder, config) for (order, _, folder, config), key in zip(found, keys, strict=True)]
    records: dict[tuple[str, str, int], _Record] = {}
    notes = []
    for _, key, folder, config in sorted(found, key=lambda item: item[0]):
        if not (folder / EVALUATIONS).exists():
            notes.append(f"{folder}: no {EVALUATIONS} (the runs of older hcmarl versions lack it), left out")
            continue
        record = records.setdefault(key, _Record((config.get("data") or {}).get("env_kwargs") or {}, {}, None))
        record.evaluations |= {int(line["frames"]): line for line in _read_evaluations(folder / EVALUATIONS)}
        record.final = read_final_eval(folder) or record.final
    return records, notes


def _episode_metrics(episodes: Mapping[str, Sequence[Any]]) -> dict[str, list[float]]:
    """marl-eval metrics of one evaluation's episodes: ``return``, and ``win_rate`` in percent (100 per won episode)."""
    metrics = {"return": [float(r) for r in episodes["return"]]}
    if "win" in episodes:
        metrics["win_rate"] = [PERCENT * float(w) for w in episodes["win"]]
    return metrics


def _step(line: Mapping[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = {STEP_COUNT: int(line["frames"]), **_episode_metrics(line["episodes"][DEPLOYED])}
    if line.get("steps_per_second") is not None:
        step["steps_per_second"] = [float(line["steps_per_second"])]
    if line.get(ELAPSED) is not None:
        step[ELAPSED] = float(line[ELAPSED])
    return step


def _run_entry(record: _Record, label: str) -> tuple[dict[str, Any], list[str]]:
    """One run's ``step_<k>`` entries and ``absolute_metrics``, and a note when the latter repeats the last evaluation."""
    lines = [record.evaluations[f] for f in sorted(record.evaluations)]
    entry: dict[str, Any] = {f"step_{k}": _step(line) for k, line in enumerate(lines)}
    episodes = ((record.final or {}).get("episodes") or {}).get(DEPLOYED)
    notes = []
    if not episodes:
        episodes = lines[-1]["episodes"][DEPLOYED]
        notes.append(
            f"{label}: {FINAL_EVAL} has no per-episode values (a run of an older hcmarl, or one without a final evaluation), "
            f"so absolute_metrics repeats its last evaluation, at {int(lines[-1]['frames']):,} frames"
        )
    entry[ABSOLUTE] = _episode_metrics(episodes)
    return entry, notes


def _export(paths: Sequence[str | Path], labels: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """:func:`marl_eval_export`'s data and notes, and the runs' software records laid out as the data's runs."""
    records, notes = _records(paths, labels)
    if not records:
        raise RunDataError(
            f"no hcmarl run folder with {EVALUATIONS} in {', '.join(str(p) for p in paths)}: the marl-eval export "
            f"needs each evaluation's episodes, which hcmarl fit writes into {EVALUATIONS}"
        )
    data: dict[str, Any] = {}
    software: dict[str, Any] = {}
    for (algorithm, task, seed), record in sorted(records.items()):
        env, env_task = marl_eval_names(task, record.env_kwargs)
        entry, entry_notes = _run_entry(record, f"{algorithm} on {task}, seed {seed}")
        name = algorithm.lower().replace(", ", "; ").replace(",", ";")
        data.setdefault(env, {}).setdefault(env_task, {}).setdefault(name, {})[f"seed_{seed}"] = entry
        run_software = read_software((record.final or {}).get("software"), f"{FINAL_EVAL} of {algorithm} on {task}, seed {seed}")
        if run_software:
            software.setdefault(env, {}).setdefault(env_task, {}).setdefault(name, {})[f"seed_{seed}"] = run_software
        notes += entry_notes
    notes += [f"breaks marl-eval's rules: {p}" for p in problems(data)]
    return data, software, notes


def marl_eval_export(paths: Sequence[str | Path], labels: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The marl-eval data of the hcmarl run folders under ``paths``, and notes for the caller; ``labels`` renames
    algorithms as :func:`~hcmarl.report.runs.relabel` does.

    Each run is ``<environment>/<task>/<algorithm>/seed_<n>`` (names by :func:`marl_eval_names`; the algorithm as
    :mod:`hcmarl.report.runs` names it, lower case, with ``, `` made ``; `` since marl-eval refuses commas). Each
    line of its ``evaluations.jsonl`` in frame order is ``step_<k>``: ``step_count`` (frames), ``return`` and
    ``win_rate`` (percent) per episode of the deployed policy, ``steps_per_second`` as a one-value list and
    ``elapsed_time`` as a number. ``absolute_metrics`` holds the per-episode values of ``final_eval.json``: the
    absolute metric's episodes under the ``magpo`` protocol, the final evaluation's under the others.

    Notes name folders left out, runs whose ``absolute_metrics`` repeats their last evaluation, and each way the
    data breaks marl-eval's rules (such as a seed with fewer evaluations than the others).
    """
    data, _, notes = _export(paths, labels or {})
    return data, notes


class MarlEvalFiles(NamedTuple):
    """What :func:`write_marl_eval` wrote: the marl-eval file, its software records beside it (None when no run
    recorded any) and the export's notes."""

    file: Path
    software: Path | None
    notes: list[str]


def write_marl_eval(paths: Sequence[str | Path], file: str | Path, labels: Mapping[str, str] | None = None) -> MarlEvalFiles:
    """Write :func:`marl_eval_export` of ``paths`` (algorithms renamed by ``labels``) to ``file`` (JSON), and the runs'
    software records beside it (:func:`software_file`; a stale one removed when no run recorded any)."""
    data, software, notes = _export(paths, labels or {})
    path = Path(file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    beside = software_file(path)
    if not software:
        beside.unlink(missing_ok=True)
        return MarlEvalFiles(path, None, notes)
    beside.write_text(json.dumps(software, indent=1) + "\n")
    return MarlEvalFiles(path, beside, notes)
