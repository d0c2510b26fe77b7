"""MAGPO's joint update as the official code runs it (ALGORITHMS.md section 4; issue 22): one agent order per epoch
of the guider's teacher-forced pass, the official value loss, per-minibatch advantage normalisation and two-lane
updates. Each against a direct reference; each default keeps hcmarl's earlier behaviour."""

from __future__ import annotations

import copy
import math

import torch
from tensordict import TensorDict

from hcmarl.advantages import normalize_minibatch_advantage
from hcmarl.constraints import Evaluation, SurrogateBatch
from hcmarl.envs import make_env
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB, VALUE_TARGET
from hcmarl.modules import Guider, Learner, MARLModule
from hcmarl.nn import MATGuider, MLPActor
from hcmarl.nn.distributions import detach_distribution
from hcmarl.nn.guider import permuted_forward
from hcmarl.optim import GradientStep, minibatch_indices
from hcmarl.schedules import Simultaneous
from hcmarl.stages import IterationContext, JointGuidedStage
from hcmarl.value_fit import ValueFit

ENV = "coordsum/3x10"


def test_the_joint_loop_draws_one_agent_order_per_epoch(monkeypatch) -> None:
    import hcmarl.stages as stages

    orders = []

    def recording(network, td, state, order):
        orders.append(order)
        return permuted_forward(network, td, state, order)

    monkeypatch.setattr(stages, "permuted_forward", recording)
    for agent_order, expected_draws in (("fixed", 0), ("random", 3)):
        orders.clear()
        torch.manual_seed(0)
        module = MARLModule(
            learner=_mlp_learner(), guider=Guider(MATGuider(embed_dim=16), GuidedClip(epochs=3, minibatches=2, agent_order=agent_order))
        )
        module.build(make_env(ENV, num_envs=1, seed=0).info)
        batch = _rollout(module)
        module.compute_advantages(batch)
        _run_joint(module, batch)
        assert len(orders) == 6
        if expected_draws == 0:
            assert all(order is None for order in orders)
        else:
            assert all(orders[2 * e] is orders[2 * e + 1] for e in range(3))
            assert all(sorted(order.tolist()) == [0, 1, 2] for order in orders)


# 4. the official value loss -------------------------------------------------------------------------------------------


def test_official_value_loss_is_half_the_pessimistic_clipped_mse_on_raw_returns() -> None:
    guider = Guider(MATGuider(), GuidedClip(), value_loss="mse", clip_value=0.2, value_norm=False, value_loss_scale=0.5)
    fit = guider.value_fit
    assert fit == ValueFit("mse", 10.0, 0.2, None, 0.5)
    returns = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    old = torch.tensor([[0.5, 2.5], [0.1, -1.0], [2.0, 3.5]])
    new = torch.tensor([[1.5, 2.0], [-0.3, -0.9], [2.1, 2.6]])
    targets = fit.targets(returns, lambda: old)
    loss = fit.minibatch_loss(new, targets, torch.arange(3))
    # by hand, element by element: V_clip = V_old + clip(V - V_old, -0.2, 0.2)
    clipped = [[0.7, 2.3], [-0.1, -0.9], [2.1, 3.3]]
    hand = 0.0
    for i in range(3):
        for j in range(2):
            r, v, vc = returns[i, j].item(), new[i, j].item(), clipped[i][j]
            hand += 0.5 * max((v - r) ** 2, (vc - r) ** 2)
    torch.testing.assert_close(loss, torch.tensor(hand / 6), atol=1e-6, rtol=1e-6)
    # hcmarl's default is unchanged: Huber on ValueNorm-ed returns, no clip, no scale
    default = Guider(MATGuider(), GuidedClip()).value_fit
    assert (default.loss, default.clip_value, default.scale) == ("huber", None, 1.0) and default.value_norm is not None


# 5. per-minibatch advantage normalisation -----------------------------------------------------------------------------


