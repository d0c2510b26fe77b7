"""A2PO (ALGORITHMS.md section 1, "A2PO variant"): per-position clip range, preceding-ratio clip, semi-greedy order."""

from __future__ import annotations

import math

import pytest
import torch
from test_sequential import INFO, _batch

from hcmarl.constraints import A2POClip, ClipPPO, a2po_agent_eps, clip_ppo_objective, preceding_ratio_clip_objective
from hcmarl.errors import ConfigError
from hcmarl.keys import ADVANTAGE, VALUE
from hcmarl.modules import Learner
from hcmarl.nn import MLPActor
from hcmarl.optim import AgentAdam, GradientStep
from hcmarl.schedules import Sequential, semi_greedy_order, semi_greedy_scores


def test_agent_eps_grows_linearly_with_the_position() -> None:
    # eps_l = eps * (0.5 * l / N + 0.5), worked by hand for N = 4, eps = 0.2
    assert [a2po_agent_eps(0.2, l, 4) for l in (1, 2, 3, 4)] == pytest.approx([0.125, 0.15, 0.175, 0.2])
    assert a2po_agent_eps(0.3, 2, 3, weight=1.0) == pytest.approx(0.2)  # weight 1: eps * l / N
    assert a2po_agent_eps(0.3, 1, 3, weight=0.0) == pytest.approx(0.3)  # weight 0: every agent gets eps
    with pytest.raises(ValueError, match="position"):
        a2po_agent_eps(0.2, 0, 4)


def _reference_objective(log_prob: float, old: float, adv: float, eps: float, eps_others: float, factor: float) -> float:
    rho = math.exp(log_prob - old) * min(max(factor, 1 - eps_others), 1 + eps_others)
    return min(rho * adv, min(max(rho, 1 - eps), 1 + eps) * adv)


def test_preceding_ratio_clip_objective_matches_the_formula_sample_by_sample() -> None:
    torch.manual_seed(0)
    log_prob, old = torch.randn(200, 1) * 0.3, torch.randn(200, 1) * 0.3
    advantage = torch.randn(200, 1)
    factor = torch.rand(200, 1) * 1.2 + 0.4  # inside and outside [0.9, 1.1]
    got = preceding_ratio_clip_objective(log_prob, old, advantage, 0.15, 0.1, factor)
    expected = torch.tensor(
        [
            [_reference_objective(lp.item(), o.item(), a.item(), 0.15, 0.1, f.item())]
            for lp, o, a, f in zip(log_prob, old, advantage, factor, strict=True)
        ]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # no factor: plain PPO-clip; HAPPO multiplies its factor outside the clip, A2PO inside, so they differ
    torch.testing.assert_close(
        preceding_ratio_clip_objective(log_prob, old, advantage, 0.15, 0.1, None), clip_ppo_objective(log_prob, old, advantage, 0.15)
    )
    assert not torch.allclose(got, clip_ppo_objective(log_prob, old, advantage, 0.15, factor))


def test_at_position_sets_the_clip_range_without_compounding() -> None:
    constraint = A2POClip(eps=0.2)
    first = constraint.at_position(1, 4)
    assert first.eps == pytest.approx(0.125) and constraint.eps == 0.2
    assert first.at_position(4, 4).eps == pytest.approx(0.2)
    assert ClipPPO().at_position(1, 4).eps == 0.2  # other constraints are position-free


class RecordingA2PO(A2POClip):
    """A2POClip that records, per agent update, its clip range and the factor it was given."""

    def __init__(self) -> None:
        super().__init__(eps=0.2, eps_others=0.1, epochs=2, minibatches=2, ent_coef=0.0)
        self.seen: list[tuple[float, torch.Tensor]] = []  # shared with the copies at_position makes

    def update(self, evaluate, data, step):
        self.seen.append((self.eps, data.factor.clone()))
        return super().update(evaluate, data, step)


def test_sequential_gives_each_position_its_clip_range_and_the_unclipped_factor() -> None:
    batch, actor = _batch()
    constraint = RecordingA2PO()
    Sequential(order="fixed").update(actor, constraint, batch, GradientStep(AgentAdam(actor.parameters(), lr=3e-2)))
    assert [eps for eps, _ in constraint.seen] == pytest.approx([0.2 * (0.5 * l / 3 + 0.5) for l in (1, 2, 3)])
    with torch.no_grad():
        ratios = (actor(batch).log_prob(batch.get(("agents", "action"))) - batch.get(("agents", "log_prob"))).exp()
    torch.testing.assert_close(constraint.seen[2][1], ratios[:, :1] * ratios[:, 1:2])  # clipping happens inside the objective


def test_semi_greedy_scores_are_mean_abs_advantage_over_value() -> None:
    torch.manual_seed(0)
    advantage, value = torch.randn(6, 5, 3), torch.randn(6, 5, 3) + 3.0
    expected = torch.tensor([sum(abs(advantage[e, t, i] / value[e, t, i]) for e in range(6) for t in range(5)) / 30 for i in range(3)])
    torch.testing.assert_close(semi_greedy_scores(advantage, value), expected)


def test_semi_greedy_order_alternates_greedy_and_random_picks() -> None:
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    random_picks = set()
    for seed in range(40):
        torch.manual_seed(seed)
        order = semi_greedy_order(scores)
        assert sorted(order) == [0, 1, 2, 3, 4]
        for position in (0, 2, 4):  # greedy positions: the best of those not yet placed
            remaining = order[position:]
            assert order[position] == max(remaining, key=lambda agent: scores[agent])
        random_picks.add(order[1])
    assert len(random_picks) >= 3  # position 1 is drawn at random


def test_semi_greedy_order_through_the_learner_puts_the_highest_score_first() -> None:
    batch, _ = _batch()
    n = batch.shape[0]
    batch.set(ADVANTAGE, torch.randn(n, 3) * torch.tensor([0.1, 1.0, 0.3]))  # agent 1 has the largest |A/V|
    batch.set(VALUE, torch.ones(n, 3))
    learner = Learner(MLPActor(share_params=False), A2POClip(epochs=1), Sequential(order="semi_greedy"))
    learner.build(INFO)
    metrics = learner.update(batch, GradientStep(learner.make_optimizer()))
    assert metrics["position_agent1"] == 0
    batch.del_(VALUE)
    with pytest.raises(ConfigError, match="semi_greedy"):
        learner.update(batch, GradientStep(learner.make_optimizer()))
