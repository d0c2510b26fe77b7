"""GAE, advantage normalisation, value normalisation and the value loss (ALGORITHMS.md section 1).

Tensors are ``[E, T, ...]``: environments first, time second.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hcmarl.distributed import all_reduce_sum

MinibatchAdvantageNorm = Literal["batch", "minibatch"]
"""Where a minibatch loop normalises advantages: ``batch`` (as the iteration left them) or ``minibatch`` (again in every
minibatch, per lane: ``normalize_minibatch_advantage``)."""


def generalized_advantage_estimate(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """GAE over time (dim 1), ALGORITHMS.md section 1.

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}

    Termination stops bootstrapping; a truncation (done but not terminated) bootstraps from
    ``next_value``, the value of the last observation before the reset. ``reward``,
    ``terminated`` and ``done`` broadcast against ``value`` (e.g. ``[E, T, 1]`` vs ``[E, T, N]``).
    """
    not_terminated = (~terminated).to(value.dtype)
    not_done = (~done).to(value.dtype)
    delta = reward + gamma * next_value * not_terminated - value
    decay = gamma * lam * not_done
    delta, decay = torch.broadcast_tensors(delta, decay)
    advantage = torch.empty_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        running = delta[:, t] + decay[:, t] * running
        advantage[:, t] = running
    return advantage


def conductor_mixture_value(q: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """V(s) = sum_M w_old(M|s) Q(s, M) from ``q`` and ``probs`` ``[..., K]`` (ALGORITHMS.md section 3, "Critic")."""
    return (probs * q).sum(dim=-1)


def instruction_advantages(gae_advantage: torch.Tensor, value: torch.Tensor, q_taken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HCPO's two advantages (ALGORITHMS.md section 3, "Critic"), unnormalised.

    With G_t = V(s_t) + A^GAE_t (the lambda-return): the conductor's A^M_t = A^GAE_t and the
    agents' A^a_t = G_t - Q(s_t, M_t). ``value`` is the mixture V of ``conductor_mixture_value``
    and ``q_taken`` the head of the sampled instruction; all tensors share one shape.
    Returns ``(A^M, A^a)``.
    """
    return gae_advantage, value + gae_advantage - q_taken


def normalize_minibatch_advantage(advantage: torch.Tensor, lanes: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / (std + eps) over each lane's part of a minibatch (all its samples, steps and agents; std with
    divisor n), as the official MAGPO code normalises its advantages in every minibatch. The minibatch ``[b, ...]``
    holds ``lanes`` equal parts one after another (``hcmarl.optim.minibatch_indices``)."""
    parts = advantage.reshape(lanes, -1)
    mean = parts.mean(dim=1, keepdim=True)
    std = parts.std(dim=1, correction=0, keepdim=True)
    return ((parts - mean) / (std + eps)).reshape(advantage.shape)


def normalize_advantage(advantage: torch.Tensor, per_agent: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / std over the batch, per agent (last dim) if ``per_agent``; stats summed over DDP ranks."""
    dims = tuple(range(advantage.dim() - 1)) if per_agent else tuple(range(advantage.dim()))
    count = torch.tensor(float(advantage[..., 0].numel() if per_agent else advantage.numel()), device=advantage.device)
    total = advantage.sum(dim=dims)
    squares = advantage.square().sum(dim=dims)
    stats = all_reduce_sum(torch.stack([total.reshape(-1), squares.reshape(-1), count.expand(total.numel())]))
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean.square()).clamp_min(0.0)
    if not per_agent:
        mean, var = mean[0], var[0]
    return (advantage - mean) / (var.sqrt() + eps)


class ValueNorm(nn.Module):
    """Running mean/variance of value targets with debiasing (HARL's ValueNorm, ALGORITHMS.md section 1).

    ``update`` folds a batch in with weight ``1 - beta``; statistics are summed over DDP ranks,
    so every rank holds the same normaliser.
    """

    running_mean: torch.Tensor  # buffers, registered in __init__
    running_mean_sq: torch.Tensor
    debiasing_term: torch.Tensor

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.beta = beta
        self.epsilon = epsilon
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def _mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        denom = self.debiasing_term.clamp_min(self.epsilon)
        mean = self.running_mean / denom
        var = (self.running_mean_sq / denom - mean.square()).clamp_min(1e-2)
        return mean, var

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        stats = all_reduce_sum(torch.stack([x.sum(), x.square().sum(), torch.tensor(float(x.numel()), device=x.device)]))
        batch_mean, batch_sq = stats[0] / stats[2], stats[1] / stats[2]
        self.running_mean.mul_(self.beta).add_(batch_mean * (1 - self.beta))
        self.running_mean_sq.mul_(self.beta).add_(batch_sq * (1 - self.beta))
        self.debiasing_term.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._mean_var()
        return x * var.sqrt() + mean


ValueLoss = Literal["huber", "mse"]


def value_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    kind: ValueLoss = "huber",
    huber_delta: float = 10.0,
    old_prediction: torch.Tensor | None = None,
    clip_value: float | None = None,
) -> torch.Tensor:
    """Per-element critic loss, ALGORITHMS.md section 1 ("Critic loss"): Huber (``huber_delta``) or MSE.

    With ``clip_value``: max(loss(prediction), loss(old + clip(prediction - old, -c, c))), the
    pessimistic clipped value loss, ``old_prediction`` being the prediction before the update.
    """

    def element(p: torch.Tensor) -> torch.Tensor:
        if kind == "huber":
            return F.huber_loss(p, target, delta=huber_delta, reduction="none")
        return F.mse_loss(p, target, reduction="none")

    loss = element(prediction)
    if clip_value is None:
        return loss
    if old_prediction is None:
        raise ValueError("value_loss: clip_value needs old_prediction")
    clipped = old_prediction + (prediction - old_prediction).clamp(-clip_value, clip_value)
    return torch.max(loss, element(clipped))
