"""Shared fixtures: run the ``hcmarl`` CLI in-process inside a temporary folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torchrl.envs import EnvBase

from hcmarl.modules.cli import main
from hcmarl.recipes import RECIPES_DIR

TINY = ["--data.num_envs", "4", "--data.rollout_steps", "8", "--data.eval_episodes", "2", "--trainer.enable_progress_bar", "false"]


def recipe(name: str) -> str:
    return str(RECIPES_DIR / f"{name}.yaml")


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``run_cli(subcommand, recipe_name, *overrides)`` runs ``hcmarl`` with tiny settings in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def run(subcommand: str, name: str, *overrides: str, tiny: bool = True) -> None:
        main([subcommand, "--config", recipe(name), *(TINY if tiny else []), *overrides])

    return run


def run_dirs(root: Path) -> list[Path]:
    """Run folders (those holding metrics.csv) under ``root``, oldest first."""
    return sorted((p.parent for p in root.rglob("metrics.csv")), key=lambda p: p.stat().st_mtime)


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "final_eval.json").read_text())


@pytest.fixture
def float64():
    """Float64 throughout (default dtype included, for the tensors a guider creates), so agreements are tight."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_fast_reset_equals_generic(env, after_step, label: str = "") -> None:
    """A JAX-backed env's own ``maybe_reset`` (which skips the envs its step already restarted) gives what TorchRL's
    generic ``EnvBase.maybe_reset`` gives from the same state (``env._envs``, a ``hcmarl.envs.jax_common.PackedEnvs``)."""
    saved = dataclasses.replace(env._envs, restarted=env._envs.restarted.clone())
    fast = env.maybe_reset(after_step.clone())
    env._envs = dataclasses.replace(saved, restarted=saved.restarted.clone())
    generic = EnvBase.maybe_reset(env, after_step.clone())
    assert set(fast.keys(True, True)) == set(generic.keys(True, True))
    for key in generic.keys(True, True):
        torch.testing.assert_close(fast[key], generic[key], msg=f"{label}{key} differs")
    assert not env._envs.restarted.any()
