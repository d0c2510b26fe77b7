"""``make_env(name, ...)``: one entry point for every env family (DESIGN.md, "Conventions").

Names are ``family/task``: ``vmas/balance``, ``coordsum/3x10``. An unknown name raises
``UnknownEnvError`` listing what is known.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE, EnvInfo
from hcmarl.errors import MissingDependencyError, UnknownEnvError


def _coordsum_tasks() -> list[str]:
    from hcmarl.envs.coordsum import TASKS

    return list(TASKS)


def _vmas_tasks() -> list[str]:
    from hcmarl.envs.vmas import vmas_scenarios

    return vmas_scenarios()


def _make_coordsum(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> EnvBase:
    from hcmarl.envs.coordsum import CoordSumEnv

    return CoordSumEnv(task=task, num_envs=num_envs, seed=seed, device=device, **kwargs)


def _make_vmas(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> EnvBase:
    from hcmarl.envs.vmas import VmasMultiAgentEnv

    return VmasMultiAgentEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)


# family -> (constructor, task names; the latter raises MissingDependencyError when its package is absent)
FAMILIES: dict[str, tuple[Callable[..., EnvBase], Callable[[], list[str]]]] = {
    "coordsum": (_make_coordsum, _coordsum_tasks),
    "vmas": (_make_vmas, _vmas_tasks),
}


def known_env_names() -> list[str]:
    """Every ``family/task`` name ``make_env`` accepts (a family whose package is missing shows its pip extra)."""
    names = []
    for family, (_, tasks) in FAMILIES.items():
        try:
            names += [f"{family}/{t}" for t in tasks()]
        except MissingDependencyError:
            names.append(f"{family}/<task> (pip install 'hcmarl[{family}]')")
    return names


def check_env_name(name: str) -> tuple[str, str]:
    """Split ``family/task`` and check both, raising ``UnknownEnvError`` that lists the known names.

    A family whose optional package is missing raises ``MissingDependencyError`` naming its extra.
    """
    family, sep, task = name.partition("/")
    if sep and family in FAMILIES and task in FAMILIES[family][1]():
        return family, task
    raise UnknownEnvError(f"unknown env name {name!r} (names are 'family/task'); known: {', '.join(known_env_names())}")


def make_env(
    name: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    **kwargs,
) -> EnvBase:
    """Build a batched TorchRL env in the hcmarl layout; ``env.info`` is its ``EnvInfo``."""
    family, task = check_env_name(name)
    return FAMILIES[family][0](task, num_envs=num_envs, seed=seed, device=torch.device(device), **kwargs)


__all__ = ["make_env", "known_env_names", "check_env_name", "EnvInfo", "OBSERVATION", "ACTION", "ACTION_MASK", "STATE", "REWARD"]
