"""Per-agent actors: observation -> action distribution (ALGORITHMS.md section 1, "Policies").

An actor is built in two steps: the constructor takes hyperparameters (what a recipe
writes); ``build(info)`` creates the layers once the env's sizes are known.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import ACTION_MASK, OBSERVATION, EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.nn.distributions import diagonal_gaussian, masked_categorical
from hcmarl.nn.layers import AgentMLP


def agent_id_features(obs: torch.Tensor) -> torch.Tensor:
    """Append a one-hot agent id to observations ``[..., N, D]`` -> ``[..., N, D + N]``."""
    n = obs.shape[-2]
    eye = torch.eye(n, device=obs.device, dtype=obs.dtype).expand(*obs.shape[:-2], n, n)
    return torch.cat([obs, eye], dim=-1)


class MLPActor(nn.Module):
    """MLP actor for all agents, shared or per-agent parameters, categorical or Gaussian head.

    Args:
        hidden_sizes: widths of the hidden layers.
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
        share_params: one parameter set for all agents (True) or one per agent, vectorised.
        agent_id: append a one-hot agent id to each observation.
        distribution: ``auto`` (from the env), ``categorical`` or ``gaussian``.
        log_std_init: initial log-std of the Gaussian (state-independent, per agent).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        share_params: bool = True,
        agent_id: bool = False,
        distribution: Literal["auto", "categorical", "gaussian"] = "auto",
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.share_params = share_params
        self.agent_id = agent_id
        self.distribution_kind = distribution
        self.log_std_init = log_std_init
        self.net: AgentMLP | None = None
        self.categorical = True

    def build(self, info: EnvInfo) -> None:
        """Create the layers for ``info``; a head that does not fit the env's actions is a ConfigError."""
        kind = self.distribution_kind
        if kind == "auto":
            kind = "categorical" if info.categorical else "gaussian"
        if (kind == "categorical") != info.categorical:
            raise ConfigError(
                f"model.learner.actor.distribution={kind!r} does not fit {info.name}, whose actions are "
                f"{info.action_kind}; set distribution to 'auto' or "
                f"{'categorical' if info.categorical else 'gaussian'}"
                + ("" if info.categorical else " (or, for VMAS, data.env_kwargs.continuous_actions=false)")
            )
        self.categorical = kind == "categorical"
        in_dim = info.obs_dim + (info.n_agents if self.agent_id else 0)
        n_groups = 1 if self.share_params else info.n_agents
        self.net = AgentMLP(in_dim, self.hidden_sizes, info.action_dim, n_groups, self.activation, out_gain=0.01)
        if not self.categorical:
            self.log_std = nn.Parameter(torch.full((n_groups, info.action_dim), float(self.log_std_init)))

    def forward(self, td: TensorDictBase) -> torch.distributions.Distribution:
        """The action distribution for every agent in ``td``, batch shape ``[..., N]``."""
        if self.net is None:
            raise RuntimeError("MLPActor.build(env_info) must be called before use")
        obs = td.get(OBSERVATION)
        if self.agent_id:
            obs = agent_id_features(obs)
        out = self.net(obs)
        if self.categorical:
            return masked_categorical(out, td.get(ACTION_MASK, None))
        return diagonal_gaussian(out, self.log_std)
