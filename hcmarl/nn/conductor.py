"""HCPO's conductors (ALGORITHMS.md section 3): the central w_Psi(M|s) and the local w_psi_i(M|o_i).

Both are categorical policies over K instructions, built once the env's sizes and K are known.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import OBSERVATION, STATE, EnvInfo
from hcmarl.nn.actors import agent_id_features
from hcmarl.nn.layers import AgentMLP


class ConductorNetwork(nn.Module):
    """The centralised conductor w_Psi(M | s): logits over K instructions from the global state.

    Args:
        hidden_sizes: widths of the hidden layers.
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
    """

    in_keys = [STATE]

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh") -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.net: AgentMLP | None = None

    def build(self, info: EnvInfo, n_instructions: int) -> None:
        self.net = AgentMLP(info.state_dim, self.hidden_sizes, n_instructions, 1, self.activation, out_gain=0.01)

    def forward(self, td: TensorDictBase) -> torch.distributions.Categorical:
        """w_Psi(. | s) with batch shape ``[...]`` of ``td``."""
        if self.net is None:
            raise RuntimeError("ConductorNetwork.build(env_info, n_instructions) must be called before use")
        state = td.get(STATE, None)
        if state is None:
            raise KeyError(
                f"the central conductor reads the global state {STATE!r}, which this input lacks; decentralised "
                "execution uses the local conductors (execution: local, local_argmax or shared_seed)"
            )
        return torch.distributions.Categorical(logits=self.net(state.unsqueeze(-2)).squeeze(-2))


class LocalConductors(nn.Module):
    """The local conductors w_psi_i(M | o_i): one categorical per agent from its own observation only.

    Args:
        hidden_sizes: widths of the hidden layers.
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
        share_params: one parameter set for all agents or one per agent (vectorised).
        agent_id: append a one-hot agent id to each observation.
    """

    in_keys = [OBSERVATION]

    def __init__(self, hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh", share_params: bool = False, agent_id: bool = False) -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.share_params = share_params
        self.agent_id = agent_id
        self.net: AgentMLP | None = None

    def build(self, info: EnvInfo, n_instructions: int) -> None:
        in_dim = info.obs_dim + (info.n_agents if self.agent_id else 0)
        groups = 1 if self.share_params else info.n_agents
        self.net = AgentMLP(in_dim, self.hidden_sizes, n_instructions, groups, self.activation, out_gain=0.01)

    def forward(self, td: TensorDictBase) -> torch.distributions.Categorical:
        """w_psi_i(. | o_i) for every agent, batch shape ``[..., N]``."""
        if self.net is None:
            raise RuntimeError("LocalConductors.build(env_info, n_instructions) must be called before use")
        obs = td.get(OBSERVATION)
        if self.agent_id:
            obs = agent_id_features(obs)
        return torch.distributions.Categorical(logits=self.net(obs))
