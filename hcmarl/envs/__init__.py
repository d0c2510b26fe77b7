"""``make_env(name, ...)``: one entry point for every env family (DESIGN.md, "Conventions").

Names are ``family/task``: ``vmas/balance``, ``coordsum/3x10``. An unknown name raises
``UnknownEnvError`` listing what is known.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE, EnvInfo
from hcmarl.errors import UnknownEnvError


def _make_coordsum(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> EnvBase:
    from hcmarl.envs.coordsum import TASKS, CoordSumEnv

    if task not in TASKS:
        raise UnknownEnvError(f"unknown CoordSum task {task!r}; known: {', '.join('coordsum/' + t for t in TASKS)}")
    return CoordSumEnv(task=task, num_envs=num_envs, seed=seed, device=device, **kwargs)


def _make_vmas(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> EnvBase:
    from hcmarl.envs.vmas import VmasMultiAgentEnv

    return VmasMultiAgentEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)


FAMILIES: dict[str, Callable[..., EnvBase]] = {"coordsum": _make_coordsum, "vmas": _make_vmas}


def known_env_names() -> list[str]:
    """Every ``family/task`` name ``make_env`` accepts (families whose package is missing list their family only)."""
    from hcmarl.envs.coordsum import TASKS

    names = [f"coordsum/{t}" for t in TASKS]
    try:
        from hcmarl.envs.vmas import vmas_scenarios

        names += [f"vmas/{s}" for s in vmas_scenarios()]
    except ImportError:
        names.append("vmas/<scenario> (pip install 'hcmarl[vmas]')")
    return names


def check_env_name(name: str) -> tuple[str, str]:
    """Split ``family/task`` and check the family, raising ``UnknownEnvError`` with the known names."""
    family, sep, task = name.partition("/")
    if not sep or family not in FAMILIES or not task:
        raise UnknownEnvError(
            f"unknown env name {name!r}: names are 'family/task' with family one of {sorted(FAMILIES)}; "
            f"known: {', '.join(known_env_names())}"
        )
    return family, task


def make_env(
    name: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    **kwargs,
) -> EnvBase:
    """Build a batched TorchRL env in the hcmarl layout; ``env.info`` is its ``EnvInfo``."""
    family, task = check_env_name(name)
    return FAMILIES[family](task, num_envs=num_envs, seed=seed, device=torch.device(device), **kwargs)


__all__ = ["make_env", "known_env_names", "check_env_name", "EnvInfo", "OBSERVATION", "ACTION", "ACTION_MASK", "STATE", "REWARD"]
