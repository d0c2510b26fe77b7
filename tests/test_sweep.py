"""``hcmarl sweep``: seeds and grids, resumption (mocked and one real tiny run), errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import KILLER

import hcmarl.sweep as sweep
from hcmarl.errors import STOPPED_BY_SIGTERM, ConfigError
from hcmarl.modules.cli import main
from hcmarl.sweep import expand_grid
from hcmarl.sweep_arguments import check_extra, parse_seeds, parse_set

TINY_FIT = ["--data.num_envs", "4", "--data.rollout_steps", "8", "--data.eval_episodes", "2"]


def test_seeds_as_range_list_or_one() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("3") == [3]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("a", "4-2", "", "1,,2", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_set_values_split_outside_brackets() -> None:
    assert parse_set("model.learner.init_args.lr=1e-3,5e-4") == ("model.learner.init_args.lr", ["1e-3", "5e-4"])
    assert parse_set("model.x.hidden_sizes=[64,64],[128,128]") == ("model.x.hidden_sizes", ["[64,64]", "[128,128]"])
    assert parse_set("data.total_frames=100,200") == ("data.total_frames", ["100", "200"])
    for bad in ("lr", "=1,2", "lr=1,"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_set(bad)
    with pytest.raises(ConfigError, match="--seeds"):
        parse_set("seed_everything=1,2")


def test_grid_is_the_product_of_set_values_times_seeds(tmp_path: Path) -> None:
    sets = [("model.learner.init_args.lr", ["1e-3", "5e-4"]), ("data.num_envs", ["4", "8", "16"])]
    runs = expand_grid("mappo/coordsum_3x10", [0, 1], sets, tmp_path)
    assert len(runs) == 12 and len({r.folder for r in runs}) == 12
    assert {(r.overrides, r.seed) for r in runs} == {
        ((("model.learner.init_args.lr", lr), ("data.num_envs", n)), s) for lr in ("1e-3", "5e-4") for n in ("4", "8", "16") for s in (0, 1)
    }
    first = runs[0]
    assert first.name == "mappo/coordsum_3x10/lr=1e-3,num_envs=4/seed0"
    assert first.folder == tmp_path.resolve() / "mappo/coordsum_3x10/lr=1e-3,num_envs=4/seed0"
    assert first.frames == 20_000_000  # the recipe's data.total_frames
    command = first.command([])
    assert command[command.index("--model.learner.init_args.lr") + 1] == "1e-3"
    assert command[command.index("--data.num_envs") + 1] == "4"
    assert command[command.index("--seed_everything") + 1] == "0"
    assert command[command.index("--trainer.logger.init_args.name") + 1] == first.name
    # keys that share their last part keep their full names
    (run,) = expand_grid("mappo/coordsum_3x10", [0], [("model.learner.init_args.lr", ["1"]), ("model.critic.init_args.lr", ["2"])], tmp_path, 64)
    assert run.tag == "model.learner.init_args.lr=1,model.critic.init_args.lr=2" and run.frames == 64


def test_sweep_refuses_what_it_sets_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--frames"):
        expand_grid("mappo/coordsum_3x10", [0], [("data.total_frames", ["64"])], tmp_path, frames=64)
    with pytest.raises(ConfigError, match="twice"):
        expand_grid("mappo/coordsum_3x10", [0], [("data.num_envs", ["4"]), ("data.num_envs", ["8"])], tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        expand_grid("mappo/no_such_recipe", [0], [], tmp_path)
    for extra in (["--seed_everything", "3"], ["--data.total_frames=5"], ["--trainer.logger.init_args.name", "x"]):
        with pytest.raises(ConfigError, match="set by the sweep"):
            check_extra(extra)
    check_extra(["--data.num_envs", "4", "--trainer.devices", "1"])


def _finished(folder: Path, version: int, frames: int) -> None:
    (folder / f"version_{version}").mkdir(parents=True, exist_ok=True)
    (folder / f"version_{version}" / "final_eval.json").write_text(json.dumps({"eval/return": 1.0, "frames": frames}))


def _checkpoint(folder: Path, version: int) -> Path:
    path = folder / f"version_{version}" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _argument(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _write_final_eval(cmd: list[str], frames: int) -> None:
    """What a fit run writes at its end: final_eval.json in the run folder its command names."""
    logger = "--trainer.logger.init_args."
    folder = Path(_argument(cmd, logger + "save_dir")) / _argument(cmd, logger + "name")
    _finished(folder, int(_argument(cmd, logger + "version")), frames)


class EndedFit:
    """What the fake ``subprocess.Popen`` returns: a fit that has already ended with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def wait(self) -> int:
        return self.code

    def send_signal(self, signum: int) -> None:
        raise AssertionError("only a stopped sweep signals its runs")


