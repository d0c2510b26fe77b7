"""A resumed run continues the same run: its run folder, its metrics.csv (each iteration once), its W&B run (issue 21)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILLER, TINY, final_eval, recipe

from hcmarl.errors import STOPPED_BY_SIGTERM
from hcmarl.modules.cli import main

FRAMES_PER_ITERATION = 4 * 8  # TINY: 4 envs x 8 steps
RUNS = Path("runs/mappo/coordsum/3x10")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str, where: str) -> list[float]:
    """``key``'s values in the rows that log ``where``."""
    return [float(r[key]) for r in rows if r.get(where)]


def fit(*overrides: str) -> None:
    main(["fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, *overrides])


def test_a_run_stopped_by_sigterm_says_so_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM during iteration 5: Lightning finishes it and saves its checkpoint; hcmarl then names the frames
    and the checkpoint, writes no final_eval.json, and exits 143 (not 0, which would read as finished)."""
    (tmp_path / "killer.py").write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    stopped = subprocess.run(
        [sys.executable, "-m", "hcmarl.modules.cli", "fit", "--config", recipe("mappo/coordsum_3x10"), *TINY]
        + ["--data.total_frames", str(10 * FRAMES_PER_ITERATION), "--trainer.enable_progress_bar", "false"]
        + ["--trainer.callbacks+=killer.KillAt", "--trainer.callbacks.epoch=5", "--trainer.callbacks.signal=SIGTERM"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == STOPPED_BY_SIGTERM == 143, stopped.stderr[-3000:]
    run_dir = tmp_path / RUNS / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 5  # iteration 5 ran to its end and was saved
    frames = 6 * FRAMES_PER_ITERATION
    message = f"hcmarl: stopped by SIGTERM after {frames} of {10 * FRAMES_PER_ITERATION} frames; {ckpt.relative_to(tmp_path)} holds {frames} frames"
    assert message in stopped.stderr and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert not (run_dir / "final_eval.json").exists()


def test_a_run_killed_and_resumed_is_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """kill -9 after iteration 5 is logged but before its checkpoint; the resume logs into the same folder, each iteration once."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "killer.py").write_text(KILLER)
    run = ["--data.total_frames", str(10 * FRAMES_PER_ITERATION), "--data.eval_every", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "hcmarl.modules.cli", "fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, *run]
    killed = subprocess.run(
        [*command, "--trainer.callbacks+=killer.KillAt", "--trainer.callbacks.epoch=5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = RUNS / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 4
    assert column(read_metrics(run_dir), "epoch", "frames")[-1] == 5  # iteration 5 was logged before the kill

    fit(*run, "--ckpt_path", str(ckpt))
    assert [p.name for p in RUNS.iterdir()] == ["version_0"]
    rows = read_metrics(run_dir)
    assert column(rows, "epoch", "frames") == list(range(10))
    assert column(rows, "step", "frames") == list(range(10))
    assert column(rows, "frames", "frames") == [FRAMES_PER_ITERATION * (i + 1) for i in range(10)]
    evaluated = column(rows, "epoch", "eval/return")
    assert evaluated[:5] == [1, 3, 5, 7, 9] and evaluated == sorted(set(evaluated))  # every 2 iterations, each once
    records = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8, 10]  # iteration 6's record before the kill is dropped
    assert [r["elapsed_time"] for r in records] == sorted(r["elapsed_time"] for r in records)  # carried over the resume
    assert final_eval(run_dir)["frames"] == 10 * FRAMES_PER_ITERATION and (run_dir / "config.yaml").exists()
    assert f"hcmarl: resuming the run in {run_dir} after its checkpoint at epoch 4 (metrics.csv continued)" in capsys.readouterr().out


def test_the_run_folder_guard_lets_a_resume_in_and_keeps_a_new_run_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    fit("--data.total_frames", str(2 * FRAMES_PER_ITERATION))
    run_dir = RUNS / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:  # a new run into the used folder
        fit("--data.total_frames", str(2 * FRAMES_PER_ITERATION), "--trainer.logger.init_args.version", "0")
    assert exit_info.value.code == 2
    assert "already holds a run's metrics.csv" in capsys.readouterr().err

    # a resume with the version set to its own folder continues it
    fit("--data.total_frames", str(3 * FRAMES_PER_ITERATION), "--trainer.logger.init_args.version", "0", "--ckpt_path", str(ckpt))
    assert column(read_metrics(run_dir), "frames", "frames") == [32, 64, 96]

    # a copied checkpoint is not in a run folder: a new version, and a line saying so
    copy = tmp_path / "copied.ckpt"
    shutil.copy(ckpt, copy)
    capsys.readouterr()
    fit("--data.total_frames", str(4 * FRAMES_PER_ITERATION), "--ckpt_path", str(copy))
    assert "is not in a run folder (<run folder>/checkpoints/), so the resumed run logs into a new run folder" in capsys.readouterr().out
    assert sorted(p.name for p in RUNS.iterdir()) == ["version_0", "version_1"]
    assert column(read_metrics(RUNS / "version_1"), "frames", "frames") == [128]
    assert column(read_metrics(run_dir), "frames", "frames") == [32, 64, 96]  # untouched


RESUME_W_AND_B = """
from pathlib import Path
from hcmarl.modules.cli import main
base = ["fit", "--config", {recipe!r}, *{tiny!r}, "--trainer.logger", "hcmarl.modules.loggers.WandbLogger",
        "--trainer.logger.init_args.save_dir", "wb"]
main([*base, "--data.total_frames", "{frames}"])
(ckpt,) = Path("wb/hcmarl").glob("*/checkpoints/last.ckpt")
main([*base, "--data.total_frames", "{more}", "--ckpt_path", str(ckpt)])
"""


def test_a_resumed_w_and_b_run_keeps_its_id_and_folder(tmp_path: Path) -> None:
    """The W&B run of the checkpoint's folder ``<save_dir>/<project>/<run id>`` is resumed. Offline, each part of the run
    is its own ``offline-run-*-<id>`` folder with the same id, which ``wandb sync`` uploads in order into one W&B run.
    In a fresh process: W&B keeps per-process state (its service's working folder) that would leak into other tests."""
    pytest.importorskip("wandb")
    env = dict(os.environ, WANDB_MODE="offline", HOME=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    script = RESUME_W_AND_B.format(recipe=recipe("mappo/coordsum_3x10"), tiny=TINY, frames=FRAMES_PER_ITERATION, more=2 * FRAMES_PER_ITERATION)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "wb" / "hcmarl").iterdir()
    assert json.loads((run_dir / "final_eval.json").read_text())["frames"] == 2 * FRAMES_PER_ITERATION
    assert len(list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_dir.name}"))) == 2
    assert f"hcmarl: resuming the run in wb/hcmarl/{run_dir.name}: W&B run {run_dir.name}, resume='allow'" in result.stdout