def test_minibatch_advantage_normalisation_by_hand() -> None:
    a = torch.tensor([[1.0, 3.0], [2.0, 6.0]])
    mean = 3.0
    std = math.sqrt(((1 - 3) ** 2 + 0 + (2 - 3) ** 2 + (6 - 3) ** 2) / 4)
    torch.testing.assert_close(normalize_minibatch_advantage(a), (a - mean) / (std + 1e-8))
    lanes = normalize_minibatch_advantage(a, lanes=2)  # each row its own lane
    torch.testing.assert_close(lanes, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]), atol=1e-6, rtol=0)


def test_the_joint_loop_normalises_each_minibatchs_advantages(monkeypatch) -> None:
    """With ``advantage_norm: minibatch`` both losses see each minibatch's advantages normalised, each lane's rows on
    their own; with ``batch`` they see them as the batch left them."""
    seen: list[tuple[str, torch.Tensor]] = []
    guided_loss, imitation_loss = GuidedClip.loss, GuidedImitation.loss

    def record(name, loss):
        def wrapped(self, evaluation, data):
            seen.append((name, data.advantage))
            return loss(self, evaluation, data)

        return wrapped

    monkeypatch.setattr(GuidedClip, "loss", record("guider", guided_loss))
    monkeypatch.setattr(GuidedImitation, "loss", record("learner", imitation_loss))
    indices = []
    real_indices = minibatch_indices

    def recording_indices(*args):
        for idx in real_indices(*args):
            indices.append(idx)
            yield idx

    import hcmarl.optim as optim

    monkeypatch.setattr(optim, "minibatch_indices", recording_indices)

    def normalised(a: torch.Tensor) -> torch.Tensor:
        return (a - a.mean()) / (a.std(correction=0) + 1e-8)

    for norm, lanes in (("batch", 1), ("minibatch", 1), ("minibatch", 2)):
        seen.clear()
        indices.clear()
        torch.manual_seed(0)
        constraint = GuidedClip(epochs=1, minibatches=4, advantage_norm=norm, lanes=lanes)
        module = MARLModule(learner=_mlp_learner(), guider=Guider(MATGuider(embed_dim=16), constraint))
        module.build(make_env(ENV, num_envs=1, seed=0).info)
        batch = _rollout(module)
        module.compute_advantages(batch)
        flat_advantage = batch.reshape(-1).get(ADVANTAGE)
        _run_joint(module, batch)
        assert len(indices) == 4 and len(seen) == 8
        for k, idx in enumerate(indices):
            a = flat_advantage[idx]
            expected = a if norm == "batch" else torch.cat([normalised(lane) for lane in a.chunk(lanes)])  # each lane's rows alone
            for name, advantage in seen[2 * k : 2 * k + 2]:
                torch.testing.assert_close(advantage, expected, atol=1e-6, rtol=1e-6, msg=name)


# 2. two-lane updates --------------------------------------------------------------------------------------------------


def test_lane_minibatches_take_the_same_share_of_every_lane() -> None:
    pieces = list(minibatch_indices(12, 2, torch.device("cpu"), lanes=2))
    assert [len(p) for p in pieces] == [6, 6]
    for piece in pieces:
        first, second = piece[:3], piece[3:]
        assert bool((first < 6).all()) and torch.equal(second, first + 6)
    assert sorted(torch.cat(pieces).tolist()) == list(range(12))
    # one lane: the same draws as before
    torch.manual_seed(5)
    default = list(minibatch_indices(10, 3, torch.device("cpu")))
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(default, torch.randperm(10).tensor_split(3), strict=True))


