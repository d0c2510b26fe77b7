"""The layout every hcmarl environment exposes (DESIGN.md, "Conventions").

Every env is a TorchRL ``EnvBase`` with ``batch_size = [num_envs]`` and these keys:

- ``("agents", "observation")``: float32 ``[E, N, obs_dim]`` (padded to the largest agent);
- ``("agents", "action_mask")``: bool ``[E, N, n_actions]``, categorical envs whose actions
  can be unavailable (or whose agents have different action counts);
- ``("agents", "action")``: int64 ``[E, N]`` (categorical) or float32 ``[E, N, act_dim]``;
- ``"state"``: float32 ``[E, state_dim]``, the global state;
- ``"reward"``: float32 ``[E, 1]``, the team reward (under ``"next"``);
- ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[E, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.keys import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE

__all__ = [
    "EnvInfo",
    "team_reward_from_agents",
    "set_masked_categorical_specs",
    "masked_categorical_info",
    "ACTION",
    "ACTION_MASK",
    "OBSERVATION",
    "REWARD",
    "STATE",
]


@dataclass(frozen=True)
class EnvInfo:
    """What a network needs to know about an env to build itself."""

    name: str
    n_agents: int
    obs_dim: int
    state_dim: int
    action_kind: str  # "categorical" or "continuous"
    action_dim: int  # number of actions (categorical) or action dimensions (continuous)
    max_steps: int
    has_action_mask: bool = False
    has_win: bool = False
    action_low: float = -1.0
    action_high: float = 1.0

    def __post_init__(self) -> None:
        if self.action_kind not in ("categorical", "continuous"):
            raise ValueError(f"action_kind must be 'categorical' or 'continuous', got {self.action_kind!r}")

    @property
    def categorical(self) -> bool:
        return self.action_kind == "categorical"


def team_reward_from_agents(rewards: torch.Tensor) -> torch.Tensor:
    """Team reward ``[E, 1]`` from per-agent rewards ``[E, N]``: their mean (shared rewards pass unchanged)."""
    return rewards.mean(dim=-1, keepdim=True)


def set_masked_categorical_specs(env: EnvBase, n_agents: int, obs_dim: int, state_dim: int, n_actions: int) -> None:
    """Give ``env`` the layout's specs for categorical actions with an action mask and a ``win`` flag (SMAX, SMAC)."""
    E, N, d = env.batch_size[0], n_agents, env.device
    flag = Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=d)
    env.observation_spec = Composite(
        agents=Composite(
            observation=Unbounded(shape=(E, N, obs_dim), dtype=torch.float32, device=d),
            action_mask=Categorical(n=2, shape=(E, N, n_actions), dtype=torch.bool, device=d),
            shape=(E, N),
            device=d,
        ),
        state=Unbounded(shape=(E, state_dim), dtype=torch.float32, device=d),
        win=flag.clone(),
        shape=(E,),
        device=d,
    )
    action = Categorical(n=n_actions, shape=(E, N), dtype=torch.int64, device=d)
    env.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=d), shape=(E,), device=d)
    env.reward_spec = Composite(reward=Unbounded(shape=(E, 1), dtype=torch.float32, device=d), shape=(E,), device=d)
    env.done_spec = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(E,), device=d)


def masked_categorical_info(name: str, env: EnvBase) -> EnvInfo:
    """The ``EnvInfo`` of an env whose specs came from ``set_masked_categorical_specs`` (SMAX, SMAC).

    ``env`` carries ``n_agents``, ``obs_dim``, ``state_dim``, ``n_actions`` and ``max_steps``.
    """
    return EnvInfo(
        name=name,
        n_agents=env.n_agents,
        obs_dim=env.obs_dim,
        state_dim=env.state_dim,
        action_kind="categorical",
        action_dim=env.n_actions,
        max_steps=env.max_steps,
        has_action_mask=True,
        has_win=True,
    )
