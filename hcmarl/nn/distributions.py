"""Action distributions over ``[..., N]`` agents (ALGORITHMS.md section 1, "Policies").

Both return per-agent log-probabilities and entropies of shape ``[..., N]``: a Gaussian's
are summed over action dimensions.
"""

from __future__ import annotations

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
    return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)


def kl_divergence(p: torch.distributions.Distribution, q: torch.distributions.Distribution) -> torch.Tensor:
    """True KL(p || q) per agent, ``[..., N]`` (categorical or Gaussian)."""
    return torch.distributions.kl_divergence(p, q)


def select_agents(dist: torch.distributions.Distribution, agents: slice) -> torch.distributions.Distribution:
    """The same distribution restricted to ``agents`` on its last batch dimension (categorical or Gaussian)."""
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits[..., agents, :])
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return Independent(Normal(dist.base_dist.loc[..., agents, :], dist.base_dist.scale[..., agents, :]), 1)
    raise TypeError(f"select_agents does not know {type(dist).__name__}")


def detach_distribution(dist: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters detached: a constant target (categorical or Gaussian)."""
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits.detach())
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return Independent(Normal(dist.base_dist.loc.detach(), dist.base_dist.scale.detach()), 1)
    raise TypeError(f"detach_distribution does not know {type(dist).__name__}")
