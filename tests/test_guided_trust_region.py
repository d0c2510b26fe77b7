"""The blocks hybrid 2 adds (issue 8): GuidedTrustRegion, the Fisher subsample, GuidedImitation under a schedule."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Categorical

from hcmarl.constraints import Evaluation, SurrogateBatch, clip_ppo_objective, evaluate_actions
from hcmarl.guided import GuidedImitation, GuidedTrustRegion
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB
from hcmarl.nn.distributions import kl_divergence
from hcmarl.optim import AgentAdam, GradientStep
from hcmarl.schedules import Sequential, Upstream
from hcmarl.trust_region import TrustRegion


class LinearPolicy(torch.nn.Module):
    """A per-agent linear categorical policy, weights ``[N, dim, actions]``, reading ``("agents", "observation")``;
    ``agent = i`` reads agent i's weights for a batch holding that agent alone (``Actor.forward``'s contract)."""

    def __init__(self, n_agents: int = 3, dim: int = 3, actions: int = 4, scale: float = 0.3) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(scale * torch.randn(n_agents, dim, actions, dtype=torch.float64))

    def logits(self, obs: torch.Tensor, agent: int | None = None) -> torch.Tensor:
        weight = self.weight if agent is None else self.weight[agent : agent + 1]
        return torch.einsum("bnd,nda->bna", obs, weight)

    def forward(self, td: TensorDict, agent: int | None = None) -> Categorical:
        return Categorical(logits=self.logits(td.get(("agents", "observation")), agent))


def _setting(seed: int = 0, batch: int = 96, anchor_scale: float = 1.0):
    """A guider-like policy, its samples, and a learner-like anchor at the same samples."""
    torch.manual_seed(seed)
    policy = LinearPolicy()
    obs = torch.randn(batch, 3, 3, dtype=torch.float64)
    anchor = Categorical(logits=anchor_scale * torch.randn(batch, 3, 4, dtype=torch.float64))
    with torch.no_grad():
        action = policy.logits(obs).argmax(-1) if anchor_scale > 5 else Categorical(logits=policy.logits(obs)).sample()
        old_log_prob = Categorical(logits=policy.logits(obs)).log_prob(action)

    def evaluate(idx: torch.Tensor, with_anchor: bool = True) -> Evaluation:
        dist = Categorical(logits=policy.logits(obs[idx]))
        target = Categorical(logits=anchor.logits[idx]) if with_anchor else None
        return evaluate_actions(dist, action[idx], target)

    return policy, obs, action, old_log_prob, anchor, evaluate


def test_guided_trust_region_surrogate_matches_the_formula_sample_by_sample() -> None:
    policy, obs, action, _, anchor, evaluate = _setting(seed=1)
    old_log_prob = torch.randn(obs.shape[0], 3, dtype=torch.float64) * 0.3 - 1.4
    advantage, weight = torch.randn(obs.shape[0], 3, dtype=torch.float64), torch.rand(obs.shape[0], 1, dtype=torch.float64) + 0.5
    delta = 1.4
    evaluation = evaluate(torch.arange(obs.shape[0]))
    got = GuidedTrustRegion(delta=delta).surrogate(evaluation, SurrogateBatch(old_log_prob, advantage, weight))
    p, q = evaluation.distribution.probs, anchor.probs
    masked = 0
    for b in range(obs.shape[0]):
        for i in range(3):
            g, l, g_old = evaluation.log_prob[b, i].item(), anchor.log_prob(action)[b, i].item(), old_log_prob[b, i].item()
            inner = math.exp(min(max(g - l, -math.log(delta)), math.log(delta)) + l - g_old)
            mask = 1.0 if abs(g - l) >= math.log(delta) else 0.0
            masked += mask
            kl = sum(p[b, i, a].item() * math.log(p[b, i, a].item() / q[b, i, a].item()) for a in range(4))
            expected = weight[b, 0].item() * inner * advantage[b, i].item() - mask * kl
            assert got[b, i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0 < masked < obs.shape[0] * 3  # both branches were exercised


def test_without_an_anchor_or_with_an_infinite_band_it_is_the_trust_region() -> None:
    results = []
    for constraint, with_anchor in [
        (TrustRegion(max_kl=0.01), False),
        (GuidedTrustRegion(delta=math.inf), True),
        (GuidedTrustRegion(delta=1.3), False),
    ]:
        policy, obs, _, old_log_prob, _, evaluate = _setting(seed=2)
        advantage = torch.randn(old_log_prob.shape, generator=torch.Generator().manual_seed(3), dtype=old_log_prob.dtype)
        metrics = constraint.update(
            functools.partial(evaluate, with_anchor=with_anchor),
            SurrogateBatch(old_log_prob, advantage),
            GradientStep(AgentAdam(policy.parameters())),
        )
        assert metrics["accepted"] == 1.0
        results.append(policy.weight.detach().clone())
    torch.testing.assert_close(results[1], results[0])
    torch.testing.assert_close(results[2], results[0])


def test_the_masked_kl_alone_pulls_the_guider_towards_the_learner() -> None:
    """Zero advantages and every sample outside the band: only the masked KL moves the guider, and it moves it towards
    the learner; with no band (delta = inf) the same data gives nothing to improve and the step is rejected."""
    for delta in (1.05, math.inf):
        policy, obs, _, old_log_prob, anchor, evaluate = _setting(seed=4, anchor_scale=8.0)
        everything = torch.arange(obs.shape[0])
        with torch.no_grad():
            before = kl_divergence(evaluate(everything).distribution, anchor).mean()
        data = SurrogateBatch(old_log_prob, torch.zeros_like(old_log_prob))
        metrics = GuidedTrustRegion(delta=delta, max_kl=0.01).update(evaluate, data, GradientStep(AgentAdam(policy.parameters())))
        with torch.no_grad():
            after = kl_divergence(evaluate(everything).distribution, anchor).mean()
        if math.isinf(delta):
            assert metrics["accepted"] == 0.0 and torch.equal(after, before)
        else:
            assert metrics["accepted"] == 1.0 and after < before - 1e-4


def test_the_fisher_subsample_changes_only_the_fisher() -> None:
    """fisher_fraction = 0.5: the step is sqrt(2 max_kl / x'Fx) x with x = F^-1 g, F the KL Hessian (+ damping) over every
    second sample and g the surrogate's gradient over all of them (a direct solve on the explicit Hessian)."""
    policy, obs, action, old_log_prob, _, evaluate = _setting(seed=5, batch=64)
    advantage = torch.randn(old_log_prob.shape, generator=torch.Generator().manual_seed(6), dtype=old_log_prob.dtype)
    w0 = policy.weight.detach().clone()
    old = Categorical(logits=policy.logits(obs).detach())
    half = torch.arange(0, obs.shape[0], 2)

    def kl_of(flat: torch.Tensor, samples: torch.Tensor = half) -> torch.Tensor:
        logits = torch.einsum("bnd,nda->bna", obs[samples], flat.view_as(w0))
        return kl_divergence(Categorical(logits=old.logits[samples]), Categorical(logits=logits)).mean()

    def surrogate_of(flat: torch.Tensor) -> torch.Tensor:
        log_prob = Categorical(logits=torch.einsum("bnd,nda->bna", obs, flat.view_as(w0))).log_prob(action)
        return (torch.exp(log_prob - old_log_prob) * advantage).mean()

    damping, max_kl = 0.1, 0.001
    g = torch.autograd.functional.jacobian(surrogate_of, w0.reshape(-1))

    def natural_step(samples: torch.Tensor) -> torch.Tensor:
        hessian = torch.autograd.functional.hessian(lambda flat: kl_of(flat, samples), w0.reshape(-1))
        fisher = hessian + damping * torch.eye(w0.numel(), dtype=w0.dtype)
        x = torch.linalg.solve(fisher, g)
        return w0.reshape(-1) + torch.sqrt(2 * max_kl / (x @ fisher @ x)) * x

    expected, with_all_samples = natural_step(half), natural_step(torch.arange(obs.shape[0]))
    metrics = TrustRegion(max_kl=max_kl, damping=damping, cg_iters=100, fisher_fraction=0.5).update(
        lambda idx: evaluate(idx, False), SurrogateBatch(old_log_prob, advantage), GradientStep(AgentAdam(policy.parameters()))
    )
    assert metrics["line_search_steps"] == 1.0 and metrics["accepted"] == 1.0
    error = (policy.weight.detach().reshape(-1) - expected).abs().max()
    assert error < 1e-5 and error < 0.05 * (with_all_samples - expected).abs().max()  # CG's stopping tolerance, not the subsample


def test_fisher_fraction_must_be_a_share() -> None:
    from hcmarl.errors import ConfigError

    with pytest.raises(ConfigError, match="fisher_fraction"):
        TrustRegion(fisher_fraction=0.0)


def test_guided_imitation_objective_is_lambda_times_the_factored_clip_minus_the_kl() -> None:
    torch.manual_seed(7)
    learner, guider = Categorical(logits=torch.randn(50, 3, 4)), Categorical(logits=torch.randn(50, 3, 4))
    action = guider.sample()
    old_log_prob, advantage, factor = guider.log_prob(action), torch.randn(50, 3), torch.rand(50, 1) + 0.5
    got = GuidedImitation(lam=3.0, eps=0.1).objective(evaluate_actions(learner, action, guider), SurrogateBatch(old_log_prob, advantage, factor))
    p, q = guider.probs, learner.probs
    kl = (p * (p.log() - q.log())).sum(-1)
    expected = 3.0 * clip_ppo_objective(learner.log_prob(action), old_log_prob, advantage, 0.1, factor) - kl
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="anchor"):
        GuidedImitation().objective(evaluate_actions(learner, action), SurrogateBatch(old_log_prob, advantage))


