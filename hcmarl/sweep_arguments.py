"""The words of ``hcmarl sweep``: its parser, and the checks that turn ``--seeds``, ``--set`` and the
``hcmarl fit`` arguments after ``--`` into values, or into one clear :class:`ConfigError`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from hcmarl.errors import ConfigError

RESERVED = ("seed_everything", "data.total_frames", "ckpt_path", "config", "trainer.logger")
"""Keys the sweep sets itself: ``--seeds``, ``--frames``, resumption, ``--config``, the run folders."""


def is_reserved(key: str) -> bool:
    """Whether the dotted config ``key`` is one of ``RESERVED`` or lies below one."""
    return any(key == r or key.startswith(r + ".") for r in RESERVED)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> 0..4, ``"0,2,5"`` -> [0, 2, 5], ``"3"`` -> [3]; ranges and lists mix (``"0-2,7"``); repeats are dropped."""
    seeds: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None:
            raise ConfigError(f"--seeds '{text}': '{item}' is not a seed or a range; write e.g. 0-4, 0,2,5 or 3")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds '{text}': the range {item} ends before it starts; write it as {last}-{first}")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets, so that list values such as ``[64,64]`` stay whole."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def parse_set(text: str) -> tuple[str, list[str]]:
    """``"model.learner.init_args.lr=1e-3,5e-4"`` -> ``("model.learner.init_args.lr", ["1e-3", "5e-4"])``."""
    key, sep, values = text.partition("=")
    key = key.strip().removeprefix("--")
    items = [v.strip() for v in _split_values(values)]
    if not sep or not key or not all(items):
        raise ConfigError(f"--set '{text}' is not KEY=VALUE[,VALUE...]; e.g. --set model.learner.init_args.lr=1e-3,5e-4")
    if key != "data.total_frames" and is_reserved(key):
        raise ConfigError(f"--set {key}: the sweep sets this key itself; use --seeds, --frames or --out instead")
    return key, items


def check_extra(extra: Sequence[str]) -> None:
    """Refuse extra ``hcmarl fit`` arguments that would fight the sweep's own."""
    for arg in extra:
        key = arg.removeprefix("--").split("=", 1)[0]
        if arg.startswith("--") and is_reserved(key):
            raise ConfigError(f"'{arg}' after -- is set by the sweep itself; use --seeds, --frames, --set or --out instead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcmarl sweep",
        description="Train a recipe over seeds x override values, each run in its own folder; resumable. Arguments after -- go to every hcmarl fit.",
    )
    parser.add_argument("--config", required=True, help="a recipe: a YAML path or a shipped name such as mappo/coordsum_3x10")
    parser.add_argument("--seeds", required=True, help="seeds: 0-4, 0,2,5 or 3")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="values of a config key to sweep (repeatable: the grid is their product)",
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default: 1; a lone long run may take more cores)")
    parser.add_argument("--out", type=Path, default=Path("sweeps"), help="root of the run folders (default: sweeps)")
    parser.add_argument("--frames", type=int, default=None, help="frames per run (default: the recipe's data.total_frames)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print each run's status (finished, or the frames and evaluations it reached) and command, run nothing"
    )
    return parser
