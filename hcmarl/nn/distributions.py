"""Action distributions over ``[..., N]`` agents (ALGORITHMS.md section 1, "Policies").

Both return per-agent log-probabilities and entropies of shape ``[..., N]``: a Gaussian's
are summed over action dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Categorical, Independent, Normal

# exp(MASKED_LOGIT - logsumexp) underflows to exactly 0 in float32 and float64, and
# 0 * MASKED_LOGIT stays 0 in the entropy (an -inf would give NaN there).
MASKED_LOGIT = -1e30


def masked_categorical(logits: torch.Tensor, action_mask: torch.Tensor | None = None) -> Categorical:
    """Categorical whose unavailable actions (``action_mask`` False) have probability exactly 0."""
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask, MASKED_LOGIT)
    return Categorical(logits=logits)


def diagonal_gaussian(mean: torch.Tensor, log_std: torch.Tensor) -> Independent:
    """Gaussian with a state-independent log-std, independent over the last (action) dimension."""
    return gaussian_with_std(mean, log_std.exp())


def bounded_std(raw: torch.Tensor, x_coef: float = 1.0, y_coef: float = 0.5) -> torch.Tensor:
    """HARL's bounded action std: sigmoid(raw / x_coef) * y_coef, in (0, y_coef) (HARL's ``DiagGaussian``, used by the
    HCPO paper on MA-MuJoCo; ALGORITHMS.md section 3, "Paper settings"). HARL starts ``raw`` at ``x_coef``."""
    return torch.sigmoid(raw / x_coef) * y_coef


def gaussian_with_std(mean: torch.Tensor, std: torch.Tensor) -> Independent:
    """Gaussian with a state-independent ``std`` (broadcast to ``mean``), independent over the last (action) dimension."""
    return Independent(Normal(mean, std.expand_as(mean)), 1)


def kl_divergence(p: torch.distributions.Distribution, q: torch.distributions.Distribution) -> torch.Tensor:
    """True KL(p || q) per agent, ``[..., N]`` (categorical or Gaussian)."""
    return torch.distributions.kl_divergence(p, q)


def harl_divergence(p: torch.distributions.Distribution, q: torch.distributions.Distribution) -> torch.Tensor:
    """HARL's trust-region divergence of q from p per agent, ``[..., N]``: for a categorical the sum over actions of
    r - 1 - log r with r = q(a) / p(a) (HARL's ``trpo_util.kl_approx`` on normalised logits, not weighted by p(a);
    unavailable actions add 0), for a Gaussian the true KL (as HARL). Its second-order term is sum_a (log r_a)^2 / 2,
    against the true KL's sum_a p(a) (log r_a)^2 / 2: a much tighter bound on actions of low probability."""
    if not isinstance(p, Categorical) or not isinstance(q, Categorical):
        return kl_divergence(p, q)
    log_ratio = torch.where(p.logits > MASKED_LOGIT / 2, q.logits - p.logits, 0.0)  # 0 on unavailable actions
    return (torch.expm1(log_ratio) - log_ratio).sum(-1)


DIVERGENCES: dict[str, Callable[[torch.distributions.Distribution, torch.distributions.Distribution], torch.Tensor]] = {
    "kl": kl_divergence,
    "harl": harl_divergence,
}


def map_distribution(dist: torch.distributions.Distribution, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.distributions.Distribution:
    """The same kind of distribution with ``fn`` applied to each parameter tensor (categorical logits ``[..., A]``;
    Gaussian loc and scale ``[..., A]``); ``fn`` must keep the last (action) dimension."""
    return distribution_like(dist, [fn(t) for t in distribution_parameters(dist)])


def distribution_parameters(dist: torch.distributions.Distribution) -> list[torch.Tensor]:
    """The tensors that define a distribution: a categorical's (normalised) logits; a Gaussian's loc and scale."""
    if isinstance(dist, Categorical):
        return [dist.logits]
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return [dist.base_dist.loc, dist.base_dist.scale]
    raise TypeError(f"hcmarl's distributions are masked categoricals and diagonal Gaussians, not {type(dist).__name__}")


def distribution_like(dist: torch.distributions.Distribution, parameters: list[torch.Tensor]) -> torch.distributions.Distribution:
    """The same kind of distribution as ``dist`` made from ``parameters`` (``distribution_parameters``' layout)."""
    if isinstance(dist, Categorical):
        return Categorical(logits=parameters[0])
    return Independent(Normal(parameters[0], parameters[1]), 1)


def select_agents(dist: torch.distributions.Distribution, agents: slice) -> torch.distributions.Distribution:
    """The same distribution restricted to ``agents`` on its last batch dimension (categorical or Gaussian)."""
    return map_distribution(dist, lambda t: t[..., agents, :])


def detach_distribution(dist: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters detached: a constant target (categorical or Gaussian)."""
    return map_distribution(dist, torch.Tensor.detach)
