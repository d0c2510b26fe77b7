"""Runs read back from disk: run folders written by ``hcmarl fit`` or a W&B project export.

A *run* here is one seed of one algorithm on one task, with its evaluation curves: for every
``eval/...`` metric, ``(frames, value)`` points in frame order. Run folders (``metrics.csv`` beside
``config.yaml``) and export rows that share algorithm, task and seed are one run, merged in
version order: a run resumed by an older hcmarl (or from a copied checkpoint) continued in a new
``version_K+1`` folder, and its curve is the union over its versions (a later version's point replaces an
earlier one at equal frames).

Identity of a run folder:

- algorithm: the first part of the logger name in ``config.yaml`` (``trainer.logger.init_args.name``,
  e.g. ``mappo/coordsum/3x10`` or ``mappo/coordsum_3x10/seed0``), plus any ``key=value`` parts that
  ``hcmarl sweep`` adds (``mappo (lr=0.001)``); without a config, the folder's path below the
  searched root stands for the name;
- task: ``data.env`` in ``config.yaml``, else the name's middle parts;
- seed: ``seed_everything`` in ``config.yaml``, else a final ``seed<k>`` part of the name.

A W&B export is one CSV file in long format, one row per logged step of a run (what
``wandb.Api().run(...).history()`` gives, concatenated over runs):

- ``run`` or ``name`` (required): the run's name, parsed like a logger name above;
- ``frames`` (required) and one or more ``eval/...`` columns (e.g. ``eval/return``,
  ``eval/win_rate``); an evaluation row without ``frames`` takes them from the latest row at or
  before its ``epoch`` (needs an ``epoch`` column), as in ``metrics.csv``;
- optional ``algorithm`` (else ``group``'s or the name's first part), ``task`` (else ``data.env``,
  else the group's or name's middle parts) and ``seed`` (else ``seed_everything``, else the name's
  ``seed<k>`` part).

:func:`write_export` writes runs in this format (one row per evaluation), which is how a compact
copy of finished runs is kept next to a report.

A marl-eval JSON file (``.json``: Mava's, the MAGPO authors' released data, BenchMARL's, or one that
``hcmarl report --marl-eval`` wrote) is read by :func:`hcmarl.report.marl_eval.read_marl_eval`; its runs keep
their absolute metric in :attr:`Run.absolute`, as do run folders whose ``final_eval.json`` was made by the
``magpo`` evaluation protocol.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hcmarl.errors import ConfigError, RunDataError
from hcmarl.report.json_text import parse_json

RETURN, WIN_RATE = "eval/return", "eval/win_rate"
METRIC_ALIASES = {"return": RETURN, "win_rate": WIN_RATE}
FINAL_EVAL = "final_eval.json"
EXPORT_ID_COLUMNS = ("run", "algorithm", "task", "seed", "frames")
_SEED_PART = re.compile(r"seed[_=-]?(\d+)")
_VERSION = re.compile(r"version_(\d+)")

Points = dict[str, dict[float, float]]
"""metric -> {frames: value}"""


@dataclass
class Run:
    """One seed of one algorithm on one task, and where it was read from."""

    algorithm: str
    task: str
    seed: int
    curves: dict[str, list[tuple[float, float]]]
    sources: list[str] = field(default_factory=list)
    absolute: dict[str, float] = field(default_factory=dict)
    """metric -> the run's absolute metric (Mava's: the best parameters re-evaluated over ten times the
    evaluation episodes), the mean over those episodes; empty when the run has none."""
    software: dict[str, str] = field(default_factory=dict)
    """name -> version of the software that finished the run (``hcmarl.provenance``, from its ``final_eval.json``);
    empty when not recorded (runs of hcmarl before it recorded them, exports, marl-eval files)."""

    @property
    def label(self) -> str:
        return f"{self.algorithm} on {self.task}, seed {self.seed}"

    @property
    def last_frames(self) -> float:
        """Frames at the run's last evaluation (any metric)."""
        return max(points[-1][0] for points in self.curves.values())

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(frames, values)`` of ``metric``, in frame order."""
        if metric not in self.curves:
            raise RunDataError(f"{self.label} ({', '.join(self.sources)}) has no '{metric}'; it has: {', '.join(sorted(self.curves))}")
        frames, values = zip(*self.curves[metric], strict=True)
        return np.asarray(frames), np.asarray(values)


def version_dirs(folder: Path) -> list[Path]:
    """``folder/version_K`` subfolders in increasing K (the versions of one resumed run)."""
    versions = [p for p in folder.glob("version_*") if p.is_dir() and _VERSION.fullmatch(p.name)]
    return sorted(versions, key=lambda p: int(p.name.split("_")[1]))


def _number(text: str | None, where: str) -> float | None:
    """A logged value; None where nothing (or NaN) was logged."""
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RunDataError(f"{where}: the value '{text}' is not a number") from None
    return None if math.isnan(value) else value


def _is_eval_metric(column: str) -> bool:
    return column.startswith("eval/") and not column.endswith("/episodes")


def curves_from_rows(rows: Sequence[Mapping[str, str]], where: str) -> Points:
    """Evaluation points of logged rows (``metrics.csv`` or one run of an export).

    A row with ``frames`` and an ``eval/...`` value gives that point. An evaluation row without
    ``frames`` (Lightning logs validation as its own row) takes the frames of the latest row at
    or before its ``epoch``: the final evaluation after the last epoch gets the last frames.
    Evaluation rows before any frames are counted are left out.
    """
    metrics = [c for c in (rows[0].keys() if rows else []) if _is_eval_metric(c)]
    counted = [(_number(r.get("epoch"), where), _number(r.get("frames"), where)) for r in rows]
    known = sorted((e, f) for e, f in counted if e is not None and f is not None)
    epochs = [e for e, _ in known]
    points: Points = {m: {} for m in metrics}
    for row, (epoch, frames) in zip(rows, counted, strict=True):
        present = {m: v for m in metrics if (v := _number(row.get(m), where)) is not None}
        if not present:
            continue
        if frames is None:
            if epoch is None:
                raise RunDataError(f"{where}: an evaluation row has neither 'frames' nor 'epoch', so its frame count is unknown")
            i = bisect.bisect_right(epochs, epoch)
            if i == 0:
                continue
            frames = known[i - 1][1]
        for m, v in present.items():
            points[m][frames] = v
    return {m: p for m, p in points.items() if p}


def parse_run_name(name: str) -> tuple[str, str | None, int | None]:
    """``(algorithm, task or None, seed or None)`` from a logger or W&B run name.

    ``mappo/coordsum_3x10/seed0`` -> ``("mappo", "coordsum_3x10", 0)``;
    ``mappo/coordsum_3x10/lr=0.001/seed1`` -> ``("mappo (lr=0.001)", "coordsum_3x10", 1)``;
    ``mappo/coordsum/3x10`` -> ``("mappo", "coordsum/3x10", None)``. An ``env=...`` value (a sweep
    over ``data.env``) changes the task, so it is not part of the algorithm.
    """
    parts = [p for p in name.strip("/").split("/") if p]
    if not parts:
        raise RunDataError("a run has an empty name, so its algorithm is unknown; give the logger a name such as mappo/coordsum_3x10")
    seed = None
    if len(parts) > 1 and (match := _SEED_PART.fullmatch(parts[-1])):
        seed, parts = int(match.group(1)), parts[:-1]
    tags = [t for p in parts[1:] if "=" in p for t in p.split(",") if not t.startswith("env=")]
    task_parts = [p for p in parts[1:] if "=" not in p]
    algorithm = parts[0] + (f" ({', '.join(tags)})" if tags else "")
    return algorithm, "/".join(task_parts) or None, seed


def relabel(keys: Sequence[tuple[str, str, int]], labels: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """``keys`` (algorithm, task, seed) with each algorithm named in ``labels`` given its label (``hcmarl report --label``).

    A ConfigError when a labelled algorithm is not among the keys' (the message lists theirs) or when two different
    algorithms would end up with the same name (their runs would be merged as one algorithm's).
    """
    found = sorted({algorithm for algorithm, _, _ in keys})
    unknown = [name for name in labels if name not in found]
    if unknown:
        raise ConfigError(f"--label {unknown[0]!r}: no run has that algorithm; the runs' algorithms are: {'; '.join(found)}")
    names = {algorithm: labels.get(algorithm, algorithm) for algorithm in found}
    named_by: dict[str, str] = {}
    for algorithm, name in names.items():
        if name in named_by:
            raise ConfigError(f"--label: {named_by[name]!r} and {algorithm!r} would both be named {name!r}; give each algorithm its own label")
        named_by[name] = algorithm
    return [(names[algorithm], task, seed) for algorithm, task, seed in keys]


def _identity(where: str, algorithm: str, task: object, seed: object) -> tuple[str, str, int]:
    """Check and convert a run's identity; the message says where each piece can come from."""
    if not isinstance(task, str) or not task:
        raise RunDataError(
            f"{where}: the task is unknown; it needs data.env in config.yaml, a 'task' column, or a name like <algorithm>/<task>/seed<k>"
        )
    if seed is None or isinstance(seed, bool) or str(seed).strip() == "":
        raise RunDataError(f"{where}: the seed is unknown; it needs seed_everything in config.yaml, a 'seed' column, or a name ending in seed<k>")
    if isinstance(seed, (str, int, float)):  # a YAML value may also be a list or a mapping
        try:
            return algorithm, task, int(float(seed))
        except (ValueError, OverflowError):
            pass
    raise RunDataError(f"{where}: the seed '{seed}' is not an integer")


@dataclass
class RunPart:
    """One version folder, or one run of an export, before versions are merged."""

    key: tuple[str, str, int]
    order: tuple
    points: Points
    source: str
    absolute: dict[str, float] = field(default_factory=dict)
    imported: bool = False  # read from a marl-eval file
    software: dict[str, str] = field(default_factory=dict)


def _relative_name(folder: Path, root: Path) -> str:
    """A folder's path below the searched root, standing for the logger name when there is no config."""
    try:
        name = folder.relative_to(root).as_posix()
    except ValueError:
        name = "."
    return folder.name if name == "." else name


def read_config(folder: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as a dict (empty when there is none)."""
    path = folder / "config.yaml"
    config = yaml.safe_load(path.read_text()) if path.exists() else {}
    return config if isinstance(config, dict) else {}


def folder_identity(folder: Path, root: Path, config: Mapping[str, Any]) -> tuple[tuple[str, str, int], tuple[str, int]]:
    """``((algorithm, task, seed), (run folder, version))`` of a run folder found below ``root`` (rules in the module docstring)."""
    logger = (config.get("trainer") or {}).get("logger") or {}
    logger_args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
    has_version = _VERSION.fullmatch(folder.name) is not None
    named_folder = folder.parent if has_version else folder
    name = logger_args.get("name") or _relative_name(named_folder, root)
    algorithm, name_task, name_seed = parse_run_name(str(name))
    seed = config.get("seed_everything")
    seed = name_seed if seed is None or isinstance(seed, bool) else seed
    key = _identity(str(folder), algorithm, (config.get("data") or {}).get("env") or name_task, seed)
    version = int(folder.name.split("_")[1]) if has_version else 0
    return key, (str(named_folder), version)


def run_folders(path: Path) -> list[tuple[Path, Path]]:
    """``(run folder, searched root)`` of every ``metrics.csv`` at or below ``path`` (a folder, or a ``metrics.csv``)."""
    if path.is_file():
        return [(path.parent, path.parent.parent)]
    return [(m.parent, path) for m in sorted(path.rglob("metrics.csv"))]


def _episode_means(episodes: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``eval/return`` and (where the env has wins) ``eval/win_rate`` as fractions: the means of one evaluation's
    per-episode ``return`` and ``win`` values."""
    means = {RETURN: float(np.mean(episodes["return"]))}
    if "win" in episodes:
        means[WIN_RATE] = float(np.mean([float(w) for w in episodes["win"]]))
    return means


def read_final_eval(folder: Path) -> dict[str, Any]:
    """A run folder's ``final_eval.json`` (empty when the run has none yet)."""
    path = folder / FINAL_EVAL
    if not path.exists():
        return {}
    final = parse_json(path.read_text(), path)
    if not isinstance(final, dict):
        raise RunDataError(f"{path} holds {type(final).__name__}, not the object of results hcmarl fit writes")
    return final


def _absolute(final: Mapping[str, Any]) -> dict[str, float]:
    """The absolute metric of a ``final_eval.json`` made by the ``magpo`` protocol (the means of its per-episode
    values); empty for other protocols and for older files without episodes."""
    if final.get("protocol") != "magpo" or not (final.get("episodes") or {}).get("eval"):
        return {}
    return _episode_means(final["episodes"]["eval"])


def read_software(record: Any, where: str) -> dict[str, str]:
    """A software record (``hcmarl.provenance``: name -> version) read from ``where``, checked; ``None`` is empty."""
    record = record or {}
    if not isinstance(record, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in record.items()):
        raise RunDataError(f"{where}: 'software' is {json.dumps(record)[:60]}, not an object of name -> version strings")
    return record


def read_metrics(folder: Path) -> list[dict[str, str]]:
    """The rows of a version folder's ``metrics.csv``, as the CSV logger wrote them."""
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_folder(folder: Path, root: Path) -> RunPart:
    """One version folder of a run (its ``metrics.csv`` curves, identity, absolute metric and software), unmerged."""
    rows = read_metrics(folder)
    key, order = folder_identity(folder, root, read_config(folder))
    final = read_final_eval(folder)
    points = curves_from_rows(rows, str(folder / "metrics.csv"))
    return RunPart(key, order, points, str(folder), _absolute(final), software=read_software(final.get("software"), str(folder / FINAL_EVAL)))


def read_export(path: Path) -> list[RunPart]:
    """The runs of a W&B export CSV (format in the module docstring), unmerged."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    id_column = next((c for c in ("run", "name") if c in columns), None)
    missing = [c for c, ok in (("run or name", id_column), ("frames", "frames" in columns)) if not ok]
    if not any(_is_eval_metric(c) for c in columns):
        missing.append("an eval/... metric such as eval/return")
    if missing:
        raise RunDataError(
            f"{path} is not a run export: it lacks the column(s) {', '.join(missing)}. Expected one row per logged step with "
            "'run' (or 'name'), 'frames', eval/... metrics, and optionally 'algorithm', 'task', 'seed', 'group', 'epoch' "
            f"(see hcmarl.report.runs); its columns are: {', '.join(columns) or 'none'}"
        )
    by_run: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_run.setdefault(row[id_column], []).append(row)
    parts = []
    for order, (run_name, run_rows) in enumerate(by_run.items()):
        first = run_rows[0]
        where = f"{path}, run '{run_name}'"
        algorithm, name_task, _ = parse_run_name(first.get("group") or run_name)
        key = _identity(
            where,
            first.get("algorithm") or algorithm,
            first.get("task") or first.get("data.env") or name_task,
            first.get("seed") or first.get("seed_everything") or parse_run_name(run_name)[2],
        )
        parts.append(RunPart(key, (str(path), order), curves_from_rows(run_rows, where), where))
    return parts


def write_export(runs: Sequence[Run], path: Path) -> Path:
    """Write ``runs`` as an export CSV (one row per evaluation), readable back by :func:`hcmarl.report.discovery.discover`."""
    metrics = sorted({m for r in runs for m in r.curves})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*EXPORT_ID_COLUMNS, *metrics])
        for run in runs:
            values = {m: dict(c) for m, c in run.curves.items()}
            for frames in sorted({f for c in values.values() for f in c}):
                cells = [f"{values[m][frames]:.10g}" if frames in values.get(m, {}) else "" for m in metrics]
                writer.writerow([f"{run.algorithm}/{run.task}/seed{run.seed}", run.algorithm, run.task, run.seed, f"{frames:.0f}", *cells])
    return path
