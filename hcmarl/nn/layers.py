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
from typing import Any

import torch
from torch import nn

from hcmarl.errors import ConfigError

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

    def group_index(self, agent: int | None) -> int | None:
        """The one group g(i) that ``forward(x, agent)`` reads, or None when it reads every group (one parameter set
        per agent and ``agent`` None)."""
        return 0 if self.n_groups == 1 else agent

    def forward(self, x: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        group = self.group_index(agent)
        if group is None:
            return torch.einsum("...ni,nio->...no", x, self.weight) + self.bias
        return x @ self.weight[group] + self.bias[group]

    def group_parameters(self, agent: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight ``[Gw, in, out]`` and bias ``[Gw, out]`` that ``forward(x, agent)`` reads: every group's
        (Gw = n_groups) when each agent has its own and ``agent`` is None, else the one group's (Gw = 1)."""
        group = self.group_index(agent)
        if group is None:
            return self.weight, self.bias
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
    the usual 8/3 expansion. ``zero_init`` starts all three matrices at zero, as Mava does. Without biases the block
    then outputs zeros and every gradient of its weights is zero, so no optimiser ever moves them (Adam moves nothing
    whose gradient is always zero): such a block is frozen at zero. It returns its zero output and its matrices' zero
    gradients without computing them (``ZeroSwiGLU``), the same numbers bit for bit at less of the paper's Sable's update
    time (docs/algorithms/magpo.md, "Cost"); loading non-zero matrices into it raises ``ConfigError``. Otherwise each
    matrix has ``nn.Linear``'s default initialisation.
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, zero_init: bool = False) -> None:
        super().__init__()
        hidden = embed_dim if hidden_dim is None else hidden_dim
        self.gate = nn.Linear(embed_dim, hidden, bias=False)
        self.linear = nn.Linear(embed_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, embed_dim, bias=False)
        self.frozen_at_zero = zero_init
        if zero_init:
            for layer in (self.gate, self.linear, self.out):
                nn.init.zeros_(layer.weight)
            self.register_load_state_dict_post_hook(refuse_trained_frozen_swiglu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_at_zero:
            return ZeroSwiGLU.apply(x, self.gate.weight, self.linear.weight, self.out.weight)
        return self.out(nn.functional.silu(self.gate(x)) * self.linear(x))


class ZeroSwiGLU(torch.autograd.Function):
    """A SwiGLU whose three matrices are zero, without its arithmetic: the output ``(silu(x 0) * (x 0)) 0 = 0`` and the
    gradients of the matrices, ``0`` each (every one is a product with a zero matrix or a zero activation), as zeros;
    no gradient reaches ``x`` (the computed block would pass it ``g 0^T = 0``). The gradients are returned, not skipped,
    so that the optimiser and the gradient-norm clip see the same parameters as for the computed block."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*weights)
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, *(torch.zeros_like(w) for w in ctx.saved_tensors))


def refuse_trained_frozen_swiglu(module: nn.Module, incompatible_keys: Any) -> None:
    """``SwiGLU``'s check after loading a state dict: a frozen (zero-initialised) block must still hold zeros."""
    assert isinstance(module, SwiGLU)
    if any(layer.weight.any() for layer in (module.gate, module.linear, module.out)):
        raise ConfigError(
            "the checkpoint holds a trained SwiGLU feed-forward, but this recipe's feed_forward_init: zeros keeps it at zero "
            "(Mava's); load it with model.guider.network.feed_forward_init: default, the setting it was trained with"
        )
