"""Per-agent actors: observation -> action distribution (ALGORITHMS.md section 1, "Policies").

An actor is built in two steps: the constructor takes hyperparameters (what a recipe
writes); ``build(info)`` creates the layers once the env's sizes are known. ``forward``
evaluates a batch of any shape ``[...]`` (for recurrent actors: whole rollouts
``[envs, time]``); ``step`` acts for one time step and may write the next recurrent state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Literal, Sequence

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION_MASK, AGENT_INSTRUCTION, OBSERVATION
from hcmarl.nn.distributions import diagonal_gaussian, masked_categorical
from hcmarl.nn.layers import AgentMLP

Distribution = torch.distributions.Distribution


def agent_id_features(obs: torch.Tensor) -> torch.Tensor:
    """Append a one-hot agent id to observations ``[..., N, D]`` -> ``[..., N, D + N]``."""
    n = obs.shape[-2]
    eye = torch.eye(n, device=obs.device, dtype=obs.dtype).expand(*obs.shape[:-2], n, n)
    return torch.cat([obs, eye], dim=-1)


def observation_features(
    td: TensorDictBase, agent_id: bool, instruction_features: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Each agent's observation ``[..., N, D]``, then its one-hot id if ``agent_id``, then its encoded conductor
    instruction ``("agents", "instruction")`` if ``instruction_features`` is given (ALGORITHMS.md section 3)."""
    obs = td.get(OBSERVATION)
    if agent_id:
        obs = agent_id_features(obs)
    if instruction_features is not None:
        obs = torch.cat([obs, instruction_features(td.get(AGENT_INSTRUCTION))], dim=-1)
    return obs


class Actor(nn.Module, ABC):
    """What every actor block shares: agent-id and instruction features, the head's distribution, parameter sharing.

    Args:
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
        share_params: one parameter set for all agents (True) or one per agent, vectorised.
        agent_id: append a one-hot agent id to each observation.
        distribution: ``auto`` (from the env), ``categorical`` or ``gaussian``.
        log_std_init: initial log-std of the Gaussian (state-independent, per agent).
        instruction_encoding: how a conductor's instruction joins the observation when the actor is
            built with ``n_instructions > 0`` (HCPO, ALGORITHMS.md section 3): ``onehot`` or a learned ``embedding``.
        instruction_embed_dim: size of the learned embedding.
    """

    recurrent = False
    in_keys: list = [OBSERVATION, ACTION_MASK]

    def __init__(
        self,
        activation: str = "tanh",
        share_params: bool = True,
        agent_id: bool = False,
        distribution: Literal["auto", "categorical", "gaussian"] = "auto",
        log_std_init: float = 0.0,
        instruction_encoding: Literal["onehot", "embedding"] = "onehot",
        instruction_embed_dim: int = 8,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.instruction_encoding = instruction_encoding
        self.instruction_embed_dim = instruction_embed_dim
        self.n_instructions = 0
        self.share_params = share_params
        self.agent_id = agent_id
        self.distribution_kind = distribution
        self.log_std_init = log_std_init
        self.categorical = True
        self.built = False

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Check the head fits the env's actions (a ConfigError otherwise) and create the layers.

        With ``n_instructions = K > 0`` the actor also reads each agent's instruction ``("agents", "instruction")``
        (one of K: the central conductor's M_t broadcast, or the agent's local conductor's choice), joined to its
        observation as a one-hot or an embedding.
        """
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
        self.n_groups = 1 if self.share_params else info.n_agents
        if not self.categorical:
            self.log_std = nn.Parameter(torch.full((self.n_groups, info.action_dim), float(self.log_std_init)))
        self.n_instructions = n_instructions
        instruction_dim = 0
        if n_instructions > 0:
            self.in_keys = [*type(self).in_keys, AGENT_INSTRUCTION]
            if self.instruction_encoding == "embedding":
                self.instruction_embedding = nn.Embedding(n_instructions, self.instruction_embed_dim)
                instruction_dim = self.instruction_embed_dim
            else:
                instruction_dim = n_instructions
        self.build_layers(info, info.obs_dim + (info.n_agents if self.agent_id else 0) + instruction_dim)
        self.built = True

    @abstractmethod
    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        """Create the layers for inputs of size ``in_dim``."""

    @abstractmethod
    def forward(self, td: TensorDictBase) -> Distribution:
        """The action distribution for every agent in ``td``, batch shape ``[..., N]``."""

    def inputs(self, td: TensorDictBase) -> torch.Tensor:
        if not self.built:
            raise RuntimeError(f"{type(self).__name__}.build(env_info) must be called before use")
        return observation_features(td, self.agent_id, self.instruction_features if self.n_instructions > 0 else None)

    def instruction_features(self, instruction: torch.Tensor) -> torch.Tensor:
        """Each agent's instruction ``[..., N]`` encoded, ``[..., N, K or embed_dim]`` (ALGORITHMS.md section 3).

        Joined after the observation (and after any observation normalisation), so a one-hot cannot be ignored at init.
        """
        if self.instruction_encoding == "embedding":
            return self.instruction_embedding(instruction)
        return torch.nn.functional.one_hot(instruction, self.n_instructions).float()

    def distribution(self, head_out: torch.Tensor, td: TensorDictBase) -> Distribution:
        if self.categorical:
            return masked_categorical(head_out, td.get(ACTION_MASK, None))
        return diagonal_gaussian(head_out, self.log_std)

    def step(self, td: TensorDictBase) -> Distribution:
        """The distribution for one time step ``[E]`` (a feed-forward actor: the same as ``forward``)."""
        return self(td)

    def env_transforms(self) -> list[Transform]:
        """TorchRL transforms the env needs for this actor (recurrent state primers); none by default."""
        return []


class MLPActor(Actor):
    """MLP actor for all agents, shared or per-agent parameters, categorical or Gaussian head.

    Args:
        hidden_sizes: widths of the hidden layers.
        **kwargs: ``activation``, ``share_params``, ``agent_id``, ``distribution``, ``log_std_init`` of ``Actor``.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_sizes = list(hidden_sizes)

    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        self.net = AgentMLP(in_dim, self.hidden_sizes, info.action_dim, self.n_groups, self.activation, out_gain=0.01)

    def forward(self, td: TensorDictBase) -> Distribution:
        """The action distribution for every agent in ``td``, batch shape ``[..., N]``."""
        x = self.inputs(td)  # raises first if build() was not called
        return self.distribution(self.net(x), td)
