"""Smoke runs of the benchmark scripts in ``benchmarks/`` (their full versions write docs/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl is not installed (pip install 'hcmarl[smax]')")
def test_smax_rate_prints_a_row_of_positive_rates(capsys: pytest.CaptureFixture) -> None:
    _load("smax_rate").main(["--map", "3m", "--num-envs", "4", "--steps", "2", "--rounds", "1"])
    header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|")) == 9
    assert cells[:2] == ["3m", "4"]
    rates = [float(cell.replace(",", "")) for cell in cells[2:6]]
    ratios = [float(cell.rstrip("%")) for cell in cells[6:]]
    assert all(rate > 0 for rate in rates) and all(ratio > 0 for ratio in ratios)


def test_learning_writes_table_and_curve_and_equal_frames_reads_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One seed of MAPPO on CoordSum for one iteration through ``learning.py``; ``equal_frames.py`` reads it back."""
    frames = 64 * 128  # one iteration of the recipe
    docs = tmp_path / "docs"
    _load("learning").main(
        [
            "--recipe",
            "mappo/coordsum_3x10",
            "--seeds",
            "0",
            "--frames",
            str(frames),
            "--parallel",
            "1",
            "--work",
            str(tmp_path),
            "--docs",
            str(docs),
            "--",
            "--data.eval_episodes",
            "4",
        ]
    )
    table = (docs / "mappo_coordsum_3x10.md").read_text()
    assert "1 seed, 8,192 frames each" in table and "| 0 |" in table
    assert (docs / "mappo_coordsum_3x10.png").stat().st_size > 0
    capsys.readouterr()
    _load("equal_frames").main([str(tmp_path / "runs"), "--frames", str(frames), "--task", "coordsum/3x10"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mappo")]
    assert len(rows) == 1


def test_cost_writes_the_table_with_ratios_and_hours_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``cost.py`` for two families on one env, one iteration each; a second call reads the work folder and benches nothing."""
    out = tmp_path / "cost.md"
    args = [
        "--work",
        str(tmp_path),
        "--families",
        "mappo",
        "ippo",
        "--envs",
        "coordsum/3x10",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--out",
        str(out),
    ]
    _load("cost").main(args)
    assert capsys.readouterr().out.count("cost: ") == 2
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")] for line in out.read_text().splitlines()[2:]}
    assert set(rows) == {"mappo", "ippo"}
    assert rows["mappo"][6] == rows["mappo"][7] == "1.00" and rows["mappo"][8] == "20M"
    assert all(float(row[9]) > 0 and float(row[5].replace(",", "")) > 0 for row in rows.values())
    _load("cost").main(args)
    assert "cost: " not in capsys.readouterr().out


def test_update_time_times_one_recipes_update(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling costing.py, as when run from benchmarks/
    tiny = ["--data.num_envs", "4", "--data.rollout_steps", "8", "--data.env", "coordsum/8x15"]
    seconds = _load("update_time").main(["hatrpo/coordsum_3x10", *tiny, "--updates", "1"])
    assert seconds > 0
    assert "hatrpo/coordsum_3x10 --data.num_envs 4 --data.rollout_steps 8 --data.env coordsum/8x15: median update" in capsys.readouterr().out


def test_update_flops_count_the_matrix_products_and_scale_with_the_batch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """MLP updates at a fixed number of minibatches do twice the arithmetic on twice the envs; ``--flops`` prints the floor."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    update_time = _load("update_time")
    costing = _load("costing")
    counts = []
    for envs in (4, 8):
        torch.manual_seed(0)
        module, (env, steps) = costing.build("mappo/coordsum_3x10", ["--data.num_envs", str(envs), "--data.rollout_steps", "8"])
        batch = env.rollout(steps, module.behaviour_policy(), break_when_any_done=False)
        counts.append(update_time.count_flops(module, batch, module.configure_optimizers()))
    assert counts[0] > 0 and counts[1] == 2 * counts[0]
    update_time.main(["mappo/coordsum_3x10", "--data.num_envs", "4", "--data.rollout_steps", "8", "--updates", "1", "--flops"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"flops: {counts[0] / 1e9:.4g} GFLOP per update of 32 frames")
