"""marl-eval's rules for a results file, checked before hcmarl reads one (``hcmarl.report.marl_eval`` describes the layout).

:func:`load_marl_eval` reads a file as marl-eval does (every key lower-cased, keys that then collide refused) and
refuses it at its first problem; :func:`problems` lists every way a file breaks the layout (a number ``step_count``,
lists of finite numbers for the metrics, ``step_<k>`` keys from 0) or the rules marl-eval needs to compare runs as
arrays: within one environment, every task the same algorithms, every algorithm on every task the same number of
runs, every run the same number of steps and every step the same metrics; no comma in an algorithm's name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hcmarl.errors import RunDataError
from hcmarl.report.json_text import parse_json

STEP_COUNT = "step_count"
ELAPSED = "elapsed_time"
PERCENT = 100.0
STEP_KEY = re.compile(r"step_(\d+)")
RUN_KEY = re.compile(r"(?:seed|run)?[_-]?(\d+)")


def _lower_keys(value: Any, path: str) -> Any:
    """``value`` with every object key lower-cased, as marl-eval reads it; keys that collide are refused."""
    if not isinstance(value, dict):
        return value
    lowered: dict[str, Any] = {}
    for key, item in value.items():
        low = key.lower()
        if low in lowered:
            twin = next(k for k in value if k.lower() == low)
            raise RunDataError(
                f"{path or 'the top level'}: the keys '{twin}' and '{key}' differ only in case, and marl-eval lower-cases every key, so they collide"
            )
        lowered[low] = _lower_keys(item, f"{path}/{low}" if path else low)
    return lowered


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_problem(name: str, value: Any) -> str | None:
    """What is wrong with one metric's value, or None."""
    if name == ELAPSED and is_number(value):
        return None
    if not isinstance(value, list) or not value or not all(is_number(v) for v in value):
        return f"'{name}' is {json.dumps(value)[:60]}, not a non-empty list of finite numbers"
    if name == "win_rate" and not all(0 <= v <= PERCENT for v in value):
        return "'win_rate' has a value outside 0-100: marl-eval files (Mava's) give win rates in percent"
    return None


def _step_problems(path: str, step: Any) -> Iterator[str]:
    if not isinstance(step, dict):
        yield f"{path}: is {json.dumps(step)[:60]}, not an object of metrics"
        return
    count = step.get(STEP_COUNT)
    if count is None:
        yield f"{path}: has no step_count (the environment steps when the evaluation ran)"
    elif not (is_number(count) and count >= 0 and float(count).is_integer()):
        yield f"{path}: step_count is {json.dumps(count)}, not a whole number of environment steps"
    for name, value in step.items():
        if name != STEP_COUNT and (problem := _metric_problem(name, value)) is not None:
            yield f"{path}: {problem}"


def _run_problems(path: str, run: Any) -> Iterator[str]:
    """Problems inside one run: its entries, its steps and their order."""
    steps = {}
    for key, entry in run.items():
        if "absolute" in key:  # marl-eval takes the key holding "absolute" as the absolute metrics
            if not isinstance(entry, dict) or not entry:
                yield f"{path}/{key}: is not an object of metrics"
            for name, value in entry.items() if isinstance(entry, dict) else ():
                if (problem := _metric_problem(name, value)) is not None:
                    yield f"{path}/{key}: {problem}"
        elif match := STEP_KEY.fullmatch(key):
            steps[int(match.group(1))] = entry
            yield from _step_problems(f"{path}/{key}", entry)
        else:
            yield f"{path}: has the entry '{key}'; a run holds step_<k> evaluations and absolute_metrics only"
    if not steps:
        yield f"{path}: has no step_<k> evaluation"
    counts = [(k, float(s[STEP_COUNT])) for k, s in sorted(steps.items()) if isinstance(s, dict) and is_number(s.get(STEP_COUNT))]
    for (k0, c0), (k1, c1) in zip(counts, counts[1:], strict=False):
        if c1 <= c0:
            yield f"{path}/step_{k1}: step_count {c1:g} is not above step_{k0}'s {c0:g}; evaluations must come in the order they ran"


def _level(value: Any, path: str, holds: str) -> Iterator[str]:
    """A problem when ``value`` (the object at ``path``) is not a non-empty object."""
    if not isinstance(value, dict) or not value:
        yield (
            f"{path or 'the top level'}: is {json.dumps(value)[:60]}, not a non-empty object of {holds} "
            "(marl-eval's layout is environment / task / algorithm / seed_<n> / step_<k>)"
        )


def run_seed(run_key: str) -> int | None:
    """The seed a run's key names (``seed_3``, ``run_3``, ``3``), or None."""
    match = RUN_KEY.fullmatch(run_key)
    return int(match.group(1)) if match else None


def _items(value: Any) -> Iterable[tuple[str, Any]]:
    """The entries of an object; none for anything else (its problem is reported by :func:`_level`)."""
    return value.items() if isinstance(value, dict) else ()


