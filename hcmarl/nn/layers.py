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

    def group_parameters(self, agent: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight ``[Gw, in, out]`` and bias ``[Gw, out]`` that ``forward(x, agent)`` reads: every group's
        (Gw = n_groups) when each agent has its own and ``agent`` is None, else the one group's (Gw = 1)."""
        if agent is None and self.n_groups > 1:
            return self.weight, self.bias
        group = 0 if self.n_groups == 1 or agent is None else agent
        return self.weight[group : group + 1], self.bias[group : group + 1]

    def agent_major(self, x: torch.Tensor) -> torch.Tensor:
        """Every group's map on agent-major input ``[n_groups, M, in]`` -> ``[n_groups, M, out]`` (one batched matmul)."""
        return torch.bmm(x, self.weight) + self.bias.unsqueeze(-2)


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
        """With one parameter set per agent and every agent at once, the hidden activations stay agent-major
        (``[N, M, features]``, ``AgentLinear.agent_major``): one layout change in and one out, not two per layer."""
        if agent is not None or self[0].n_groups == 1:
            for layer in self:
                x = layer(x, agent) if isinstance(layer, AgentLinear) else layer(x)
            return x
        leading, n_agents = x.shape[:-2], x.shape[-2]
        x = x.movedim(-2, 0).reshape(n_agents, -1, x.shape[-1])
        for layer in self:
            x = layer.agent_major(x) if isinstance(layer, AgentLinear) else layer(x)
        return x.reshape(n_agents, *leading, x.shape[-1]).movedim(0, -2)


FLAX_NORM_EPS = 1e-6
"""Flax's eps of ``LayerNorm``, ``RMSNorm`` and ``GroupNorm``, which Mava keeps in its Sable and MAT."""


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension: ``x / sqrt(mean(x^2) + eps) * g``.

    No mean is subtracted and there is no bias; the gain ``g`` starts at ones. Sable's normalisation (Mava's
    ``SableNetwork`` uses Flax's ``nn.RMSNorm``, whose ``eps`` is 1e-6, the default here).
    """

    def __init__(self, dim: int, eps: float = FLAX_NORM_EPS) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, (self.dim,), self.weight, self.eps)


class SwiGLU(nn.Module):
    """The gated feed-forward block of Shazeer 2020: ``(silu(x W_gate) * (x W_linear)) W_out``, no biases.

    ``hidden_dim`` defaults to ``embed_dim``: Mava's Sable builds its SwiGLU with a hidden layer as wide as the token, not
    the usual 8/3 expansion. ``zero_init`` starts all three matrices at zero, as Mava does; note that without biases the
    block then outputs zeros and every gradient of its weights is zero too, so it stays zero through training (Adam
    moves nothing whose gradient is always zero). Otherwise each matrix has ``nn.Linear``'s default initialisation.
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, zero_init: bool = False) -> None:
        super().__init__()
        hidden = embed_dim if hidden_dim is None else hidden_dim
        self.gate = nn.Linear(embed_dim, hidden, bias=False)
        self.linear = nn.Linear(embed_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, embed_dim, bias=False)
        if zero_init:
            for layer in (self.gate, self.linear, self.out):
                nn.init.zeros_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.silu(self.gate(x)) * self.linear(x))
