"""MAGPO's blocks (ALGORITHMS.md section 4): the autoregressive guider, the double clip, the mask, the learner's KL."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Categorical, Independent, Normal

from hcmarl.constraints import SurrogateBatch, clip_ppo_objective, evaluate_actions
from hcmarl.envs.base import EnvInfo
from hcmarl.guided import GuidedClip, GuidedImitation, guided_clip_objective, guided_mask
from hcmarl.keys import ACTION, ACTION_MASK, OBSERVATION
from hcmarl.nn import MATGuider

DISCRETE = EnvInfo(name="toy", n_agents=4, obs_dim=5, state_dim=20, action_kind="categorical", action_dim=6, max_steps=10, has_action_mask=True)
CONTINUOUS = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="continuous", action_dim=2, max_steps=10)


def _guider(info: EnvInfo, **kwargs) -> MATGuider:
    torch.manual_seed(0)
    guider = MATGuider(embed_dim=16, n_blocks=2, n_heads=2, **kwargs)
    guider.build(info)
    return guider


def _observations(info: EnvInfo, batch: tuple[int, ...] = (7, 5)) -> TensorDict:
    td = TensorDict({OBSERVATION: torch.randn(*batch, info.n_agents, info.obs_dim)}, batch_size=batch)
    if info.categorical:
        mask = torch.rand(*batch, info.n_agents, info.action_dim) > 0.4
        mask[..., 0] = True
        td.set(ACTION_MASK, mask)
    return td


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["categorical", "gaussian"])
def test_sampled_log_prob_equals_teacher_forced(info: EnvInfo) -> None:
    guider = _guider(info)
    td = _observations(info)
    action, log_prob, _ = guider.sample(td)
    td.set(ACTION, action)
    dist, value = guider(td)
    assert torch.allclose(dist.log_prob(action), log_prob, atol=1e-5)
    assert value.shape == td.batch_size + (info.n_agents,)
    if info.categorical:
        assert bool(td.get(ACTION_MASK).gather(-1, action.unsqueeze(-1)).all()), "a masked action was sampled"
        assert bool((dist.probs[~td.get(ACTION_MASK)] == 0).all()), "a masked action has non-zero probability"


def test_agent_i_conditional_reads_only_earlier_agents_actions() -> None:
    guider = _guider(DISCRETE)
    td = _observations(DISCRETE, (32,))
    td.set(ACTION_MASK, torch.ones(32, DISCRETE.n_agents, DISCRETE.action_dim, dtype=torch.bool))
    td.set(ACTION, torch.randint(DISCRETE.action_dim, (32, DISCRETE.n_agents)))
    before = guider(td)[0].logits
    for j in range(DISCRETE.n_agents):
        changed = td.clone()
        changed.get(ACTION)[:, j] = (td.get(ACTION)[:, j] + 1) % DISCRETE.action_dim
        after = guider(changed)[0].logits
        assert torch.allclose(after[:, : j + 1], before[:, : j + 1], atol=1e-6), f"agents <= {j} saw agent {j}'s action"
        if j + 1 < DISCRETE.n_agents:
            assert not torch.allclose(after[:, j + 1 :], before[:, j + 1 :]), f"agents after {j} ignore its action"


def test_deterministic_sampling_takes_each_conditionals_mode() -> None:
    guider = _guider(DISCRETE)
    td = _observations(DISCRETE, (9,))
    action, _, _ = guider.sample(td, deterministic=True)
    td.set(ACTION, action)
    assert torch.equal(guider(td)[0].probs.argmax(-1), action)


def _objective_gradient(g: torch.Tensor, l: torch.Tensor, g_old: torch.Tensor, a: torch.Tensor, eps: float, delta: float) -> torch.Tensor:
    g = g.clone().requires_grad_(True)
    guided_clip_objective(g, l, g_old, a, eps, delta).sum().backward()
    return g.grad


def test_inner_clip_stops_the_gradient_where_algorithms_md_says() -> None:
    eps, delta = 0.2, 1.5
    log_delta = math.log(delta)
    # (g, l, g_old, A, expected d objective / d g); ratio = e^{g - g_old}, inner = e^{clip(g - l) + l - g_old}
    cases = [
        (0.05, 0.0, 0.0, 1.0, math.exp(0.05)),  # inside the band and the PPO range: the ratio's gradient, ratio * A
        (0.0, -0.5, 0.0, 1.0, 0.0),  # g - l = 0.5 > log delta: inner = e^{log delta - 0.5} = 0.91 is constant in g; min takes it
        (0.0, -0.5, 0.0, -1.0, -1.0),  # same band exit, A < 0: min takes ratio * A, whose gradient flows
        (0.0, 0.5, 0.0, -1.0, 0.0),  # g - l = -0.5 < -log delta: inner = e^{0.5 - log delta} = 1.10 constant; min takes it (A < 0)
        (0.0, 0.5, 0.0, 1.0, 1.0),  # same exit, A > 0: min takes ratio * A
        (0.35, 0.30, 0.0, 1.0, 0.0),  # inside the band, inner = e^{0.35} > 1 + eps: PPO's clip stops it
    ]
    g, l, g_old, a, expected = (torch.tensor(column) for column in zip(*cases, strict=True))
    assert float((g - l)[1]) > log_delta and float((g - l)[3]) < -log_delta
    assert torch.allclose(_objective_gradient(g, l, g_old, a, eps, delta), expected, atol=1e-6)
    # plain PPO (delta = inf) differs exactly on the band exits where the inner ratio was taken
    ppo = _objective_gradient(g, l, g_old, a, eps, math.inf)
    assert torch.allclose(ppo, torch.tensor([math.exp(0.05), 1.0, -1.0, -1.0, 1.0, 0.0]), atol=1e-6)


def test_mask_equals_its_definition_on_hand_made_log_ratios() -> None:
    delta = 1.3
    log_delta = math.log(delta)
    differences = torch.tensor([-1.0, -log_delta, -0.9 * log_delta, 0.0, 0.9 * log_delta, log_delta, 2.0])
    mask = guided_mask(differences, torch.zeros_like(differences), delta)
    assert mask.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # outside the open band (-log delta, log delta)
    assert guided_mask(differences, torch.zeros_like(differences), math.inf).sum() == 0


def _categorical_batch(b: int = 64, n: int = 3, k: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    guider_logits = torch.randn(b, n, k, requires_grad=True)
    learner_logits = torch.randn(b, n, k, requires_grad=True)
    action = torch.randint(k, (b, n))
    old_log_prob = Categorical(logits=torch.randn(b, n, k)).log_prob(action)
    advantage = torch.randn(b, n)
    return guider_logits, learner_logits, action, old_log_prob, advantage


def test_infinite_delta_guider_loss_is_plain_ppo() -> None:
    guider_logits, learner_logits, action, old_log_prob, advantage = _categorical_batch()
    guider, learner = Categorical(logits=guider_logits), Categorical(logits=learner_logits)
    rule = GuidedClip(eps=0.2, delta=math.inf, ent_coef=0.01)
    loss, metrics = rule.loss(evaluate_actions(guider, action, learner), SurrogateBatch(old_log_prob, advantage))
    (grad,) = torch.autograd.grad(loss, guider_logits)
    fresh = Categorical(logits=guider_logits)
    ratio = torch.exp(fresh.log_prob(action) - old_log_prob)
    reference = -torch.min(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage).mean() - 0.01 * fresh.entropy().mean()
    (reference_grad,) = torch.autograd.grad(reference, guider_logits)
    assert torch.allclose(loss, reference) and torch.allclose(grad, reference_grad)
    assert metrics["mask_frac"] == 0


def test_guider_loss_adds_the_masked_kl_to_a_constant_learner() -> None:
    guider_logits, learner_logits, action, old_log_prob, advantage = _categorical_batch(seed=1)
    guider, learner = Categorical(logits=guider_logits), Categorical(logits=learner_logits)
    g, l = guider.log_prob(action), learner.log_prob(action)
    rule = GuidedClip(eps=0.2, delta=1.2, ent_coef=0.0)
    loss, metrics = rule.loss(evaluate_actions(guider, action, learner), SurrogateBatch(old_log_prob, advantage))
    p, q = guider.probs, learner.probs
    kl = (p * (p.log() - q.log())).sum(-1)
    mask = ((g - l).abs() >= math.log(1.2)).float()
    assert 0 < float(mask.mean()) < 1
    objective = guided_clip_objective(g, l.detach(), old_log_prob, advantage, 0.2, 1.2)
    assert torch.allclose(loss, -objective.mean() + (mask * kl).mean(), atol=1e-6)
    assert torch.allclose(metrics["mask_frac"], mask.mean())
    to_guider, to_learner = torch.autograd.grad(loss, [guider_logits, learner_logits], allow_unused=True)
    assert to_guider.abs().sum() > 0 and to_learner is None  # the learner is a constant in the guider's loss


@pytest.mark.parametrize("direction", ["guider_learner", "learner_guider"])
def test_learner_kl_term_matches_a_direct_computation(direction: str) -> None:
    guider_logits, learner_logits, action, old_log_prob, advantage = _categorical_batch(seed=2)
    guider, learner = Categorical(logits=guider_logits), Categorical(logits=learner_logits)
    rule = GuidedImitation(lam=0.0, kl_direction=direction)
    loss, metrics = rule.loss(evaluate_actions(learner, action, guider), SurrogateBatch(old_log_prob, advantage))
    p, q = torch.softmax(guider_logits, -1), torch.softmax(learner_logits, -1)
    direct = (p * (p.log() - q.log())).sum(-1) if direction == "guider_learner" else (q * (q.log() - p.log())).sum(-1)
    assert torch.allclose(loss, direct.mean(), atol=1e-6) and torch.allclose(metrics["imitation_kl"], direct.mean(), atol=1e-6)
    to_guider, to_learner = torch.autograd.grad(loss, [guider_logits, learner_logits], allow_unused=True)
    assert to_guider is None and to_learner.abs().sum() > 0  # the guider is a constant in the learner's loss


def test_learner_kl_between_gaussians_matches_the_closed_form() -> None:
    torch.manual_seed(3)
    mu_g, mu_l = torch.randn(10, 3, 2), torch.randn(10, 3, 2)
    s_g, s_l = torch.rand(10, 3, 2) + 0.5, torch.rand(10, 3, 2) + 0.5
    guider, learner = Independent(Normal(mu_g, s_g), 1), Independent(Normal(mu_l, s_l), 1)
    kl = GuidedImitation().imitation_kl(learner, guider)
    closed = (torch.log(s_l / s_g) + (s_g**2 + (mu_g - mu_l) ** 2) / (2 * s_l**2) - 0.5).sum(-1)
    assert torch.allclose(kl, closed, atol=1e-5)


def test_learner_loss_adds_lambda_times_ppo_against_the_behaviour() -> None:
    guider_logits, learner_logits, action, old_log_prob, advantage = _categorical_batch(seed=4)
    guider, learner = Categorical(logits=guider_logits), Categorical(logits=learner_logits)
    l = learner.log_prob(action)
    evaluation = evaluate_actions(learner, action, guider)
    data = SurrogateBatch(old_log_prob, advantage)
    loss, _ = GuidedImitation(lam=4.0, eps=0.1).loss(evaluation, data)
    pure, _ = GuidedImitation(lam=0.0).loss(evaluation, data)
    assert torch.allclose(loss - pure, -4.0 * clip_ppo_objective(l, old_log_prob, advantage, 0.1).mean(), atol=1e-6)


def test_delta_must_exceed_one() -> None:
    from hcmarl.errors import ConfigError

    with pytest.raises(ConfigError, match="delta"):
        GuidedClip(delta=1.0)