def _well_shaped(value: Any, depth: int) -> bool:
    """Whether ``value`` and the objects ``depth`` levels below it are all non-empty objects."""
    return isinstance(value, dict) and bool(value) and (depth == 0 or all(_well_shaped(v, depth - 1) for v in value.values()))


def _algorithm_problems(path: str, runs: Any) -> Iterator[str]:
    """Problems of one algorithm on one task: its name, its runs' keys and each run."""
    if "," in path.rsplit("/", 1)[1]:
        yield f"{path}: the algorithm name has a comma, which marl-eval refuses"
    yield from _level(runs, path, "runs (seed_<n>)")
    seeds: dict[int, str] = {}
    for run_key, run in _items(runs):
        seed = run_seed(run_key)
        if seed is None:
            yield f"{path}/{run_key}: a run's key must name its seed, as seed_<n> does"
        elif seed in seeds:
            yield f"{path}/{run_key}: names seed {seed}, as {seeds[seed]} does"
        else:
            seeds[seed] = run_key
        yield from _level(run, f"{path}/{run_key}", "evaluations (step_<k>)")
        if isinstance(run, dict) and run:
            yield from _run_problems(f"{path}/{run_key}", run)


def _structure_problems(data: Any) -> Iterator[str]:
    """Problems of the layout, level by level down to each metric."""
    yield from _level(data, "", "environments")
    for env, tasks in _items(data):
        yield from _level(tasks, env, "tasks")
        for task, algorithms in _items(tasks):
            yield from _level(algorithms, f"{env}/{task}", "algorithms")
            for algorithm, runs in _items(algorithms):
                yield from _algorithm_problems(f"{env}/{task}/{algorithm}", runs)


def _same_count(what: str, rule: str, have: Mapping[str, list[str]]) -> Iterator[str]:
    """One problem per entry of ``have`` (path -> names) whose count differs from the first entry's."""
    first_path, first = next(iter(have.items()))
    for path, names in have.items():
        if len(names) != len(first):
            lacks = sorted(set(first) - set(names))
            extra = f"; it lacks {', '.join(lacks)}" if lacks else ""
            yield f"{path}: has {len(names)} {what} where {first_path} has {len(first)}{extra} ({rule})"


def _same_algorithms(env: str, tasks: Mapping[str, Any]) -> Iterator[str]:
    """A problem per algorithm that one task of ``env`` has and another lacks."""
    algorithms = {f"{env}/{t}": set(algs) for t, algs in tasks.items()}
    first_path, first = next(iter(algorithms.items()))
    rule = "marl-eval needs the same algorithms on every task of an environment"
    for path, names in algorithms.items():
        yield from (f"{path}: has no algorithm '{a}', which {first_path} has ({rule})" for a in sorted(first - names))
        yield from (f"{first_path}: has no algorithm '{a}', which {path} has ({rule})" for a in sorted(names - first))


def _environment_problems(env: str, tasks: Mapping[str, Any]) -> Iterator[str]:
    """marl-eval's rules across one well-shaped environment: the same algorithms, runs, steps and metrics everywhere."""
    yield from _same_algorithms(env, tasks)
    runs = {f"{env}/{t}/{a}": sorted(rs) for t, algs in tasks.items() for a, rs in algs.items()}
    yield from _same_count("runs", "marl-eval needs the same number of runs of every algorithm on every task", runs)
    every_run = {f"{env}/{t}/{a}/{r}": run for t, algs in tasks.items() for a, rs in algs.items() for r, run in rs.items()}
    steps = {path: sorted(k for k in run if STEP_KEY.fullmatch(k)) for path, run in every_run.items()}
    yield from _same_count("evaluations (step_<k>)", "marl-eval needs the same number of evaluations in every run", steps)
    metrics = {
        f"{path}/{k}": sorted(set(step) - {STEP_COUNT})
        for path, run in every_run.items()
        for k, step in run.items()
        if STEP_KEY.fullmatch(k) and isinstance(step, dict)
    }
    first_path, first = next(iter(metrics.items()), ("", []))
    for path, names in metrics.items():
        if names != first:
            yield f"{path}: has the metrics {', '.join(names)} where {first_path} has {', '.join(first)} (marl-eval needs the same metrics at every evaluation)"


def problems(data: Any) -> Iterator[str]:
    """Every way ``data`` (keys already lower case) breaks marl-eval's layout or rules, as ``key path: rule``.

    The rules across an environment are checked once every environment, task, algorithm and run is a non-empty object.
    """
    yield from _structure_problems(data)
    if _well_shaped(data, 4):
        for env, tasks in data.items():
            yield from _environment_problems(env, tasks)


def load_marl_eval(path: Path) -> dict[str, Any]:
    """A marl-eval JSON file with its keys lower-cased (as marl-eval reads it), checked against :func:`problems`;
    the first problem raises ``RunDataError`` naming the file, the key path and the rule."""
    data = parse_json(path.read_text(), path)
    try:
        data = _lower_keys(data, "")
    except RunDataError as err:
        raise RunDataError(f"{path}: {err}") from None
    problem = next(problems(data), None)
    if problem is not None:
        raise RunDataError(f"{path}: {problem}")
    return data