def fake_fits(monkeypatch: pytest.MonkeyPatch, fit: Callable[[list[str]], int], threads: int = 1) -> list[list[str]]:
    """Replace the training subprocess by ``fit(command)``, which does what the run would and gives its exit code;
    return the list the commands are recorded in. Each run must be given ``threads`` torch threads."""
    commands: list[list[str]] = []

    def popen(cmd: list[str], **kwargs) -> EndedFit:
        commands.append(cmd)
        assert kwargs["env"]["OMP_NUM_THREADS"] == kwargs["env"]["MKL_NUM_THREADS"] == str(threads)
        code = fit(cmd)
        return EndedFit(code)

    monkeypatch.setattr(sweep.subprocess, "Popen", popen)
    return commands


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every run succeeds, writing the requested frames' final_eval.json."""
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the sweep gives each run one thread whatever the caller has
    return fake_fits(monkeypatch, lambda cmd: _write_final_eval(cmd, int(_argument(cmd, "--data.total_frames"))) or 0)


def test_finished_runs_are_skipped_and_cut_runs_resume(tmp_path: Path, fake_fit: list[list[str]], capsys: pytest.CaptureFixture) -> None:
    runs = expand_grid("mappo/coordsum_3x10", [0, 1, 2, 3], [], tmp_path, frames=64)
    _finished(runs[0].folder, 0, 64)  # done
    _checkpoint(runs[1].folder, 0)  # cut short
    _finished(runs[2].folder, 0, 32)  # done with fewer frames: continue from its checkpoint
    ckpt = _checkpoint(runs[2].folder, 0)
    outcomes = sweep.execute(runs, ["--data.num_envs", "4"])
    assert [o.status for o in outcomes] == ["skipped", "finished", "finished", "finished"]
    assert "skip   mappo/coordsum_3x10/seed0: finished, final_eval.json reports 64 frames >= 64" in capsys.readouterr().out
    by_seed = {cmd[cmd.index("--seed_everything") + 1]: cmd for cmd in fake_fit}
    assert sorted(by_seed) == ["1", "2", "3"]
    assert by_seed["2"][by_seed["2"].index("--ckpt_path") + 1] == str(ckpt)
    version = {seed: cmd[cmd.index("--trainer.logger.init_args.version") + 1] for seed, cmd in by_seed.items()}
    assert version == {"1": "0", "2": "0", "3": "0"}  # a resumed run continues in its checkpoint's version
    assert "--ckpt_path" in by_seed["1"] and "--ckpt_path" not in by_seed["3"]
    assert by_seed["3"][-2:] == ["--data.num_envs", "4"]


def _logged(folder: Path, version: int, returns: list[float | None], frames_per_iteration: int) -> None:
    """A metrics.csv as the CSV logger writes it: per iteration a training row with the frames, then an evaluation row
    without them (Lightning logs validation as its own row), none where the return is None."""
    (folder / f"version_{version}").mkdir(parents=True, exist_ok=True)
    with open(folder / f"version_{version}" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "eval/return", "frames", "train/return"])
        writer.writeheader()
        for epoch, value in enumerate(returns):
            writer.writerow({"epoch": epoch, "frames": (epoch + 1) * frames_per_iteration, "train/return": 0.5})
            if value is not None:
                writer.writerow({"epoch": epoch, "eval/return": value})


