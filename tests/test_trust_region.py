"""TrustRegion against independent references (ALGORITHMS.md section 1, ``TrustRegion``)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical

from hcmarl.constraints import Evaluation, SurrogateBatch
from hcmarl.nn.distributions import kl_divergence
from hcmarl.optim import AgentAdam, GradientStep
from hcmarl.trust_region import KLCurvature, TrustRegion, _ParameterSlice, conjugate_gradient


def test_conjugate_gradient_solves_an_spd_system() -> None:
    torch.manual_seed(0)
    m = torch.randn(12, 12, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=40, tol=1e-20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), atol=1e-8, rtol=1e-8)


def _toy(n_agents: int = 2, batch: int = 64, actions: int = 4, dim: int = 3):
    """A per-agent linear categorical policy with stacked weights [N, dim, actions]."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(0.3 * torch.randn(n_agents, dim, actions, dtype=torch.float64))
    obs = torch.randn(batch, n_agents, dim, dtype=torch.float64)
    with torch.no_grad():
        action = Categorical(logits=torch.einsum("bnd,nda->bna", obs, weight)).sample()

    def evaluate_for(agent_slice: slice):
        def evaluate(idx: torch.Tensor) -> Evaluation:
            dist = Categorical(logits=torch.einsum("bnd,nda->bna", obs[idx], weight)[:, agent_slice])
            return Evaluation(dist.log_prob(action[idx][:, agent_slice]), dist.entropy(), dist)

        return evaluate

    return weight, obs, action, evaluate_for


def test_fisher_vector_product_equals_explicit_kl_hessian() -> None:
    weight, obs, action, evaluate_for = _toy()
    agent = 1
    evaluate = evaluate_for(slice(agent, agent + 1))
    everything = torch.arange(obs.shape[0])
    old = evaluate(everything).distribution
    old = Categorical(logits=old.logits.detach())

    def kl_of(flat_agent_weight: torch.Tensor) -> torch.Tensor:  # reference: the KL as a function of agent 1's weights
        w = weight.detach().clone()
        w = torch.cat([w[:agent], flat_agent_weight.view(1, *w.shape[1:]), w[agent + 1 :]])
        new = Categorical(logits=torch.einsum("bnd,nda->bna", obs, w)[:, agent : agent + 1])
        return kl_divergence(old, new).mean()

    hessian = torch.autograd.functional.hessian(kl_of, weight.detach()[agent].reshape(-1).clone())
    step = GradientStep(AgentAdam([weight])).for_agent(agent)
    curvature = KLCurvature(_ParameterSlice(step), evaluate(everything).distribution, lambda new: kl_divergence(old, new).mean())
    for _ in range(3):
        v = torch.randn(hessian.shape[0], dtype=torch.float64)
        torch.testing.assert_close(curvature(v), hessian @ v, atol=1e-10, rtol=1e-8)


