"""Value networks (ALGORITHMS.md section 1): central V(s) and per-agent V(o_i); HCPO's Q(s, .).

V networks return values of shape ``[..., N]`` (the central value is repeated for every agent),
so every advantage and loss indexes agents the same way; ``InstructionCritic`` returns the head of
the sampled instruction the same way, and all K heads through ``heads``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import OBSERVATION, STATE, EnvInfo
from hcmarl.keys import INSTRUCTION
from hcmarl.nn.actors import agent_id_features
from hcmarl.nn.layers import AgentMLP


class ValueNetwork(nn.Module, ABC):
    """Base of value blocks: ``build(info)`` then ``forward(td) -> [..., N]``, reading ``in_keys``.

    A ``recurrent`` one (``hcmarl.nn.recurrent_critics``) carries a hidden state through each env's rollout: its
    ``forward`` reads whole rollouts ``[envs, time]``, not single frames.
    """

    in_keys: list = []
    recurrent: bool = False

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh") -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.net: AgentMLP | None = None
        self.n_agents = 0

    @abstractmethod
    def build(self, info: EnvInfo) -> None:
        """Create the layers for the env described by ``info``."""

    def _check_built(self) -> AgentMLP:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}.build(env_info) must be called before use")
        return self.net


class CentralValue(ValueNetwork):
    """V(s) on the global state ``state``, repeated over the N agents."""

    in_keys = [STATE]

    def build(self, info: EnvInfo) -> None:
        self.n_agents = info.n_agents
        self.net = AgentMLP(info.state_dim, self.hidden_sizes, 1, 1, self.activation)

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        value = self._check_built()(td.get(STATE).unsqueeze(-2))  # [..., 1, 1]
        return value.squeeze(-1).expand(*value.shape[:-2], self.n_agents)


class AgentValue(ValueNetwork):
    """V(o_i) for each agent on its own observation (IPPO), shared or per-agent parameters."""

    in_keys = [OBSERVATION]

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh", share_params: bool = True, agent_id: bool = False) -> None:
        super().__init__(hidden_sizes, activation)
        self.share_params = share_params
        self.agent_id = agent_id

    def build(self, info: EnvInfo) -> None:
        self.n_agents = info.n_agents
        in_dim = info.obs_dim + (info.n_agents if self.agent_id else 0)
        self.net = AgentMLP(in_dim, self.hidden_sizes, 1, 1 if self.share_params else info.n_agents, self.activation)

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        obs = td.get(OBSERVATION)
        if self.agent_id:
            obs = agent_id_features(obs)
        return self._check_built()(obs).squeeze(-1)


class InstructionCritic(ValueNetwork):
    """Q_phi(s, .) on the global state, one head per instruction (ALGORITHMS.md section 3, "Critic").

    ``heads(td)`` is ``[..., K]``; ``forward(td)`` is the head of the sampled instruction ``M_t``,
    Q_phi(s_t, M_t), repeated over the N agents like ``CentralValue``, so the critic role trains
    exactly that head towards the lambda-return.
    """

    in_keys = [STATE, INSTRUCTION]

    def build(self, info: EnvInfo, n_instructions: int = 1) -> None:
        """One head per instruction: ``n_instructions`` = K, the conductor's (``hcmarl.roles.Critic.build`` passes it)."""
        self.n_agents = info.n_agents
        self.net = AgentMLP(info.state_dim, self.hidden_sizes, n_instructions, 1, self.activation)

    def heads(self, td: TensorDictBase) -> torch.Tensor:
        """Q_phi(s, M) for every instruction M, ``[..., K]``."""
        return self._check_built()(td.get(STATE).unsqueeze(-2)).squeeze(-2)

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        taken = self.heads(td).gather(-1, td.get(INSTRUCTION).unsqueeze(-1))  # [..., 1]
        return taken.expand(*taken.shape[:-1], self.n_agents)
