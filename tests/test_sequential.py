"""Sequential updates (ALGORITHMS.md section 1): the running factor, per-agent Adam, parameter layout."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from hcmarl.constraints import ClipPPO
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB
from hcmarl.modules import Learner
from hcmarl.nn import MLPActor
from hcmarl.optim import AgentAdam, GradientStep
from hcmarl.schedules import Sequential, Simultaneous, Upstream

INFO = EnvInfo(name="toy", n_agents=3, obs_dim=4, state_dim=12, action_kind="categorical", action_dim=5, max_steps=10)


def test_agent_adam_equals_adam_and_steps_one_agent_alone() -> None:
    torch.manual_seed(0)
    mine = torch.nn.Parameter(torch.randn(3, 4, 5))
    reference = torch.nn.Parameter(mine.detach().clone())
    agent_adam, adam = AgentAdam([mine], lr=1e-2), torch.optim.Adam([reference], lr=1e-2, eps=1e-5)
    for _ in range(6):
        grad = torch.randn(3, 4, 5)
        mine.grad, reference.grad = grad.clone(), grad.clone()
        agent_adam.step()
        adam.step()
    torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-5)
    before = mine.detach().clone()
    mine.grad = torch.randn(3, 4, 5)
    agent_adam.step(agent=1)
    assert torch.equal(before[0], mine[0]) and torch.equal(before[2], mine[2]) and not torch.equal(before[1], mine[1])


def _batch(n: int = 256) -> TensorDict:
    torch.manual_seed(1)
    actor = MLPActor(share_params=False)
    actor.build(INFO)
    obs = torch.randn(n, 3, 4)
    td = TensorDict({"agents": TensorDict({"observation": obs}, batch_size=(n, 3))}, batch_size=(n,))
    with torch.no_grad():
        dist = actor(td)
        action = dist.sample()
        td.set(ACTION, action)
        td.set(LOG_PROB, dist.log_prob(action))
    td.set(ADVANTAGE, torch.randn(n, 3))
    return td, actor


class RecordingClip(ClipPPO):
    """ClipPPO that remembers the factor each agent was given."""

    def __init__(self) -> None:
        super().__init__(eps=0.2, epochs=3, minibatches=2, ent_coef=0.0)
        self.factors: list[torch.Tensor] = []
        self.kl_weights: list[torch.Tensor | None] = []

    def update(self, evaluate, data, step):
        self.factors.append(data.factor.clone())
        self.kl_weights.append(data.kl_weight)
        return super().update(evaluate, data, step)


def test_factor_is_the_product_of_the_preceding_agents_ratios() -> None:
    batch, actor = _batch()
    schedule, constraint = Sequential(order="random"), RecordingClip()
    torch.manual_seed(5)
    order = Sequential(order="random").agent_order(batch)
    torch.manual_seed(5)
    metrics = schedule.update(actor, constraint, batch, GradientStep(AgentAdam(actor.parameters(), lr=3e-2)))
    with torch.no_grad():  # each agent's parameters moved only during its own update, so the final policy gives its ratio
        ratios = (actor(batch).log_prob(batch.get(ACTION)) - batch.get(LOG_PROB)).exp()
    expected = torch.ones(batch.shape[0], 1)
    for position, agent in enumerate(order):
        torch.testing.assert_close(constraint.factors[position], expected)
        assert metrics[f"position_agent{agent}"] == position
        expected = expected * ratios[:, agent : agent + 1]
    assert not torch.allclose(expected, torch.ones_like(expected))  # the agents did move
    torch.testing.assert_close(metrics["factor_mean"], expected.mean())


def test_fixed_order_and_external_initial_factor() -> None:
    batch, actor = _batch()
    initial = torch.rand(batch.shape[0], 1) + 0.5
    constraint = RecordingClip()
    Sequential(order="fixed").update(actor, constraint, batch, GradientStep(AgentAdam(actor.parameters(), lr=1e-2)), Upstream(factor=initial))
    torch.testing.assert_close(constraint.factors[0], initial)


def test_sequential_needs_an_agent_adam() -> None:
    batch, actor = _batch()
    with pytest.raises(TypeError, match="AgentAdam"):
        Sequential().update(actor, RecordingClip(), batch, GradientStep(torch.optim.Adam(actor.parameters())))


def test_sequential_with_shared_parameters_is_a_config_error() -> None:
    learner = Learner(MLPActor(share_params=True), ClipPPO(), Sequential())
    with pytest.raises(ConfigError, match="share_params=false"):
        learner.build(INFO)
    Learner(MLPActor(share_params=True), ClipPPO(), Simultaneous()).build(INFO)  # fine together
    sequential = Learner(MLPActor(share_params=False), ClipPPO(), Sequential())
    sequential.build(INFO)
    assert isinstance(sequential.make_optimizer(), AgentAdam)


def test_learner_update_passes_an_upstream_factor_to_the_schedule() -> None:
    """The learner selects the keys its update reads from the batch; an upstream role's factor, an argument of its
    update, must reach the schedule all the same."""
    batch, _ = _batch()
    initial = torch.rand(batch.shape[0], 1) + 0.5
    batch.set("unrelated", torch.zeros(batch.shape[0]))
    constraint = RecordingClip()
    learner = Learner(MLPActor(share_params=False), constraint, Sequential(order="fixed"))
    learner.build(INFO)
    learner.update(batch, GradientStep(learner.make_optimizer()), Upstream(factor=initial))
    torch.testing.assert_close(constraint.factors[0], initial)


def test_each_agent_gets_its_own_kl_weights() -> None:
    batch, actor = _batch()
    kl_weight = torch.rand(batch.shape[0], 3)
    constraint = RecordingClip()
    Sequential(order="fixed").update(actor, constraint, batch, GradientStep(AgentAdam(actor.parameters(), lr=1e-2)), Upstream(kl_weight=kl_weight))
    for agent, seen in enumerate(constraint.kl_weights):
        torch.testing.assert_close(seen, kl_weight[:, agent : agent + 1])
