"""Runs a user can trust: bad settings, env arguments and checkpoints end in one message naming the key or file and
the fix, exit code 2 and no traceback; a run's console carries no third-party noise (DESIGN.md, "Conventions")."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, recipe

from hcmarl.constraints import A2C, A2POClip, ClipPPO, Distill
from hcmarl.envs import check_env_kwargs, make_env
from hcmarl.errors import ConfigError
from hcmarl.guided import GuidedClip, GuidedImitation, GuidedTrustRegion
from hcmarl.modules.cli import check_checkpoint, main
from hcmarl.nn import CentralValue, MLPActor
from hcmarl.roles import Critic, Learner
from hcmarl.schedules import Simultaneous
from hcmarl.trust_region import TrustRegion

FRAMES = "32"


def hcmarl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``hcmarl *args`` in its own process, in ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "hcmarl.modules.cli", *args],
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_message(result: subprocess.CompletedProcess) -> str:
    """The error line of a run that ended with exit code 2 and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("hcmarl: error:")]
    return line


def exit_message(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return captured.err


# ---- 1. env_kwargs the env does not take -----------------------------------------------------------------------
def test_env_kwargs_of_another_family_name_the_key_and_the_fix(tmp_path: Path) -> None:
    pytest.importorskip("gymnasium_robotics")
    result = hcmarl(
        tmp_path, "fit", "--config", recipe("mappo/vmas_balance"), *TINY, "--data.total_frames", FRAMES, "--data.env", "mamujoco/HalfCheetah-2x3"
    )
    message = one_message(result)
    assert "data.env_kwargs has 'n_agents', which mamujoco/HalfCheetah-2x3 does not take" in message
    assert "ctrl_cost_weight" in message and "--data.env_kwargs '{}'" in message
    assert "max_steps" not in message.split("does not take")[0]  # taken by MaMuJoCo too


FAMILY_PACKAGES = {"coordsum": None, "vmas": "vmas", "smax": "jaxmarl", "mpe": "mpe2", "mamujoco": "gymnasium_robotics"}
ENVS = {"coordsum": "coordsum/3x10", "vmas": "vmas/balance", "smax": "smax/3m", "mpe": "mpe/simple_spread_v3", "mamujoco": "mamujoco/HalfCheetah-2x3"}
TAKEN = {
    "coordsum": {"episode_length": 20},
    "vmas": {"n_agents": 3, "max_steps": 10},
    "smax": {"max_steps": 50, "won_battle_bonus": 1.0},
    "mpe": {"N": 2, "max_cycles": 10},
    "mamujoco": {"max_steps": 10, "ctrl_cost_weight": 0.2, "num_workers": 1},
}


@pytest.mark.parametrize("family", list(ENVS))
def test_every_family_refuses_env_kwargs_it_does_not_take(family: str) -> None:
    if FAMILY_PACKAGES[family]:
        pytest.importorskip(FAMILY_PACKAGES[family])
    with pytest.raises(ConfigError, match=rf"data.env_kwargs has 'no_such_argument', which {ENVS[family]} does not take.*--data.env_kwargs '{{}}'"):
        make_env(ENVS[family], num_envs=1, **TAKEN[family], no_such_argument=1)


@pytest.mark.parametrize("family", [f for f in ENVS if f != "vmas"])
def test_the_env_kwargs_a_family_takes_pass_its_check(family: str) -> None:
    """Checked without building the env (VMAS can only tell by building: the test above)."""
    if FAMILY_PACKAGES[family]:
        pytest.importorskip(FAMILY_PACKAGES[family])
    assert check_env_kwargs(ENVS[family], TAKEN[family]) == tuple(ENVS[family].split("/"))


def test_vmas_takes_its_scenario_arguments() -> None:
    pytest.importorskip("vmas")
    assert make_env("vmas/balance", num_envs=1, **TAKEN["vmas"]).n_agents == 3


# ---- 2. learning rates ----------------------------------------------------------------------------------------
def test_negative_learning_rate_names_the_key(tmp_path: Path) -> None:
    result = hcmarl(
        tmp_path, "fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, "--data.total_frames", FRAMES, "--model.learner.init_args.lr", "-1"
    )
    message = one_message(result)
    assert "model.learner.init_args.lr must be > 0, got -1.0" in message and "default: 0.0005" in message


@pytest.mark.parametrize(
    "name, key",
    [
        ("mappo/coordsum_3x10", "--model.critic.init_args.lr"),
        ("hcpo/coordsum_3x10", "--model.conductor.init_args.lr"),
        ("hcpo/coordsum_3x10", "--model.conductor.init_args.local_lr"),
        ("magpo/coordsum_3x10", "--model.guider.init_args.lr"),
    ],
)
def test_every_roles_learning_rate_is_checked(capsys, tmp_path: Path, monkeypatch, name: str, key: str) -> None:
    monkeypatch.chdir(tmp_path)
    message = exit_message(capsys, "fit", "--config", recipe(name), "--data.total_frames", FRAMES, key, "0")
    assert f"{key[2:]} must be > 0, got 0" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the GPU accelerator is valid here")
@pytest.mark.parametrize("command", ["fit", "bench"])
def test_gpu_accelerator_without_a_gpu_names_the_fix(capsys, tmp_path: Path, monkeypatch, command: str) -> None:
    monkeypatch.chdir(tmp_path)
    message = exit_message(
        capsys, command, "--config", recipe("mappo/coordsum_3x10"), *TINY, "--data.total_frames", FRAMES, "--trainer.accelerator", "gpu"
    )
    assert "trainer.accelerator is 'gpu' but torch sees no CUDA GPU here" in message and "--trainer.accelerator cpu" in message
    assert not (tmp_path / "runs").exists()


def test_role_settings_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"model.learner.init_args.lr must be > 0, got nan"):
        Learner(MLPActor(), ClipPPO(), Simultaneous(), lr=math.nan)
    with pytest.raises(ConfigError, match=r"model.critic.init_args.epochs must be >= 1, got 0"):
        Critic(CentralValue(), epochs=0)
    with pytest.raises(ConfigError, match=r"model.critic.init_args.clip_value must be > 0 or null, got -0.2"):
        Critic(CentralValue(), clip_value=-0.2)
    Critic(CentralValue(), clip_value=None, max_grad_norm=None)


