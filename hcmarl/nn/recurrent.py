"""A GRU actor, vectorised over agents (ALGORITHMS.md section 1, "Policies": MLP or GRU).

During rollouts the hidden state travels in the TensorDict at ``RNN_STATE`` ``[E, N, H]``:
the env's primer zeroes it at every reset, and ``step`` writes the next one under
``"next"``. In training, ``forward`` replays each env's whole rollout ``[b, T]`` from the
stored state at its first step, zeroing it again where ``is_init`` marks a new episode, so
the replayed log-probabilities equal the behaviour ones before any update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import InitTracker, TensorDictPrimer, Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ACTION_MASK, IS_INIT, OBSERVATION, RNN_STATE
from hcmarl.nn.actors import Actor, Distribution
from hcmarl.nn.gru_replay import GRUReplay, replaying_by_autograd
from hcmarl.nn.layers import AgentLinear, AgentMLP, activation_class


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
        return self.step(self.input_map(x, agent), h, agent)

    def step(self, gates_x: torch.Tensor, h: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        """One step from the input map ``gates_x = x W_i + b_i`` (computed beforehand, e.g. for a whole sequence)."""
        xr, xz, xn = gates_x.chunk(3, dim=-1)
        hr, hz, hn = self.hidden_map(h, agent).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


def replay_states(cell: AgentGRUCell, x: torch.Tensor, is_init: torch.Tensor, first: torch.Tensor, agent: int | None = None) -> torch.Tensor:
    """The GRU state after each step of rollouts ``[b, T]``: from ``first`` ``[b, G, H]`` (the state stored at each rollout's
    first step), zeroed before any step where ``is_init`` ``[b, T, 1]`` marks a new episode, then
    ``h_t = cell(x_t, h_{t-1})`` on the inputs ``x`` ``[b, T, G, D]``; returns ``[b, T, G, H]``.

    The input map runs once over the whole sequence; the steps run in ``hcmarl.nn.gru_replay.GRUReplay`` (its own
    backward pass), or recorded by autograd inside ``replay_by_autograd()``, whose graphs can be differentiated twice.
    """
    gates_x = cell.input_map(x, agent)
    if not replaying_by_autograd():
        weight, bias = cell.hidden_map.group_parameters(agent)
        return GRUReplay.apply(gates_x, is_init, first, weight, bias)
    h = first
    states = []
    # unbind, not x[:, t]: the backward of T slices would write T full-size [b, T, ...] gradients (O(T^2) memory
    # traffic); unbind's backward stacks the steps' gradients once (1.7x-3x faster training replays, same numbers)
    for gates_x_t, reset_t in zip(gates_x.unbind(1), is_init.unsqueeze(-1).unbind(1), strict=True):  # reset_t [b, 1, 1]
        h = torch.where(reset_t, torch.zeros_like(h), h)
        h = cell.step(gates_x_t, h, agent)
        states.append(h)
    return torch.stack(states, dim=1)


class GRUActor(Actor):
    """Encoder -> GRU cell -> (post-torso) -> head, per agent (shared or separate parameters).

    Mava's recurrent networks (the MAGPO code's ``rnn.yaml`` and ``magpo.yaml``: ``[128]`` ReLU, GRU(128), ``[128]`` ReLU,
    head) are ``hidden_size=128, post_hidden_sizes=[128], activation="relu"``.

    Args:
        hidden_size: width of the encoder and of the GRU state.
        post_hidden_sizes: widths of the layers (each followed by the activation) between the GRU state and the
            head; empty (the default): the head reads the GRU state.
        **kwargs: ``activation``, ``share_params``, ``agent_id``, ``distribution``, ``log_std_init`` of
            ``hcmarl.nn.actors.Actor``.
    """

    recurrent = True
    in_keys = [OBSERVATION, ACTION_MASK, IS_INIT, RNN_STATE]

    def __init__(self, hidden_size: int = 64, post_hidden_sizes: Sequence[int] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.post_hidden_sizes = list(post_hidden_sizes)
        self.n_agents = 0

    def build_layers(self, info: EnvInfo, in_dim: int) -> None:
        self.n_agents = info.n_agents
        self.encoder = nn.Sequential(AgentLinear(in_dim, self.hidden_size, self.n_groups), activation_class(self.activation)())
        self.cell = AgentGRUCell(self.hidden_size, self.hidden_size, self.n_groups)
        self.head: AgentLinear | AgentMLP = (
            AgentMLP(self.hidden_size, self.post_hidden_sizes, info.action_dim, self.n_groups, self.activation, out_gain=0.01)
            if self.post_hidden_sizes
            else AgentLinear(self.hidden_size, info.action_dim, self.n_groups, gain=0.01)
        )

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
        states = replay_states(self.cell, self.encode(td, agent), td.get(IS_INIT), td.get(RNN_STATE)[:, 0], agent)
        return self.distribution(self.head(states, agent), td, agent)
