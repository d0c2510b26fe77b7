"""Tests of the PPO-clip surrogate and ClipPPO constraint (ALGORITHMS.md section 1), and of the
optimiser plumbing it uses (``GradientStep``, ``minibatch_indices``).

The surrogate is checked against TorchRL's own ``ClipPPOLoss`` on the same batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss

from hcmarl.constraints import ClipPPO, Evaluation, SurrogateBatch, clip_ppo_objective, evaluate_actions
from hcmarl.errors import ConfigError
from hcmarl.modules import Learner
from hcmarl.nn import GRUActor
from hcmarl.optim import GradientStep, minibatch_indices, take_rows
from hcmarl.schedules import Simultaneous


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_clip_ppo_objective_matches_torchrl(eps: float) -> None:
    torch.manual_seed(0)
    B, D, K = 256, 4, 5
    linear = nn.Linear(D, K)
    actor = ProbabilisticActor(
        TensorDictModule(linear, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=Categorical,
        return_log_prob=True,
    )
    value = ValueOperator(nn.Linear(D, 1), in_keys=["observation"])
    loss_module = ClipPPOLoss(actor, value, clip_epsilon=eps, entropy_bonus=False, normalize_advantage=False)
    lp_key = loss_module.tensor_keys.sample_log_prob

    td = TensorDict({"observation": torch.randn(B, D)}, [B])
    with torch.no_grad():
        actor(td)  # samples action and stores the behaviour log-prob under lp_key
    old_log_prob = td.get(lp_key).clone()
    g = torch.Generator().manual_seed(1)
    advantage = torch.randn(B, 1, generator=g)
    td.set(loss_module.tensor_keys.advantage, advantage)
    td.set(loss_module.tensor_keys.value_target, torch.zeros(B, 1))
    td.exclude("logits", inplace=True)

    with torch.no_grad():  # move the policy so ratios leave the clip range on both sides
        linear.weight.add_(0.4 * torch.randn(linear.weight.shape, generator=g))
        linear.bias.add_(0.4 * torch.randn(linear.bias.shape, generator=g))

    new_log_prob = actor.get_dist(td.clone()).log_prob(td.get("action"))
    ratio = (new_log_prob - old_log_prob).exp().detach()
    adv = advantage.squeeze(-1)
    assert ((ratio > 1 + eps) & (adv > 0)).any() and ((ratio > 1 + eps) & (adv < 0)).any()
    assert ((ratio < 1 - eps) & (adv > 0)).any() and ((ratio < 1 - eps) & (adv < 0)).any()
    assert ((ratio > 1 - eps) & (ratio < 1 + eps)).any()

    torchrl_loss = loss_module(td.clone())["loss_objective"]
    ours = -clip_ppo_objective(new_log_prob, old_log_prob, adv, eps).mean()
    torch.testing.assert_close(ours, torchrl_loss, atol=1e-6, rtol=1e-5)

    # and the gradients with respect to the policy parameters agree
    grad_torchrl = torch.autograd.grad(torchrl_loss, [linear.weight, linear.bias])
    new_log_prob = actor.get_dist(td.clone()).log_prob(td.get("action"))
    ours = -clip_ppo_objective(new_log_prob, old_log_prob, adv, eps).mean()
    grad_ours = torch.autograd.grad(ours, [linear.weight, linear.bias])
    for a, b in zip(grad_ours, grad_torchrl, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_clip_ppo_objective_against_direct_formula() -> None:
    eps = 0.2
    log_prob = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 1.1]))
    old = torch.zeros(6)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    got = clip_ppo_objective(log_prob, old, adv, eps)
    rho = [1.5, 1.5, 0.5, 0.5, 1.1, 1.1]
    expected = [min(r * a, min(max(r, 1 - eps), 1 + eps) * a) for r, a in zip(rho, adv.tolist(), strict=True)]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_factor_multiplies_outside_the_clip() -> None:
    g = torch.Generator().manual_seed(2)
    B, N, eps = 64, 3, 0.2
    old = torch.randn(B, N, generator=g)
    log_prob = (old + 0.5 * torch.randn(B, N, generator=g)).requires_grad_()
    adv = torch.randn(B, N, generator=g)
    factor = torch.rand(B, 1, generator=g) * 3 + 0.1  # positive, often far from 1: never clipped

    plain = clip_ppo_objective(log_prob, old, adv, eps)
    weighted = clip_ppo_objective(log_prob, old, adv, eps, factor)
    torch.testing.assert_close(weighted, factor * plain, atol=1e-6, rtol=1e-6)

    (grad_plain,) = torch.autograd.grad(plain.sum(), log_prob)
    (grad_weighted,) = torch.autograd.grad(clip_ppo_objective(log_prob, old, adv, eps, factor).sum(), log_prob)
    torch.testing.assert_close(grad_weighted, factor * grad_plain, atol=1e-6, rtol=1e-6)
    # the clip is on rho alone: samples clipped without the factor have zero gradient with it too,
    # unclipped ones keep a nonzero gradient
    ratio = (log_prob - old).exp().detach()
    clipped = ((ratio > 1 + eps) & (adv > 0)) | ((ratio < 1 - eps) & (adv < 0))
    assert clipped.any() and (~clipped).any()
    assert torch.all(grad_weighted[clipped] == 0)
    assert torch.all(grad_weighted[~clipped] != 0)


def test_clip_ppo_update_moves_toy_policy() -> None:
    torch.manual_seed(0)
    B, N, K = 64, 2, 3
    logits = nn.Parameter(torch.zeros(N, K))
    actions = torch.randint(0, K, (B, N))
    old_log_prob = torch.full((B, N), -math.log(K))
    advantage = torch.where(actions == 0, 1.0, -1.0)

    def evaluate(idx: torch.Tensor) -> Evaluation:
        dist = Categorical(logits=logits.expand(idx.shape[0], N, K))
        return Evaluation(dist.log_prob(actions[idx]), dist.entropy(), dist)

    before = torch.softmax(logits.detach(), dim=-1)[:, 0].clone()
    step = GradientStep(torch.optim.Adam([logits], lr=0.05))
    metrics = ClipPPO(eps=0.2, epochs=5, minibatches=2, ent_coef=0.0).update(evaluate, SurrogateBatch(old_log_prob, advantage), step)
    after = torch.softmax(logits.detach(), dim=-1)[:, 0]
    assert torch.all(after > before + 0.01), (before, after)
    assert set(metrics) == {"policy_loss", "entropy", "clip_frac", "approx_kl"}
    for name, v in metrics.items():
        assert torch.is_tensor(v) and v.numel() == 1 and torch.isfinite(v).all(), name
        assert not v.requires_grad, name
    assert 0.0 <= metrics["clip_frac"].item() <= 1.0
    assert metrics["entropy"].item() == pytest.approx(math.log(K), abs=0.1)


@pytest.mark.parametrize("norm", ["batch", "minibatch"])
def test_clip_ppo_lanes_and_minibatch_advantage_norm(norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mava's rec_mappo/rec_ippo update: with ``lanes: 2`` every minibatch takes an equal share of both lanes (halves of
    the batch, one permutation), and with ``advantage_norm: minibatch`` each lane's part of it is normalised on its own."""
    torch.manual_seed(0)
    B, N, K = 12, 2, 3
    logits = nn.Parameter(torch.zeros(N, K))
    actions = torch.randint(0, K, (B, N))
    data = SurrogateBatch(torch.full((B, N), -math.log(K)), 3.0 * torch.randn(B, N) + 1.0)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    indices: list[torch.Tensor] = []
    loss = ClipPPO.loss

    def recorded_loss(self: ClipPPO, evaluation: Evaluation, minibatch: SurrogateBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seen.append((indices[-1], minibatch.advantage))
        return loss(self, evaluation, minibatch)

    def evaluate(idx: torch.Tensor) -> Evaluation:
        indices.append(idx)
        return evaluate_actions(Categorical(logits=logits.expand(idx.shape[0], N, K)), actions[idx])

    monkeypatch.setattr(ClipPPO, "loss", recorded_loss)
    rule = ClipPPO(epochs=2, minibatches=3, lanes=2, advantage_norm=norm)
    rule.update(evaluate, data, GradientStep(torch.optim.SGD([logits], lr=0.1)))
    assert len(seen) == 6
    for idx, advantage in seen:
        first, second = idx[:2], idx[2:]  # one piece of the permutation of a lane's 6 samples, taken from each lane
        assert bool((first < 6).all()) and torch.equal(second, first + 6)
        for part in (slice(0, 2), slice(2, 4)):
            a = data.advantage[idx[part]]
            expected = a if norm == "batch" else (a - a.mean()) / (a.std(correction=0) + 1e-8)
            torch.testing.assert_close(advantage[part], expected)


def test_learner_checks_its_clip_ppo_minibatches_per_lane() -> None:
    learner = Learner(GRUActor(), ClipPPO(minibatches=3, lanes=2), Simultaneous())
    with pytest.raises(ConfigError, match=r"constraint.init_args.minibatches=3 exceeds data.num_envs per lane \(2\)"):
        learner.check_batch(num_envs=4, frames_per_batch=4 * 8)
    with pytest.raises(ConfigError, match=r"constraint.init_args.lanes=2 does not divide data.num_envs=3"):
        learner.check_batch(num_envs=3, frames_per_batch=3 * 8)
    learner.check_batch(num_envs=6, frames_per_batch=6 * 8)


@pytest.mark.parametrize("batch_size,minibatches", [(10, 1), (10, 3), (10, 10), (7, 2)])
def test_minibatch_indices_partition(batch_size: int, minibatches: int) -> None:
    for _ in range(3):
        pieces = list(minibatch_indices(batch_size, minibatches, torch.device("cpu")))
        assert len(pieces) == minibatches
        assert all(p.numel() > 0 for p in pieces)
        assert max(p.numel() for p in pieces) - min(p.numel() for p in pieces) <= 1
        assert sorted(torch.cat(pieces).tolist()) == list(range(batch_size))


def test_take_rows_equals_indexing_with_nested_batch_dimensions() -> None:
    """``take_rows`` gives ``data[idx]`` exactly: a tensor, and a TensorDict whose nested TensorDict has an extra batch
    dimension (agents), with repeated and reordered rows."""
    g = torch.Generator().manual_seed(0)
    agents = TensorDict({"obs": torch.randn(9, 3, 4, generator=g), "mask": torch.rand(9, 3, 2, generator=g) > 0.5}, [9, 3])
    data = TensorDict({"state": torch.randn(9, 5, generator=g), "agents": agents}, [9])
    idx = torch.tensor([4, 0, 8, 4, 2])
    rows = take_rows(data, idx)
    expected = data[idx]
    assert rows.batch_size == (5,) and rows["agents"].batch_size == (5, 3)
    for key in [("state",), ("agents", "obs"), ("agents", "mask")]:
        assert torch.equal(rows[key], expected[key]), key
    assert torch.equal(take_rows(data["state"], idx), data["state"][idx])


@pytest.mark.parametrize("minibatches", [0, -1, 11])
def test_minibatch_indices_rejects_bad_counts(minibatches: int) -> None:
    with pytest.raises(ValueError):
        list(minibatch_indices(10, minibatches, torch.device("cpu")))


def _sgd_step(max_grad_norm: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    a = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    b = nn.Parameter(torch.tensor([[0.3, 0.1], [-0.4, 2.0]]))
    before = torch.cat([a.detach().flatten(), b.detach().flatten()]).clone()
    w_a, w_b = torch.tensor([3.0, -1.0, 2.0]), torch.tensor([[1.0, -4.0], [0.5, 2.0]])
    loss = (a * w_a).sum() + (b * w_b).sum()  # gradient = (w_a, w_b), norm ~ 5.9
    GradientStep(torch.optim.SGD([a, b], lr=1.0))(loss, max_grad_norm)
    after = torch.cat([a.detach().flatten(), b.detach().flatten()])
    return after - before, -torch.cat([w_a.flatten(), w_b.flatten()])


def test_gradient_step_clips_gradient_norm() -> None:
    step, full = _sgd_step(0.1)
    assert step.norm().item() <= 0.1 + 1e-6
    assert step.norm().item() == pytest.approx(0.1, rel=1e-3)  # clipped, not zeroed
    torch.testing.assert_close(step / step.norm(), full / full.norm(), atol=1e-5, rtol=1e-5)
    # without a clip (None or 0) the whole gradient is applied
    for no_clip in (None, 0.0):
        step, full = _sgd_step(no_clip)
        torch.testing.assert_close(step, full, atol=1e-6, rtol=1e-6)


def test_a2c_gradient_is_the_factor_weighted_policy_gradient() -> None:
    """Against the analytic gradient of log softmax: d log p(a) / d logits = onehot(a) - softmax."""
    from hcmarl.constraints import A2C

    torch.manual_seed(0)
    B, N, K = 32, 2, 4
    logits = nn.Parameter(torch.randn(N, K))
    actions = torch.randint(0, K, (B, N))
    advantage, factor = torch.randn(B, N), torch.rand(B, 1) + 0.5
    old_log_prob = torch.randn(B, N)  # A2C reads no ratio: a behaviour log-prob unlike the policy's changes nothing
    dist = Categorical(logits=logits.expand(B, N, K))
    loss = -A2C().objective(evaluate_actions(dist, actions), SurrogateBatch(old_log_prob, advantage, factor)).mean()
    (grad,) = torch.autograd.grad(loss, logits)
    onehot = torch.nn.functional.one_hot(actions, K).float()
    expected = -((factor * advantage).unsqueeze(-1) * (onehot - torch.softmax(logits.detach(), -1))).sum(0) / (B * N)
    torch.testing.assert_close(grad, expected)
