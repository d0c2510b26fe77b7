"""Bad input ends in one clear message and exit code 2 (DESIGN.md, "Conventions"; issue: "Bad input")."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, recipe

import hcmarl.constraints
from hcmarl.optim import optimizer_layout_problem

FRAMES = "32"


def exit_message(run_cli, capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_unknown_config_key(run_cli, capsys) -> None:
    message = exit_message(run_cli, capsys, "fit", "mappo/coordsum_3x10", "--model.no_such_key", "1")
    assert "no_such_key" in message


def test_unknown_key_in_recipe_file(capsys, tmp_path: Path, monkeypatch) -> None:
    from conftest import recipe

    from hcmarl.modules.cli import main

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(recipe("mappo/coordsum_3x10")).read_text().replace("  gamma: 0.99", "  gama: 0.99"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code == 2
    assert "gama" in capsys.readouterr().err


def test_unknown_env_lists_known_names(run_cli, capsys) -> None:
    message = exit_message(run_cli, capsys, "fit", "mappo/coordsum_3x10", "--data.env", "coordsum/9x9")
    assert "coordsum/9x9" in message and "coordsum/3x10" in message and "vmas/balance" in message


def test_categorical_actor_on_continuous_env(run_cli, capsys) -> None:
    message = exit_message(
        run_cli,
        capsys,
        "fit",
        "mappo/vmas_balance",
        "--data.total_frames",
        FRAMES,
        "--model.learner.init_args.actor.init_args.distribution",
        "categorical",
    )
    assert "hcmarl: error:" in message and "distribution='categorical'" in message and "continuous" in message


def test_missing_optional_package_names_the_extra(run_cli, capsys, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vmas" else real_find_spec(name, *a))
    message = exit_message(run_cli, capsys, "fit", "mappo/vmas_balance", "--data.total_frames", FRAMES)
    assert "pip install 'hcmarl[vmas]'" in message


def test_checkpoint_from_another_recipe(run_cli, capsys, tmp_path: Path) -> None:
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", FRAMES)
    (ckpt,) = tmp_path.rglob("last.ckpt")
    message = exit_message(run_cli, capsys, "validate", "mappo/vmas_simple_spread", "--ckpt_path", str(ckpt))
    assert "hcmarl: error:" in message and "coordsum/3x10" in message and "recipe" in message


def test_rerunning_a_pinned_version_keeps_the_earlier_run(run_cli, capsys, tmp_path: Path) -> None:
    pinned = ("--data.total_frames", FRAMES, "--trainer.logger.init_args.version", "0")
    run_cli("fit", "mappo/coordsum_3x10", *pinned)
    (metrics,) = tmp_path.rglob("metrics.csv")
    before = metrics.read_text()
    (ckpt,) = tmp_path.rglob("last.ckpt")
    for subcommand, extra in (("fit", ()), ("validate", ("--ckpt_path", str(ckpt)))):
        message = exit_message(run_cli, capsys, subcommand, "mappo/coordsum_3x10", *pinned, *extra)
        assert "already holds a run's metrics.csv" in message and str(metrics.parent.relative_to(tmp_path)) in message
        assert "--trainer.logger.init_args.version null" in message
        assert metrics.read_text() == before  # Lightning's CSV logger would have deleted it


def test_nan_loss_stops_with_iteration_and_loss_named(run_cli, capsys, monkeypatch, tmp_path: Path) -> None:
    calls = {"n": 0}
    real = hcmarl.constraints.clip_ppo_objective

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 1 else out  # iteration 0 is clean, iteration 1 is not

    monkeypatch.setattr(hcmarl.constraints, "clip_ppo_objective", poisoned)
    message = exit_message(
        run_cli,
        capsys,
        "fit",
        "mappo/coordsum_3x10",
        "--data.total_frames",
        "96",
        "--model.learner.init_args.constraint.init_args.epochs",
        "1",
        "--model.learner.init_args.constraint.init_args.minibatches",
        "1",
    )
    assert "iteration 1" in message and "learner/policy_loss" in message and "NaN" in message
    (ckpt,) = tmp_path.rglob("last.ckpt")  # the checkpoint of the clean iteration is kept
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_total_frames_below_one_iteration(run_cli, capsys) -> None:
    message = exit_message(run_cli, capsys, "fit", "mappo/coordsum_3x10", "--data.total_frames", "8")
    assert "total_frames" in message


def test_wandb_runs_offline_without_credentials(tmp_path: Path) -> None:
    """In its own process: Lightning leaves a W&B run open, and a later W&B logger in the same process would reuse it."""
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")} | {"HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hcmarl.modules.cli",
            "fit",
            "--config",
            recipe("mappo/coordsum_3x10"),
            *TINY,
            "--data.total_frames",
            FRAMES,
            "--trainer.logger",
            "hcmarl.modules.loggers.WandbLogger",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "wb"),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wandb sync" in result.stderr
    assert list((tmp_path / "wb" / "wandb").glob("offline-run-*"))


def test_recurrent_minibatches_above_num_envs(run_cli, capsys) -> None:
    message = exit_message(
        run_cli,
        capsys,
        "fit",
        "mappo/vmas_balance",
        "--data.total_frames",
        FRAMES,
        "--model.learner.init_args.actor",
        "hcmarl.nn.GRUActor",
    )
    assert "minibatches=15" in message and "data.num_envs (4)" in message


@pytest.mark.parametrize(
    "name, override, value, expected",
    [
        ("mat/coordsum_3x10", "--model.guider.init_args.network.init_args.n_heads", "3", "multiple of n_heads"),
        ("magpo/coordsum_3x10", "--model.guider.init_args.constraint.init_args.delta", "1.0", "delta must be greater than 1"),
        ("magpo/coordsum_3x10", "--model.learner.init_args.constraint.init_args.lam", "-1", "lam must be >= 0"),
        ("hcpo/coordsum_3x10", "--model.conductor.init_args.n_instructions", "0", "n_instructions must be at least 1"),
        ("mat/coordsum_3x10", "--model.guider.init_args.constraint.init_args.delta", "1.2", "set delta: .inf"),
    ],
)
def test_a_nested_block_rejecting_its_arguments_ends_in_one_message(run_cli, capsys, name: str, override: str, value: str, expected: str) -> None:
    message = exit_message(run_cli, capsys, "fit", name, "--data.total_frames", FRAMES, override, value)
    assert expected in message and "Traceback" not in message


def test_checkpoint_with_another_optimizer_layout(run_cli, capsys, tmp_path: Path) -> None:
    """Weights that fit but Adam moments in another parameter order (an older hcmarl): one message, and validate still works."""
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", FRAMES)
    (ckpt,) = tmp_path.rglob("last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    learner = state["optimizer_states"][0]["state"]
    learner[0], learner[1] = learner[1], learner[0]  # the first layer's weight and bias, swapped
    reordered = tmp_path / "reordered.ckpt"
    torch.save(state, reordered)
    message = exit_message(run_cli, capsys, "fit", "mappo/coordsum_3x10", "--data.total_frames", str(2 * int(FRAMES)), "--ckpt_path", str(reordered))
    assert "hcmarl: error:" in message and "the learner optimiser's parameter 0 has Adam moments of shape" in message
    assert "hcmarl validate --ckpt_path" in message
    run_cli("validate", "mappo/coordsum_3x10", "--ckpt_path", str(reordered))


def test_impossible_composition_leaves_no_run_folder(run_cli, capsys, tmp_path: Path) -> None:
    message = exit_message(run_cli, capsys, "fit", "magpo/coordsum_3x10", "--model.learner.init_args.constraint.init_args.epochs", "3")
    assert "hcmarl: error:" in message and "remove model.learner.constraint.init_args.epochs" in message
    assert not (tmp_path / "runs").exists()


def test_optimizer_layout_problem_names_what_does_not_fit() -> None:
    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.Adam([weight, bias])
    (weight.sum() + bias.sum()).backward()
    saved.step()
    state = saved.state_dict()
    assert optimizer_layout_problem(["learner"], [state], [torch.optim.Adam([weight, bias])]) is None
    swapped = optimizer_layout_problem(["learner"], [state], [torch.optim.Adam([bias, weight])])
    assert swapped == "the learner optimiser's parameter 0 has Adam moments of shape (3, 2), this recipe's parameter there has shape (3,)"
    extra = optimizer_layout_problem(["learner"], [state], [torch.optim.Adam([weight, bias, torch.nn.Parameter(torch.ones(1))])])
    assert extra == "the learner optimiser holds 2 parameters, this recipe's has 3"
    assert optimizer_layout_problem(["learner", "critic"], [state], [saved, saved]) == "optimisers: 1 saved, 2 in this recipe (learner, critic)"
