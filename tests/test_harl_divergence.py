"""HARL's trust-region divergence (``harl_divergence``) and ``TrustRegion(divergence="harl")`` against references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical

from hcmarl.constraints import Evaluation, SurrogateBatch
from hcmarl.errors import ConfigError
from hcmarl.nn.distributions import diagonal_gaussian, harl_divergence, kl_divergence, masked_categorical
from hcmarl.optim import AgentAdam, GradientStep
from hcmarl.trust_region import KLCurvature, TrustRegion, _ParameterSlice


def test_categorical_values_are_the_sum_over_available_actions_of_r_minus_one_minus_log_r() -> None:
    torch.manual_seed(0)
    old_logits, new_logits = torch.randn(5, 3, 6, dtype=torch.float64), torch.randn(5, 3, 6, dtype=torch.float64)
    mask = torch.rand(5, 3, 6) > 0.3
    mask[..., 0] = True
    old, new = masked_categorical(old_logits, mask), masked_categorical(new_logits, mask)
    expected = torch.zeros(5, 3, dtype=torch.float64)
    for b in range(5):
        for n in range(3):
            available = [a for a in range(6) if mask[b, n, a]]
            old_norm = math.log(sum(math.exp(old_logits[b, n, a].item()) for a in available))
            new_norm = math.log(sum(math.exp(new_logits[b, n, a].item()) for a in available))
            for a in available:
                r = math.exp((new_logits[b, n, a].item() - new_norm) - (old_logits[b, n, a].item() - old_norm))
                expected[b, n] += r - 1 - math.log(r)
    got = harl_divergence(old, new)
    torch.testing.assert_close(got, expected)
    assert torch.isfinite(got).all() and (got >= 0).all()
    # not the KL: on a policy with rare actions it bounds their log-ratios far more tightly
    rare = Categorical(probs=torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64))
    moved = Categorical(probs=torch.tensor([0.91, 0.03, 0.03, 0.03], dtype=torch.float64))
    assert harl_divergence(rare, moved) > 20 * kl_divergence(rare, moved)


def test_gaussian_values_are_the_true_kl() -> None:
    torch.manual_seed(1)
    old = diagonal_gaussian(torch.randn(4, 2, 3), torch.randn(2, 3) * 0.3)
    new = diagonal_gaussian(torch.randn(4, 2, 3), torch.randn(2, 3) * 0.3)
    torch.testing.assert_close(harl_divergence(old, new), kl_divergence(old, new))


def _linear_policy(seed: int = 0):
    torch.manual_seed(seed)
    obs = torch.randn(64, 2, 4, dtype=torch.float64)
    mask = torch.rand(64, 2, 5) > 0.25
    mask[..., 0] = True
    weight = torch.nn.Parameter(0.5 * torch.randn(2, 4, 5, dtype=torch.float64))

    def policy(w: torch.Tensor, idx: torch.Tensor) -> Categorical:
        return masked_categorical(torch.einsum("bnd,nda->bna", obs[idx], w), mask[idx])

    return weight, obs, policy


def test_curvature_of_the_harl_divergence_is_its_explicit_hessian() -> None:
    weight, obs, policy = _linear_policy()
    everything = torch.arange(obs.shape[0])
    old = Categorical(logits=policy(weight, everything).logits.detach())

    def divergence_of(flat: torch.Tensor) -> torch.Tensor:
        return harl_divergence(old, policy(flat.view_as(weight), everything)).mean()

    hessian = torch.autograd.functional.hessian(divergence_of, weight.detach().reshape(-1).clone())
    curvature = KLCurvature(
        _ParameterSlice(GradientStep(AgentAdam([weight]))), policy(weight, everything), lambda new: harl_divergence(old, new).mean()
    )
    for _ in range(3):
        v = torch.randn(hessian.shape[0], dtype=torch.float64)
        torch.testing.assert_close(curvature(v), hessian @ v, atol=1e-10, rtol=1e-8)


def test_a_harl_trust_region_step_bounds_the_harl_divergence_not_the_kl() -> None:
    weight, obs, policy = _linear_policy(2)
    everything = torch.arange(obs.shape[0])
    action = policy(weight, everything).sample()

    def evaluate(idx: torch.Tensor) -> Evaluation:
        dist = policy(weight, idx)
        return Evaluation(dist.log_prob(action[idx]), dist.entropy(), dist)

    with torch.no_grad():
        first = evaluate(everything)
    old_log_prob, old = first.log_prob.clone(), Categorical(logits=first.distribution.logits.clone())
    advantage = torch.randn_like(old_log_prob)
    max_kl = 0.01
    metrics = TrustRegion(max_kl=max_kl, divergence="harl").update(
        evaluate, SurrogateBatch(old_log_prob, advantage), GradientStep(AgentAdam([weight]))
    )
    assert metrics["accepted"] == 1.0
    with torch.no_grad():
        now = evaluate(everything).distribution
        harl, kl = harl_divergence(old, now).mean(), kl_divergence(old, now).mean()
    assert 0.1 * max_kl < harl <= max_kl + 1e-12  # the bound is used, and on the HARL divergence
    assert kl < harl
    torch.testing.assert_close(metrics["kl"].to(harl.dtype), harl)


def test_an_unknown_divergence_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of kl, harl"):
        TrustRegion(divergence="js")
