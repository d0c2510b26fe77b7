"""A GRU actor, vectorised over agents (ALGORITHMS.md section 1, "Policies": MLP or GRU).

During rollouts the hidden state travels in the TensorDict at ``RNN_STATE`` ``[E, N, H]``:
the env's primer zeroes it at every reset, and ``step`` writes the next one under
``"next"``. In training, ``forward`` replays each env's whole rollout ``[b, T]`` from the
stored state at its first step, zeroing it again where ``is_init`` marks a new episode, so
the replayed log-probabilities equal the behaviour ones before any update.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import InitTracker, TensorDictPrimer, Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ACTION_MASK, IS_INIT, OBSERVATION, RNN_STATE
from hcmarl.nn.actors import Actor, Distribution
from hcmarl.nn.layers import AgentLinear, activation_class


class AgentGRUCell(nn.Module):
    """GRU cell per agent group (PyTorch's GRUCell equations, gates ordered r, z, n):

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr); z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn)); h' = (1 - z) * n + z * h
    """

    def __init__(self, input_size: int, hidden_size: int, n_groups: int = 1) -> None:
        super().__init__()
        self.input_map = AgentLinear(input_size, 3 * hidden_size, n_groups, gain=1.0)
        self.hidden_map = AgentLinear(hidden_size, 3 * hidden_size, n_groups, gain=1.0)

    def forward(self, x: torch.Tensor, h: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        """One step for every agent, or for ``agent`` alone (inputs ``[..., 1, .]``; see ``AgentLinear``)."""
        xr, xz, xn = self.input_map(x, agent).chunk(3, dim=-1)
        hr, hz, hn = self.hidden_map(h, agent).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class GRUActor(Actor):
    """Encoder -> GRU cell -> head, per agent (shared or separate parameters).

    Args:
        hidden_size: width of the encoder and of the GRU state.
        **kwargs: ``activation``, ``share_params``, ``agent_id``, ``distribution``, ``log_std_init`` of
            ``hcmarl.nn.actors.Actor``.
    """

    recurrent = True
    in_keys = [OBSERVATION, ACTION_MASK, IS_INIT, RNN_STATE]

    def __init__(self, hidden_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.n_agents = 0

    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        self.n_agents = info.n_agents
        self.encoder = nn.Sequential(AgentLinear(in_dim, self.hidden_size, self.n_groups), activation_class(self.activation)())
        self.cell = AgentGRUCell(self.hidden_size, self.hidden_size, self.n_groups)
        self.head = AgentLinear(self.hidden_size, info.action_dim, self.n_groups, gain=0.01)

    def env_transforms(self) -> list[Transform]:
        return [InitTracker(), TensorDictPrimer({RNN_STATE: Unbounded(shape=(self.n_agents, self.hidden_size))}, expand_specs=True)]

    def step(self, td: TensorDictBase) -> Distribution:
        """One step ``[E]``: reads ``RNN_STATE``, writes the next state at ``("next", RNN_STATE)``."""
        h = self.cell(self.encode(td), td.get(RNN_STATE))
        td.set(("next", RNN_STATE), h)
        return self.distribution(self.head(h), td)

    def encode(self, td: TensorDictBase, agent: int | None = None) -> torch.Tensor:
        """The encoder's features of each agent's inputs (of ``agent``'s alone if given)."""
        linear, activation = self.encoder
        return activation(linear(self.inputs(td, agent), agent))

    def forward(self, td: TensorDictBase, agent: int | None = None) -> Distribution:
        """Replay rollouts ``[b, T]`` from their stored first state; distributions ``[b, T, N]`` (``[b, T, 1]`` for ``agent``)."""
        x = self.encode(td, agent)
        reset = td.get(IS_INIT).unsqueeze(-1)  # [b, T, 1, 1]
        h = td.get(RNN_STATE)[:, 0]
        states = []
        for t in range(x.shape[1]):
            h = torch.where(reset[:, t], torch.zeros_like(h), h)
            h = self.cell(x[:, t], h, agent)
            states.append(h)
        return self.distribution(self.head(torch.stack(states, dim=1), agent), td, agent)
