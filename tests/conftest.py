"""Shared fixtures: run the ``hcmarl`` CLI in-process inside a temporary folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from torchrl.envs import EnvBase

from hcmarl.modules.cli import main
from hcmarl.recipes import RECIPES_DIR

TINY_TRAINING = ["--data.num_envs", "4", "--data.rollout_steps", "8", "--trainer.enable_progress_bar", "false"]
TINY = [*TINY_TRAINING, "--data.eval_episodes", "2"]
"""Tiny runs under the hcmarl protocol; a preset (magpo, hcpo) fixes its evaluations' episodes and refuses others."""

KILLER = '''
import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Send ``signal`` (kill -9 unless told) to the process (``target: parent``: to its parent) at the end of
    iteration ``epoch``: after its rows are logged, before its checkpoint."""

    def __init__(self, epoch: int, signal: str = "SIGKILL", target: str = "self") -> None:
        self.epoch = epoch
        self.signal = signal
        self.target = target

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # ModelCheckpoint saves after the other callbacks
        if trainer.current_epoch == self.epoch:
            os.kill(os.getppid() if self.target == "parent" else os.getpid(), getattr(signal, self.signal))
'''
"""A Lightning callback module (write it to ``killer.py`` on the run's PYTHONPATH) that signals a run mid-training."""


def recipe(name: str) -> str:
    return str(RECIPES_DIR / f"{name}.yaml")


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``run_cli(subcommand, recipe_name, *overrides)`` runs ``hcmarl`` with tiny settings in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def run(subcommand: str, name: str, *overrides: str, tiny: bool = True) -> None:
        small = (TINY if run_protocol(name, overrides) == "hcmarl" else TINY_TRAINING) if tiny else []
        main([subcommand, "--config", recipe(name), *small, *overrides])

    return run


def run_protocol(name: str, overrides: tuple[str, ...] | list[str]) -> str:
    """The evaluation protocol a run of recipe ``name`` with ``overrides`` uses: the last ``--data.protocol`` given, else the recipe's."""
    given = [overrides[i + 1] for i, word in enumerate(overrides[:-1]) if word == "--data.protocol"]
    if given:
        return given[-1]
    return (yaml.safe_load(Path(recipe(name)).read_text()).get("data") or {}).get("protocol", "hcmarl")


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