def _dry_run(out: Path, seeds: str, num_envs: str, capsys: pytest.CaptureFixture) -> list[str]:
    """The lines ``hcmarl sweep --dry-run`` prints for mappo/coordsum_3x10 at 64 frames over ``seeds`` x ``num_envs``."""
    main(
        [
            "sweep",
            "--config",
            "mappo/coordsum_3x10",
            "--seeds",
            seeds,
            "--set",
            f"data.num_envs={num_envs}",
            "--frames",
            "64",
            "--out",
            str(out),
            "--dry-run",
        ]
    )
    return capsys.readouterr().out.splitlines()


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path, fake_fit: list[list[str]], capsys: pytest.CaptureFixture) -> None:
    finished, cut, logged_only = expand_grid("mappo/coordsum_3x10", [1, 2, 3], [parse_set("data.num_envs=8")], tmp_path, frames=64)
    _finished(finished.folder, 0, 64)
    _logged(cut.folder, 0, [1.5, 4.25], 16)
    ckpt = _checkpoint(cut.folder, 0)
    _logged(logged_only.folder, 0, [None], 16)  # stopped before its first evaluation and checkpoint
    printed = _dry_run(tmp_path, "0-1", "4,8", capsys)
    assert fake_fit == [] and printed[0].startswith("hcmarl sweep: 4 runs")
    assert sum("-m hcmarl.modules.cli fit" in line for line in printed) == 3
    assert f"# skip {finished.name}: finished, final_eval.json reports 64 frames >= 64" in printed
    # where an unfinished run stands, above its command
    printed = _dry_run(tmp_path, "2-3", "8", capsys)
    assert printed[1] == f"# {cut.name}: at 32 of 64 frames (2 evaluations, the last eval/return 4.25); resumes from {ckpt}"
    assert "--ckpt_path" in printed[2]
    assert printed[3] == f"# {logged_only.name}: at 16 of 64 frames (no evaluation); no checkpoint, starts again"
    assert "--ckpt_path" not in printed[4] and len(printed) == 5


def test_failed_run_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    fake_fits(monkeypatch, lambda cmd: 1)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0,1", "--frames", "64", "--out", str(tmp_path), "--parallel", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--parallel 2 x --threads 1 exceeds the 1 CPU cores" in err
    assert "hcmarl: error: 2 of 2 runs failed" in err and str(tmp_path.resolve() / "mappo/coordsum_3x10/seed0/fit.log") in err


def test_threads_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--threads N gives every run N torch threads, warns when the runs at a time need more cores than there are,
    and refuses fewer than one."""
    commands = fake_fits(monkeypatch, lambda cmd: _write_final_eval(cmd, 64) or 0, threads=2)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    main(["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0,1", "--frames", "64", "--out", str(tmp_path), "--threads", "2"])
    assert len(commands) == 2 and "exceeds" not in capsys.readouterr().err
    main(
        ["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "2,3", "--frames", "64", "--out", str(tmp_path), "--threads", "2", "--parallel", "2"]
    )
    assert len(commands) == 4
    assert "--parallel 2 x --threads 2 exceeds the 2 CPU cores" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "4", "--out", str(tmp_path), "--threads", "0"])
    assert exit_info.value.code == 2 and "--threads 0: give at least 1" in capsys.readouterr().err and len(commands) == 4


def test_a_run_stopped_by_sigterm_or_short_of_its_frames_is_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Seed 0 is stopped by SIGTERM (exit 143, no final_eval.json), seed 1 exits 0 but its final_eval.json is
    short of the frames, seed 2 finishes: the sweep names the first two and exits 2."""

    def fit(cmd: list[str]) -> int:
        seed = _argument(cmd, "--seed_everything")
        if seed == "0":
            return STOPPED_BY_SIGTERM
        _write_final_eval(cmd, 32 if seed == "1" else 64)
        return 0

    fake_fits(monkeypatch, fit)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0-2", "--frames", "64", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "STOPPED mappo/coordsum_3x10/seed0 by SIGTERM" in captured.out
    assert "FAILED mappo/coordsum_3x10/seed1: it exited 0" in captured.out and "no final_eval.json reports 64 frames" in captured.out
    assert "done   mappo/coordsum_3x10/seed2" in captured.out and " trained, " not in captured.out
    assert "1 of 3 runs failed; see their logs: " + str(tmp_path.resolve() / "mappo/coordsum_3x10/seed1/fit.log") in captured.err
    assert "1 of 3 runs were stopped by SIGTERM before their last frame (mappo/coordsum_3x10/seed0); run the same hcmarl sweep again" in captured.err