# ---- 3. constraints' hyperparameters --------------------------------------------------------------------------
def test_negative_clip_range_names_the_constraint_and_parameter(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = exit_message(
        capsys,
        "fit",
        "--config",
        recipe("mappo/coordsum_3x10"),
        "--data.total_frames",
        FRAMES,
        "--model.learner.init_args.constraint.init_args.eps",
        "-0.5",
    )
    assert "ClipPPO eps must be > 0, got -0.5" in message and "default: 0.2" in message


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: ClipPPO(eps=-0.5), "ClipPPO eps must be > 0, got -0.5"),
        (lambda: ClipPPO(epochs=0), "ClipPPO epochs must be >= 1, got 0"),
        (lambda: ClipPPO(minibatches=0), "ClipPPO minibatches must be >= 1, got 0"),
        (lambda: ClipPPO(ent_coef=-0.01), "ClipPPO ent_coef must be >= 0, got -0.01"),
        (lambda: ClipPPO(max_grad_norm=-1.0), "ClipPPO max_grad_norm must be >= 0 or null, got -1.0"),
        (lambda: A2C(ent_coef=math.inf), "A2C ent_coef must be >= 0, got inf"),
        (lambda: A2POClip(eps_others=0.0), "A2POClip eps_others must be > 0, got 0.0"),
        (lambda: A2POClip(position_weight=1.5), r"A2POClip position_weight must be in \[0, 1\], got 1.5"),
        (lambda: Distill(minibatches=0), "Distill minibatches must be >= 1, got 0"),
        (lambda: TrustRegion(max_kl=0.0), "TrustRegion max_kl must be > 0, got 0.0"),
        (lambda: TrustRegion(cg_iters=0), "TrustRegion cg_iters must be >= 1, got 0"),
        (lambda: TrustRegion(damping=-0.1), "TrustRegion damping must be >= 0, got -0.1"),
        (lambda: TrustRegion(backtrack=1.0), r"TrustRegion backtrack must be in \(0, 1\), got 1.0"),
        (lambda: TrustRegion(max_backtracks=0), "TrustRegion max_backtracks must be >= 1, got 0"),
        (lambda: TrustRegion(accept_ratio=-0.5), "TrustRegion accept_ratio must be >= 0, got -0.5"),
        (lambda: GuidedTrustRegion(max_kl=-0.01), "GuidedTrustRegion max_kl must be > 0, got -0.01"),
        (lambda: GuidedClip(eps=0.0), "GuidedClip eps must be > 0, got 0.0"),
        (lambda: GuidedClip(epochs=0), "GuidedClip epochs must be >= 1, got 0"),
        (lambda: GuidedClip(delta=0.5), "delta must be greater than 1"),
        (lambda: GuidedImitation(lam=-1.0), "GuidedImitation lam must be >= 0, got -1.0"),
        (lambda: GuidedImitation(eps=-0.2), "GuidedImitation eps must be > 0, got -0.2"),
    ],
)
def test_constraint_hyperparameters_are_checked_at_construction(build, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build()


def test_valid_edge_values_are_accepted() -> None:
    ClipPPO(eps=1e-3, ent_coef=0.0, max_grad_norm=None)
    ClipPPO(max_grad_norm=0.0)  # 0: no clipping
    A2POClip(position_weight=0.0)
    GuidedImitation(lam=0.0)  # CTDS's pure imitation, with no loop of its own
    GuidedClip(delta=math.inf)
    TrustRegion(accept_ratio=2.0, damping=0.0)


# ---- 4. checkpoints -------------------------------------------------------------------------------------------
def test_fit_from_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    result = hcmarl(tmp_path, "fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, "--data.total_frames", FRAMES, "--ckpt_path", "notes.txt")
    message = one_message(result)
    assert "--ckpt_path notes.txt is not a checkpoint" in message and "checkpoints/last.ckpt" in message
    assert not (tmp_path / "runs").exists()


def test_validate_a_missing_checkpoint(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = exit_message(capsys, "validate", "--config", recipe("mappo/coordsum_3x10"), *TINY, "--ckpt_path", "runs/missing.ckpt")
    assert "--ckpt_path runs/missing.ckpt: no such file" in message and "checkpoints/last.ckpt" in message


def test_checkpoint_check(tmp_path: Path) -> None:
    for name in (None, "last", "best", "s3://bucket/last.ckpt"):
        check_checkpoint(name, "fit")  # Lightning's to resolve
    with pytest.raises(ConfigError, match="is a folder"):
        check_checkpoint(tmp_path, "validate")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="is not a Lightning checkpoint: it has no state_dict"):
        check_checkpoint(tmp_path / "weights.pt", "validate")
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 0}, tmp_path / "model.ckpt")
    check_checkpoint(tmp_path / "model.ckpt", "validate")
    with pytest.raises(ConfigError, match="weights only .* fit cannot resume from it; validate it"):
        check_checkpoint(tmp_path / "model.ckpt", "fit")
    torch.save({"state_dict": {}, "optimizer_states": [], "lr_schedulers": [], "epoch": 0}, tmp_path / "full.ckpt")
    check_checkpoint(tmp_path / "full.ckpt", "fit")


