"""Per-agent actors: observation -> action distribution (ALGORITHMS.md section 1, "Policies").

An actor is built in two steps: the constructor takes hyperparameters (what a recipe
writes); ``build(info)`` creates the layers once the env's sizes are known. ``forward``
evaluates a batch of any shape ``[...]`` (for recurrent actors: whole rollouts
``[envs, time]``); ``step`` acts for one time step and may write the next recurrent state.

``forward(td, agent=i)`` evaluates agent i alone: ``td`` then holds that agent's column only
(``select_agent``), and only agent i's parameters are read, so a sequential update's per-agent
forward, backward and Fisher-vector products cost one agent, not N (DESIGN.md, "One iteration").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION_MASK, AGENT_INSTRUCTION, OBSERVATION, RNN_STATE
from hcmarl.nn.distributions import bounded_std, diagonal_gaussian, gaussian_with_std, masked_categorical
from hcmarl.nn.layers import AgentMLP

Distribution = torch.distributions.Distribution


def agent_id_features(obs: torch.Tensor, agent: int | None = None, n_agents: int | None = None) -> torch.Tensor:
    """Append a one-hot agent id to observations ``[..., N, D]`` -> ``[..., N, D + N]``.

    With ``agent = i``, ``obs`` ``[..., 1, D]`` holds agent i alone and gets row i of the ``n_agents`` identity.
    """
    if agent is None:
        eye = torch.eye(obs.shape[-2], device=obs.device, dtype=obs.dtype)
    elif n_agents is None:
        raise ValueError(f"agent_id_features(agent={agent}) needs n_agents: the one-hot id of one agent has n_agents entries")
    else:
        eye = torch.eye(n_agents, device=obs.device, dtype=obs.dtype)[agent : agent + 1]
    return torch.cat([obs, eye.expand(*obs.shape[:-2], *eye.shape)], dim=-1)


def select_agent(td: TensorDictBase, agent: int) -> TensorDictBase:
    """``td`` with its agent entries (the group ``agents``, the recurrent state) narrowed to ``agent``'s column, size 1.

    What ``Actor.forward(td, agent)`` reads: a sequential update selects an agent's data once, not per minibatch.
    """
    own = td.exclude("agents", RNN_STATE)
    own.set("agents", td.get("agents")[..., agent : agent + 1].contiguous())
    if (state := td.get(RNN_STATE, None)) is not None:
        own.set(RNN_STATE, state[..., agent : agent + 1, :].contiguous())
    return own


def observation_features(
    td: TensorDictBase,
    agent_id: bool,
    instruction_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    agent: int | None = None,
    n_agents: int | None = None,
) -> torch.Tensor:
    """Each agent's observation ``[..., N, D]``, then its one-hot id if ``agent_id``, then its encoded conductor
    instruction ``("agents", "instruction")`` if ``instruction_features`` is given (ALGORITHMS.md section 3).

    With ``agent = i`` the agent entries of ``td`` hold agent i alone (``select_agent``) among ``n_agents``.
    """
    obs = td.get(OBSERVATION)
    if agent_id:
        obs = agent_id_features(obs, agent, n_agents)
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
        log_std_init: initial log-std of the Gaussian (state-independent, per agent); with ``std: exp`` only.
        std: how the Gaussian's state-independent parameter ``log_std`` gives the std: ``exp`` (std = exp(log_std),
            unbounded, the default) or ``bounded`` (HARL's: std = sigmoid(log_std / std_x_coef) * std_y_coef, in
            (0, std_y_coef), with ``log_std`` starting at ``std_x_coef``, so the std starts at sigmoid(1) * std_y_coef;
            ``hcmarl.nn.distributions.bounded_std``; the HCPO paper's MA-MuJoCo setting).
        std_x_coef: HARL's ``std_x_coef`` (the bounded std's temperature and ``log_std``'s initial value).
        std_y_coef: HARL's ``std_y_coef`` (the bounded std's upper bound).
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
        std: Literal["exp", "bounded"] = "exp",
        std_x_coef: float = 1.0,
        std_y_coef: float = 0.5,
    ) -> None:
        super().__init__()
        if std not in ("exp", "bounded"):
            raise ConfigError(f"model.learner.actor.std={std!r}: known are 'exp' (exp(log_std)) and 'bounded' (HARL's sigmoid bound)")
        if std == "bounded" and not (std_x_coef > 0 and std_y_coef > 0):
            raise ConfigError(f"model.learner.actor.std_x_coef and std_y_coef must be > 0, got {std_x_coef} and {std_y_coef}")
        self.std = std
        self.std_x_coef = std_x_coef
        self.std_y_coef = std_y_coef
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
        self.n_agents = info.n_agents
        if not self.categorical:
            initial = self.std_x_coef if self.std == "bounded" else self.log_std_init  # HARL starts its raw std at x_coef
            self.log_std = nn.Parameter(torch.full((self.n_groups, info.action_dim), float(initial)))
        self.n_instructions = n_instructions
        instruction_dim = 0
        if n_instructions > 0:
            self.in_keys = [*type(self).in_keys, AGENT_INSTRUCTION]
            if self.instruction_encoding == "embedding":  # one table per parameter group, stacked like every other parameter
                self.instruction_embedding = nn.Parameter(torch.randn(self.n_groups, n_instructions, self.instruction_embed_dim))
                instruction_dim = self.instruction_embed_dim
            else:
                instruction_dim = n_instructions
        self.build_layers(info, info.obs_dim + (info.n_agents if self.agent_id else 0) + instruction_dim)
        self.built = True

    @abstractmethod
    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        """Create the layers for inputs of size ``in_dim``."""

    @abstractmethod
    def forward(self, td: TensorDictBase, agent: int | None = None) -> Distribution:
        """The action distribution for every agent in ``td``, batch shape ``[..., N]``; with ``agent = i``, for agent i
        alone (``td`` as ``select_agent(td, i)`` makes it), batch shape ``[..., 1]``."""

    def inputs(self, td: TensorDictBase, agent: int | None = None) -> torch.Tensor:
        if not self.built:
            raise RuntimeError(f"{type(self).__name__}.build(env_info) must be called before use")
        instruction = (lambda m: self.instruction_features(m, agent)) if self.n_instructions > 0 else None
        return observation_features(td, self.agent_id, instruction, agent, self.n_agents)

    def group(self, agent: int | None) -> slice:
        """The slice of the stacked parameters agent ``agent`` reads (all of them for None)."""
        if agent is None or self.n_groups == 1:
            return slice(None)
        return slice(agent, agent + 1)

    def instruction_features(self, instruction: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        """Each agent's instruction ``[..., N]`` encoded, ``[..., N, K or embed_dim]`` (ALGORITHMS.md section 3).

        Joined after the observation (and after any observation normalisation), so a one-hot cannot be ignored at init.
        A learned embedding reads each agent's own table (one per parameter group).
        """
        if self.instruction_encoding == "embedding":
            table = self.instruction_embedding[self.group(agent)]  # [G, K, E]
            return table[torch.arange(table.shape[0], device=instruction.device), instruction]
        return torch.nn.functional.one_hot(instruction, self.n_instructions).float()

    def distribution(self, head_out: torch.Tensor, td: TensorDictBase, agent: int | None = None) -> Distribution:
        if self.categorical:
            return masked_categorical(head_out, td.get(ACTION_MASK, None))
        log_std = self.log_std[self.group(agent)]
        if self.std == "bounded":
            return gaussian_with_std(head_out, bounded_std(log_std, self.std_x_coef, self.std_y_coef))
        return diagonal_gaussian(head_out, log_std)

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
        **kwargs: ``activation``, ``share_params``, ``agent_id``, ``distribution``, ``log_std_init``, ``std``,
            ``std_x_coef``, ``std_y_coef`` of ``Actor``.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_sizes = list(hidden_sizes)

    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        self.net = AgentMLP(in_dim, self.hidden_sizes, info.action_dim, self.n_groups, self.activation, out_gain=0.01)

    def forward(self, td: TensorDictBase, agent: int | None = None) -> Distribution:
        x = self.inputs(td, agent)  # raises first if build() was not called
        return self.distribution(self.net(x, agent), td, agent)
