"""marl-eval JSON validation: each broken rule of the layout names the file, the key path and the rule (docs/report.md,
"Validation rules"), in the library and as the report command's one-line error."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hcmarl.errors import RunDataError
from hcmarl.modules.cli import main
from hcmarl.report.marl_eval import read_marl_eval


def _valid() -> dict[str, Any]:
    """A small valid file in hcmarl's layout: two algorithms, two seeds, three evaluations, per-episode lists."""

    def run(seed: int) -> dict[str, Any]:
        steps = {f"step_{k}": {"step_count": 100 * (k + 1), "return": [1.0 + k, 2.0 + seed], "win_rate": [0.0, 100.0]} for k in range(3)}
        return steps | {"absolute_metrics": {"return": [3.0, 4.0], "win_rate": [100.0, 100.0]}}

    return {"coordsum": {"3x10-30-v0": {alg: {f"seed_{s}": run(s) for s in (0, 1)} for alg in ("mappo", "magpo")}}}


def _at(data: dict, path: str) -> Any:
    for key in path.split("/"):
        data = data[key]
    return data


RUN = "coordsum/3x10-30-v0/mappo/seed_1"


def _set(path: str, key: str, value: Any) -> Callable[[dict], Any]:
    return lambda d: _at(d, path).__setitem__(key, value)


def _delete(path: str, key: str) -> Callable[[dict], Any]:
    return lambda d: _at(d, path).pop(key)


BROKEN = {
    "case collision": (
        lambda d: _at(d, "coordsum/3x10-30-v0").__setitem__("MAPPO", copy.deepcopy(_at(d, "coordsum/3x10-30-v0/mappo"))),
        "coordsum/3x10-30-v0",
        "differ only in case",
    ),
    "no step_count": (_delete(f"{RUN}/step_1", "step_count"), f"{RUN}/step_1", "has no step_count"),
    "step_count not whole": (_set(f"{RUN}/step_1", "step_count", 150.5), f"{RUN}/step_1", "not a whole number"),
    "metric not a list": (_set(f"{RUN}/step_0", "return", 3.0), f"{RUN}/step_0", "not a non-empty list of finite numbers"),
    "metric with a string": (_set(f"{RUN}/step_0", "return", [1.0, "2"]), f"{RUN}/step_0", "not a non-empty list of finite numbers"),
    "metric with a bool": (_set(f"{RUN}/absolute_metrics", "return", [True]), f"{RUN}/absolute_metrics", "not a non-empty list"),
    "empty metric": (_set(f"{RUN}/step_2", "return", []), f"{RUN}/step_2", "not a non-empty list"),
    "win rate as a fraction above 100": (_set(f"{RUN}/step_2", "win_rate", [150.0]), f"{RUN}/step_2", "outside 0-100"),
    "steps out of order": (_set(f"{RUN}/step_2", "step_count", 200), f"{RUN}/step_2", "not above step_1's 200"),
    "missing algorithm on a task": (
        lambda d: d["coordsum"].__setitem__("3x30-50-v0", {"magpo": copy.deepcopy(d["coordsum"]["3x10-30-v0"]["magpo"])}),
        "coordsum/3x30-50-v0",
        "has no algorithm 'mappo', which coordsum/3x10-30-v0 has",
    ),
    "missing seed": (_delete("coordsum/3x10-30-v0/magpo", "seed_1"), "coordsum/3x10-30-v0/magpo", "has 1 runs where"),
    "missing step": (_delete(RUN, "step_2"), RUN, "lacks step_2"),
    "different metrics": (_delete(f"{RUN}/step_1", "win_rate"), f"{RUN}/step_1", "has the metrics return where"),
    "comma in an algorithm": (
        lambda d: d["coordsum"]["3x10-30-v0"].__setitem__("mappo (lr=1, eps=2)", d["coordsum"]["3x10-30-v0"].pop("mappo")),
        "coordsum/3x10-30-v0/mappo (lr=1, eps=2)",
        "has a comma",
    ),
    "run without a seed": (
        lambda d: _at(d, "coordsum/3x10-30-v0/mappo").__setitem__("best", _at(d, "coordsum/3x10-30-v0/mappo").pop("seed_1")),
        "coordsum/3x10-30-v0/mappo/best",
        "must name its seed",
    ),
    "two keys of one seed": (_set("coordsum/3x10-30-v0/mappo", "run_1", {}), "coordsum/3x10-30-v0/mappo/run_1", "names seed 1, as seed_1 does"),
    "unknown run entry": (_set(RUN, "final", {"return": [1.0]}), RUN, "step_<k> evaluations and absolute_metrics only"),
    "not an object": (_set("coordsum/3x10-30-v0", "mappo", [1, 2]), "coordsum/3x10-30-v0/mappo", "not a non-empty object of runs"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validation_names_the_file_key_path_and_rule(case: str, tmp_path: Path) -> None:
    data = _valid()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    read_marl_eval(path)  # valid before the change
    breaks, key_path, rule = BROKEN[case]
    breaks(data)
    path.write_text(json.dumps(data))
    with pytest.raises(RunDataError) as info:
        read_marl_eval(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key_path}") and rule in message, message


def test_a_file_that_is_not_marl_eval_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("{")
    with pytest.raises(RunDataError, match="results.json is not valid JSON"):
        read_marl_eval(path)
    path.write_text(json.dumps({"frames": 100, "eval/return": 3.0}))  # a final_eval.json given by mistake
    with pytest.raises(RunDataError, match=r"results.json: frames: is 100, not a non-empty object of tasks"):
        read_marl_eval(path)


def test_report_command_on_a_broken_file_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _valid()
    del data["coordsum"]["3x10-30-v0"]["mappo"]["seed_1"]["step_1"]["step_count"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "results.json"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"hcmarl: error: {tmp_path / 'results.json'}: coordsum/3x10-30-v0/mappo/seed_1/step_1: has no step_count (the environment steps when the evaluation ran)"
    )