# ---- 5. third-party noise -------------------------------------------------------------------------------------
def test_a_run_prints_no_third_party_noise(tmp_path: Path) -> None:
    result = hcmarl(tmp_path, "fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, "--data.total_frames", FRAMES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Final evaluation" in output
    assert "litlogger" not in output and "LeafSpec" not in output
    assert "site-packages" not in output, output  # no warning from a library's code


def test_the_unknown_env_error_comes_alone(tmp_path: Path) -> None:
    """Listing every family's tasks imports no family's package noisily (JaxMARL, gymnasium-robotics)."""
    result = hcmarl(tmp_path, "fit", "--config", recipe("mappo/coordsum_3x10"), "--data.env", "coordsum/9x9")
    message = one_message(result)
    assert "unknown env name 'coordsum/9x9'" in message
    if importlib.util.find_spec("gymnasium_robotics"):
        assert "mamujoco/HalfCheetah-2x3" in message
    noise = [line for line in (result.stdout + result.stderr).splitlines() if line not in (message, "Seed set to 0")]
    assert noise == []


# ---- 6. help --------------------------------------------------------------------------------------------------
def test_help_lists_every_subcommand(capsys) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    assert "{fit,validate,bench,sweep,report}" in out
    for name in ("fit", "validate", "bench", "sweep", "report"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in out.splitlines()), out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--data.env_kwargs" in capsys.readouterr().out