def test_a_damaged_final_eval_is_one_clear_error(tmp_path: Path, fake_fit: list[list[str]], capsys: pytest.CaptureFixture) -> None:
    (run,) = expand_grid("mappo/coordsum_3x10", [0], [], tmp_path, frames=64)
    damaged = run.folder / "version_0" / "final_eval.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text('{"frames": 64')  # cut off mid-write
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0", "--frames", "64", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"hcmarl: error: {damaged}" in err and "is not valid JSON" in err and "Traceback" not in err
    assert fake_fit == []


def test_a_real_sweep_trains_then_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    argv = ["sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0", "--frames", "64", "--out", str(tmp_path / "sweep"), "--", *TINY_FIT]
    main(argv)
    (folder,) = [p.parent for p in (tmp_path / "sweep").rglob("final_eval.json")]
    assert folder == tmp_path.resolve() / "sweep/mappo/coordsum_3x10/seed0/version_0"
    assert json.loads((folder / "final_eval.json").read_text())["frames"] == 64
    assert "done   mappo/coordsum_3x10/seed0" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep.subprocess, "Popen", no_training)
    main(argv)
    assert "skip   mappo/coordsum_3x10/seed0: finished" in capsys.readouterr().out

    main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report"), "--resamples", "20"])
    page = (tmp_path / "report" / "report.md").read_text()
    assert "| coordsum/3x10 | mappo | 0 | 64 | 1 |" in page  # one evaluation: the final one

    # more frames: the run continues from its last checkpoint in the same version, its metrics.csv continued
    monkeypatch.undo()
    main([*argv[:6], "96", *argv[7:]])
    assert "(resuming from" in capsys.readouterr().out
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == ["version_0"]
    assert json.loads((folder / "final_eval.json").read_text())["frames"] == 96
    with open(folder / "metrics.csv") as f:
        assert [float(r["frames"]) for r in csv.DictReader(f) if r["frames"]] == [32, 64, 96]


def test_a_sweep_stopped_by_sigterm_stops_its_runs_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM to the sweep's process alone (seed 0's fit sends it to its parent in iteration 3): the sweep passes it
    on, seed 0 stops after that iteration (or the next) with its checkpoint, seed 1 never starts, and the sweep exits 143 saying
    so (a rerun continues from the checkpoint: test_a_real_sweep_trains_then_skips)."""
    (tmp_path / "killer.py").write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    frames = 10 * 4 * 8  # 10 iterations of TINY_FIT's 4 envs x 8 steps
    sweep_command = [sys.executable, "-m", "hcmarl.modules.cli", "sweep", "--config", "mappo/coordsum_3x10", "--seeds", "0-1"]
    sweep_command += ["--frames", str(frames), "--out", str(tmp_path / "sweep"), "--", *TINY_FIT]
    killer = ["--trainer.callbacks+=killer.KillAt", "--trainer.callbacks.epoch=3", "--trainer.callbacks.signal=SIGTERM"]
    stopped = subprocess.run(
        [*sweep_command, *killer, "--trainer.callbacks.target=parent"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert stopped.returncode == STOPPED_BY_SIGTERM, stopped.stderr[-3000:]
    assert "STOPPED mappo/coordsum_3x10/seed0 by SIGTERM" in stopped.stdout and "seed1" not in stopped.stdout
    assert (
        "hcmarl sweep: stopped by SIGTERM: 1 of 2 runs stopped after their iteration under way (mappo/coordsum_3x10/seed0), 1 not started"
        in stopped.stderr
    )
    assert "Traceback" not in stopped.stderr
    seed0 = tmp_path / "sweep/mappo/coordsum_3x10/seed0/version_0"
    log = (seed0.parent / "fit.log").read_text()
    # the fit stops after iteration 3, or 4 if the forwarded signal came after Lightning's check at the end of 3
    (reached,) = [f for f in (4 * 32, 5 * 32) if f"hcmarl: stopped by SIGTERM after {f} of {frames} frames" in log]
    assert torch.load(seed0 / "checkpoints/last.ckpt", weights_only=False)["epoch"] == reached // 32 - 1
    assert not (tmp_path / "sweep/mappo/coordsum_3x10/seed1").exists()
