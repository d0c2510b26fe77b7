"""Per-agent linear layers and MLPs, vectorised over agents (ALGORITHMS.md section 1, "Policies").

One parameter set shared by all agents (``n_groups = 1``) or one set per agent
(``n_groups = N``) evaluated in one batched matmul: no Python loop over agents. Given
``agent = i``, the input holds agent i alone (an agent dimension of size 1) and only agent i's
parameters are read: a sequential update's per-agent step then costs one agent, not N.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def activation_class(name: str) -> type[nn.Module]:
    """The activation module class for ``name``, or a ValueError naming the choices."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class AgentLinear(nn.Module):
    """``y[..., i, :] = x[..., i, :] @ W[g(i)] + b[g(i)]`` with ``g(i) = i`` per agent or ``0`` shared.

    ``forward(x, agent=i)`` takes ``x`` ``[..., 1, in]`` holding agent i alone and reads ``W[g(i)]``, ``b[g(i)]`` only.
    """

    def __init__(self, in_features: int, out_features: int, n_groups: int = 1, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.n_groups = n_groups
        self.weight = nn.Parameter(torch.empty(n_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_groups, out_features))
        for g in range(n_groups):
            nn.init.orthogonal_(self.weight.data[g].T, gain=gain)

    def forward(self, x: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        if self.n_groups == 1 or agent is not None:
            group = 0 if self.n_groups == 1 else agent
            return x @ self.weight[group] + self.bias[group]
        return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias


class AgentMLP(nn.Sequential):
    """An MLP over the last dimension whose layers are ``AgentLinear`` (agents on dimension -2); ``agent`` as ``AgentLinear``'s."""

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        n_groups: int = 1,
        activation: str = "tanh",
        out_gain: float = 1.0,
    ) -> None:
        act = activation_class(activation)
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden_sizes]
        for a, b in itertools.pairwise(sizes):
            layers += [AgentLinear(a, b, n_groups), act()]
        layers.append(AgentLinear(sizes[-1], out_features, n_groups, gain=out_gain))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, agent) if isinstance(layer, AgentLinear) else layer(x)
        return x