def test_sequential_imitation_moves_each_agent_alone_towards_its_own_guider_conditional() -> None:
    """lambda = 0 under Sequential: each agent's update sees the guider's conditional for that agent only (its KL falls
    to a fraction), and per-agent Adam moves only that agent's weights."""
    torch.manual_seed(8)
    policy = LinearPolicy(scale=0.1)
    obs = torch.randn(128, 3, 3, dtype=torch.float64)
    guider = Categorical(logits=torch.einsum("bnd,nda->bna", obs, torch.randn(3, 3, 4, dtype=torch.float64)))
    action = guider.sample()
    batch = TensorDict({"agents": TensorDict({"observation": obs}, batch_size=(128, 3))}, batch_size=(128,))
    batch.set(ACTION, action)
    batch.set(LOG_PROB, guider.log_prob(action))
    batch.set(ADVANTAGE, torch.randn(128, 3, dtype=torch.float64))
    with torch.no_grad():
        before = kl_divergence(guider, policy(batch)).mean(0)
    metrics = Sequential(order="fixed").update(
        policy,
        GuidedImitation(lam=0.0, epochs=40, minibatches=2),
        batch,
        GradientStep(AgentAdam(policy.parameters(), lr=0.05)),
        Upstream(anchor=guider),
    )
    with torch.no_grad():
        after = kl_divergence(guider, policy(batch)).mean(0)
    assert bool((after < 0.5 * before).all()), (before, after)
    assert "imitation_kl" in metrics and "kl_agent2" in metrics