def test_gaussian_fisher_vector_product_with_kl_weights_equals_explicit_kl_hessian() -> None:
    """The Gauss-Newton product through a Gaussian's loc and (exp of a parameter) scale, for a weighted KL."""
    torch.manual_seed(3)
    obs, kl_weight = torch.randn(50, 3, dtype=torch.float64), torch.rand(50, 1, dtype=torch.float64)
    weight = torch.nn.Parameter(0.5 * torch.randn(1, 3, 2, dtype=torch.float64))
    log_std = torch.nn.Parameter(0.3 * torch.randn(1, 2, dtype=torch.float64))

    def policy(w: torch.Tensor, s: torch.Tensor) -> torch.distributions.Distribution:
        loc = (obs @ w[0]).unsqueeze(1)  # [B, 1, 2]
        return torch.distributions.Independent(torch.distributions.Normal(loc, s.exp().expand_as(loc)), 1)

    with torch.no_grad():
        old = policy(weight, log_std)

    def weighted_kl(new: torch.distributions.Distribution) -> torch.Tensor:
        return (kl_weight * kl_divergence(old, new)).sum() / kl_weight.sum()

    def kl_of(flat: torch.Tensor) -> torch.Tensor:
        return weighted_kl(policy(flat[:6].view(1, 3, 2), flat[6:].view(1, 2)))

    hessian = torch.autograd.functional.hessian(kl_of, torch.cat([weight.detach().reshape(-1), log_std.detach().reshape(-1)]))
    curvature = KLCurvature(_ParameterSlice(GradientStep(AgentAdam([weight, log_std]))), policy(weight, log_std), weighted_kl)
    v = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(curvature(v), hessian @ v, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("max_kl", [0.001, 0.01])
def test_accepted_step_respects_the_trust_region_and_improves(max_kl: float) -> None:
    weight, obs, action, evaluate_for = _toy()
    evaluate = evaluate_for(slice(None))
    everything = torch.arange(obs.shape[0])
    with torch.no_grad():
        first = evaluate(everything)
    old_log_prob, old_dist = first.log_prob.clone(), Categorical(logits=first.distribution.logits.clone())
    advantage = torch.randn_like(old_log_prob)
    metrics = TrustRegion(max_kl=max_kl).update(evaluate, SurrogateBatch(old_log_prob, advantage), GradientStep(AgentAdam([weight])))
    assert metrics["accepted"] == 1.0
    with torch.no_grad():
        now = evaluate(everything)
        kl = kl_divergence(old_dist, now.distribution).mean()
        improvement = (torch.exp(now.log_prob - old_log_prob) * advantage).mean() - advantage.mean()
    assert kl <= max_kl + 1e-12 and kl > 0.1 * max_kl  # used, and not exceeded
    assert improvement > 0
    torch.testing.assert_close(improvement, metrics["improvement"].to(improvement.dtype))


def test_rejected_step_restores_parameters_bit_for_bit() -> None:
    weight, obs, action, evaluate_for = _toy()
    evaluate = evaluate_for(slice(None))
    with torch.no_grad():
        old_log_prob = evaluate(torch.arange(obs.shape[0])).log_prob.clone()
    before = weight.detach().clone()
    # accept_ratio above 1 can never be met by a concave-ish surrogate: every try is rejected
    metrics = TrustRegion(max_kl=0.05, accept_ratio=10.0).update(
        evaluate, SurrogateBatch(old_log_prob, torch.randn_like(old_log_prob)), GradientStep(AgentAdam([weight]))
    )
    assert metrics["accepted"] == 0.0 and metrics["line_search_steps"] == 10
    assert torch.equal(weight.detach(), before)


def test_one_agents_step_leaves_the_others_untouched() -> None:
    weight, obs, action, evaluate_for = _toy(n_agents=3)
    evaluate = evaluate_for(slice(2, 3))
    with torch.no_grad():
        old_log_prob = evaluate(torch.arange(obs.shape[0])).log_prob.clone()
    before = weight.detach().clone()
    step = GradientStep(AgentAdam([weight])).for_agent(2)
    factor = torch.rand(obs.shape[0], 1) + 0.5
    TrustRegion(max_kl=0.01).update(evaluate, SurrogateBatch(old_log_prob, torch.randn_like(old_log_prob), factor), step)
    assert torch.equal(weight[:2].detach(), before[:2]) and not torch.equal(weight[2].detach(), before[2])


def test_kl_weights_bound_the_weighted_kl_and_only_their_ratios_matter() -> None:
    """Per-sample KL weights (HCPO's paper_weighting): the accepted step bounds the sample mean (1/B) sum(w KL), not
    sum(w KL)/sum(w); scaling w by 3 loosens nothing but the bound on the weighted samples (3 w KL has the bound);
    weights of one are no weights, and other weights give another step than none (so they are not ignored)."""
    max_kl = 0.01

    def step(weights: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The parameters after one step, the per-sample KL it took, and the weights used (``mask``, ``mask x3``, ``ones``, ``none``)."""
        torch.manual_seed(3)
        weight, obs, action, evaluate_for = _toy()
        evaluate = evaluate_for(slice(None))
        everything = torch.arange(obs.shape[0])
        with torch.no_grad():
            first = evaluate(everything)
        old_log_prob, old_dist = first.log_prob.clone(), Categorical(logits=first.distribution.logits.clone())
        generator = torch.Generator().manual_seed(7)
        advantage = torch.randn(old_log_prob.shape, generator=generator, dtype=old_log_prob.dtype)
        mask = (torch.rand(old_log_prob.shape, generator=generator) < 0.3).to(old_log_prob.dtype)
        kl_weight = {"mask": mask, "mask x3": 3.0 * mask, "ones": torch.ones_like(mask), "none": None}[weights]
        metrics = TrustRegion(max_kl=max_kl).update(
            evaluate, SurrogateBatch(old_log_prob, advantage, kl_weight=kl_weight), GradientStep(AgentAdam([weight]))
        )
        assert metrics["accepted"] == 1.0
        with torch.no_grad():
            kl = kl_divergence(old_dist, evaluate(everything).distribution)
        return weight.detach().clone(), kl, kl_weight

    masked, kl, kl_weight = step("mask")
    weighted = (kl_weight * kl).mean()
    assert weighted <= max_kl + 1e-12 and weighted > 0.1 * max_kl
    tripled, tripled_kl, tripled_weight = step("mask x3")
    assert (tripled_weight * tripled_kl).mean() <= max_kl + 1e-12 and (tripled - masked).abs().max() > 1e-4
    unweighted, unweighted_kl, _ = step("none")
    assert unweighted_kl.mean() <= max_kl + 1e-12
    torch.testing.assert_close(step("ones")[0], unweighted)
    assert (masked - unweighted).abs().max() > 1e-3, "the KL weights changed nothing: they are ignored"


def test_surrogate_is_the_factor_times_the_ratio_times_the_advantage_sample_by_sample() -> None:
    """ALGORITHMS.md section 1, ``TrustRegion``: L_i = factor_i * (pi_new / pi_old)(a_i) * A_i; no factor means 1."""
    torch.manual_seed(0)
    logits = torch.randn(32, 2, 5)
    action = torch.randint(5, (32, 2))
    dist = Categorical(logits=logits)
    log_prob = dist.log_prob(action)
    old_log_prob, advantage, factor = log_prob + 0.3 * torch.randn(32, 2), torch.randn(32, 2), torch.rand(32, 1) + 0.5
    evaluation = Evaluation(log_prob, dist.entropy(), dist)
    rule = TrustRegion()
    by_hand = [[float(factor[i, 0] * torch.exp(log_prob[i, j] - old_log_prob[i, j]) * advantage[i, j]) for j in range(2)] for i in range(32)]
    torch.testing.assert_close(rule.surrogate(evaluation, SurrogateBatch(old_log_prob, advantage, factor)), torch.tensor(by_hand))
    unweighted = rule.surrogate(evaluation, SurrogateBatch(old_log_prob, advantage))
    torch.testing.assert_close(unweighted, torch.exp(log_prob - old_log_prob) * advantage)
    assert not torch.allclose(unweighted, torch.tensor(by_hand))