def test_two_lane_update_averages_the_lanes_gradients() -> None:
    """One minibatch of two lanes equals: each lane's guider and learner losses on its own half (advantages normalised
    per lane), their gradients averaged, one clip, one Adam step (as rec_magpo.py's pmean over ``batch``)."""
    official = {"value_loss": "mse", "clip_value": 0.2, "value_norm": False, "value_loss_scale": 0.5}
    torch.manual_seed(0)
    rule = GuidedClip(eps=0.2, delta=1.3, epochs=1, minibatches=1, advantage_norm="minibatch", lanes=2, max_grad_norm=0.5)
    module = MARLModule(learner=_mlp_learner(), guider=Guider(MATGuider(embed_dim=16), rule, lr=1e-3, **official))
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    batch = _rollout(module)
    module.compute_advantages(batch)
    guider, learner = copy.deepcopy(module.guider), copy.deepcopy(module.learner)
    g_opt, l_opt = guider.make_optimizer(), learner.make_optimizer()
    flat = batch.reshape(-1)
    half = flat.shape[0] // 2
    with torch.no_grad():
        old_value = guider.network(flat)[1]
    guider_grads = [torch.zeros_like(p) for p in guider.parameters()]
    learner_grads = [torch.zeros_like(p) for p in learner.parameters()]
    for lane in (slice(0, half), slice(half, None)):
        part = flat[lane]
        action, adv = part.get(ACTION), part.get(ADVANTAGE)
        adv = (adv - adv.mean()) / (adv.std(correction=0) + 1e-8)
        data = SurrogateBatch(part.get(LOG_PROB), adv)
        dist, value = guider.network(part)
        learner_dist = learner.actor(part)
        learner_log_prob = learner_dist.log_prob(action)
        g_eval = Evaluation(dist.log_prob(action), dist.entropy(), dist, detach_distribution(learner_dist), learner_log_prob.detach())
        loss, _ = guider.constraint.loss(g_eval, data)
        returns, old = part.get(VALUE_TARGET), old_value[lane]
        clipped = old + (value - old).clamp(-0.2, 0.2)
        value_loss = 0.5 * torch.max((value - returns) ** 2, (clipped - returns) ** 2).mean()
        loss = loss + guider.vf_coef * value_loss
        for acc, grad in zip(guider_grads, torch.autograd.grad(loss, list(guider.parameters()), allow_unused=True), strict=True):
            if grad is not None:
                acc += grad / 2
        l_eval = Evaluation(learner_log_prob, learner_dist.entropy(), learner_dist, detach_distribution(dist))
        l_loss, _ = learner.constraint.loss(l_eval, data)
        for acc, grad in zip(learner_grads, torch.autograd.grad(l_loss, list(learner.parameters()), allow_unused=True), strict=True):
            if grad is not None:
                acc += grad / 2
    for params, grads, opt, norm in ((guider, guider_grads, g_opt, 0.5), (learner, learner_grads, l_opt, 0.5)):
        for p, g in zip(params.parameters(), grads, strict=True):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(list(params.parameters()), norm)
        opt.step()
    _run_joint(module, batch)
    for name, value in module.guider.state_dict().items():
        torch.testing.assert_close(value, guider.state_dict()[name], atol=1e-6, rtol=1e-5, msg=name)
    for name, value in module.learner.state_dict().items():
        torch.testing.assert_close(value, learner.state_dict()[name], atol=1e-6, rtol=1e-5, msg=name)


# helpers ------------------------------------------------------------------------------------------------------------


def _mlp_learner() -> Learner:
    return Learner(MLPActor(share_params=True, agent_id=True), GuidedImitation(lam=1.0), Simultaneous(), lr=1e-3)


def _rollout(module: MARLModule, steps: int = 8) -> TensorDict:
    torch.manual_seed(1)
    return make_env(ENV, num_envs=4, seed=3).rollout(steps, module.behaviour_policy(), break_when_any_done=False)


def _run_joint(module: MARLModule, batch: TensorDict) -> dict[str, torch.Tensor]:
    optimizers = {"guider": module.guider.make_optimizer(), "learner": module.learner.make_optimizer()}
    stage = JointGuidedStage(module.guider, module.learner, train_value=True)
    return stage.run(IterationContext(batch, {name: GradientStep(opt) for name, opt in optimizers.items()}))
