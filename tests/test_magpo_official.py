"""MAGPO as the official code trains it (ALGORITHMS.md section 4; issue 22): a recurrent learner under the guider,
two-lane updates, a random agent order in the guider's teacher-forced pass, the official value loss and per-minibatch
advantage normalisation. Each against a direct reference; each default keeps hcmarl's earlier behaviour."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import TransformedEnv

from hcmarl.advantages import normalize_minibatch_advantage
from hcmarl.constraints import Evaluation, SurrogateBatch
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ACTION_MASK, ADVANTAGE, IS_INIT, LOG_PROB, OBSERVATION, RNN_STATE, VALUE_TARGET
from hcmarl.modules import Guider, Learner, MARLModule
from hcmarl.nn import GRUActor, MATGuider, MLPActor, SableGuider
from hcmarl.nn.distributions import detach_distribution
from hcmarl.nn.guider import permuted_forward
from hcmarl.optim import GradientStep, minibatch_indices
from hcmarl.schedules import Simultaneous
from hcmarl.stages import IterationContext, JointGuidedStage
from hcmarl.value_fit import ValueFit

ENV = "coordsum/3x10"


def _gru_learner() -> Learner:
    return Learner(GRUActor(hidden_size=16, share_params=True, agent_id=True), GuidedImitation(lam=1.0), Simultaneous(), lr=1e-3)


def _collect(module: MARLModule, num_envs: int, steps: int, rollouts: int, episode_length: int = 100) -> list[TensorDict]:
    env = make_env(ENV, num_envs=num_envs, seed=3, episode_length=episode_length)
    env = TransformedEnv(env)
    for transform in module.env_transforms():
        env.append_transform(transform)
    policy = module.behaviour_policy()
    collector = iter(
        Collector(env, policy, frames_per_batch=num_envs * steps, total_frames=-1, trust_policy=True, auto_register_policy_transforms=False)
    )
    out = []
    for _ in range(rollouts):
        policy.begin_rollout()
        out.append(next(collector))
    return out


# 1. the recurrent learner under a guider ---------------------------------------------------------------------------


@pytest.mark.parametrize("guider_network", ["mat", "sable"])
def test_the_learners_state_is_advanced_while_the_guider_acts(guider_network: str) -> None:
    """The stored learner state at the start of rollout 2 is the state the learner reaches running over rollout 1's
    observations from rollout 1's stored start state (the bug the official code fixed on 2026-07-27 left it at zero)."""
    torch.manual_seed(0)
    network = MATGuider(embed_dim=16) if guider_network == "mat" else SableGuider(embed_dim=16)
    module = MARLModule(learner=_gru_learner(), guider=Guider(network, GuidedClip(epochs=1, minibatches=2)))
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    first, second = _collect(module, num_envs=4, steps=6, rollouts=2)
    assert not bool(second.get(IS_INIT)[:, 0].any())
    actor = module.learner.actor
    h = first.get(RNN_STATE)[:, 0]
    states = []
    with torch.no_grad():
        for t in range(first.shape[1]):
            step = first[:, t]
            h = torch.where(step.get(IS_INIT).unsqueeze(-1), torch.zeros_like(h), h)
            states.append(h)
            h = actor.cell(actor.encode(step), h)
    torch.testing.assert_close(second.get(RNN_STATE)[:, 0], h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(first.get(RNN_STATE), torch.stack(states, dim=1), atol=1e-6, rtol=1e-5)
    assert h.abs().sum() > 0
    # the guider acted: its log-probs are stored, not the learner's
    module.compute_advantages(second)
    optimizers = {"guider": module.guider.make_optimizer(), "learner": module.learner.make_optimizer()}
    stage = JointGuidedStage(module.guider, module.learner, train_value=True)
    metrics = stage.run(IterationContext(second, {name: GradientStep(opt) for name, opt in optimizers.items()}))
    assert "learner/imitation_kl" in metrics and all(torch.isfinite(v) for v in metrics.values())


def test_the_recurrent_learner_is_trained_on_the_rollouts_sequences_from_its_stored_start_state() -> None:
    """In the joint loop the learner's minibatches are whole env rollouts: its log pi there equals a replay from the
    stored state (so the imitation KL before any step equals the one computed by hand)."""
    torch.manual_seed(0)
    module = MARLModule(learner=_gru_learner(), guider=Guider(MATGuider(embed_dim=16), GuidedClip(epochs=1, minibatches=1)))
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    _, batch = _collect(module, num_envs=4, steps=5, rollouts=2, episode_length=4)
    module.compute_advantages(batch)
    with torch.no_grad():
        guider_dist, _ = module.guider.network(batch)
        expected = module.learner.constraint.imitation_kl(module.learner.actor(batch), guider_dist).mean()
    optimizers = {"guider": module.guider.make_optimizer(), "learner": module.learner.make_optimizer()}
    stage = JointGuidedStage(module.guider, module.learner, train_value=True)
    metrics = stage.run(IterationContext(batch, {name: GradientStep(opt) for name, opt in optimizers.items()}))
    torch.testing.assert_close(metrics["learner/imitation_kl"], expected, atol=1e-6, rtol=1e-5)


def test_magpo_fits_with_a_gru_learner(run_cli, tmp_path) -> None:
    run_cli(
        "fit",
        "magpo/coordsum_3x10",
        "--model.learner.init_args.actor",
        "hcmarl.nn.GRUActor",
        "--model.learner.init_args.actor.init_args.hidden_size",
        "16",
        "--model.guider.init_args.constraint.init_args.minibatches",
        "2",
        "--model.guider.init_args.constraint.init_args.epochs",
        "1",
        "--data.num_envs",
        "4",
        "--data.rollout_steps",
        "8",
        "--data.total_frames",
        "64",
        "--data.eval_every",
        "1",
    )
    (run_dir,) = run_dirs(tmp_path)
    result = final_eval(run_dir)
    assert math.isfinite(result["eval/return"]) and math.isfinite(result["eval/guider/return"])


def test_a_recurrent_learners_minibatches_are_env_rollouts_per_lane() -> None:
    module = MARLModule(learner=_gru_learner(), guider=Guider(MATGuider(embed_dim=16), GuidedClip(minibatches=3, lanes=2)))
    with pytest.raises(ConfigError, match="minibatches=3 exceeds data.num_envs per lane"):
        module.roles.check_batch(4, 4 * 128)
    with pytest.raises(ConfigError, match="lanes=2 does not divide data.num_envs=5"):
        module.roles.check_batch(5, 5 * 128)


# 3. the random agent order of the teacher-forced pass -----------------------------------------------------------------


def _id_free_copy(network, info: EnvInfo, td: TensorDict):
    """The same weights reading the one-hot id from the observation (so permuting the agents of the input is the
    reference for decoding in that order), and ``td`` with the ids appended."""
    reference = copy.deepcopy(network)
    reference.agent_id = False
    obs = td.get(OBSERVATION)
    ids = torch.eye(info.n_agents).expand(*obs.shape[:-1], info.n_agents)
    return reference, td.clone().set(OBSERVATION, torch.cat([obs, ids], dim=-1))


def _permuted_agents(td: TensorDict, order: torch.Tensor, dims: int) -> TensorDict:
    out = td.clone()
    for key in (OBSERVATION, ACTION, ACTION_MASK):
        if key in td.keys(include_nested=True):
            out.set(key, td.get(key).index_select(dims, order))
    return out


def test_teacher_forced_log_probs_in_a_permuted_order_equal_an_autoregressive_pass_in_that_order() -> None:
    torch.manual_seed(0)
    info = make_env("coordsum/5x20", num_envs=1, seed=0).info
    network = MATGuider(embed_dim=16, n_blocks=2)
    network.build(info)
    n = info.n_agents
    td = TensorDict(
        {
            OBSERVATION: torch.randn(6, n, info.obs_dim),
            ACTION_MASK: torch.ones(6, n, info.action_dim, dtype=torch.bool),
            ACTION: torch.randint(info.action_dim, (6, n)),
        },
        batch_size=[6],
    )
    order = torch.tensor([3, 0, 4, 1, 2])
    dist, value = permuted_forward(network, td, None, order)
    log_prob = dist.log_prob(td.get(ACTION))
    # reference: agent order[k] decoded k-th, reading only the actions of agents order[:k]
    reference, with_ids = _id_free_copy(network, info, td)
    permuted = _permuted_agents(with_ids, order, 1)
    for k in range(n):
        scrambled = permuted.clone()
        scrambled.get(ACTION)[:, k:] = torch.randint(info.action_dim, (6, n - k))
        ref_dist, ref_value = reference(scrambled)
        agent = int(order[k])
        torch.testing.assert_close(log_prob[:, agent], ref_dist.log_prob(permuted.get(ACTION))[:, k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(value[:, agent], ref_value[:, k], atol=1e-6, rtol=1e-5)
    # a different order gives different conditionals; the identity order and None are the fixed order, unchanged
    fixed_dist, fixed_value = network(td)
    assert not torch.allclose(log_prob, fixed_dist.log_prob(td.get(ACTION)), atol=1e-4)
    for same in (None, torch.arange(n)):
        same_dist, same_value = permuted_forward(network, td, None, same)
        torch.testing.assert_close(same_dist.log_prob(td.get(ACTION)), fixed_dist.log_prob(td.get(ACTION)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(same_value, fixed_value, atol=1e-6, rtol=1e-5)


def test_sable_permuted_pass_equals_its_pass_over_permuted_agents() -> None:
    torch.manual_seed(0)
    module = MARLModule(learner=_gru_learner(), guider=Guider(SableGuider(embed_dim=16), GuidedClip()))
    info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    module.build(info)
    (batch,) = _collect(module, num_envs=3, steps=5, rollouts=1, episode_length=3)
    network = module.guider.network
    order = torch.tensor([2, 0, 1])
    dist, _ = permuted_forward(network, batch, None, order)
    reference, with_ids = _id_free_copy(network, info, batch)
    ref_dist, _ = reference(_permuted_agents(with_ids, order, 2))
    ref_log_prob = ref_dist.log_prob(batch.get(ACTION).index_select(2, order))
    torch.testing.assert_close(dist.log_prob(batch.get(ACTION)).index_select(2, order), ref_log_prob, atol=1e-5, rtol=1e-5)


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
    for norm in ("batch", "minibatch"):
        seen.clear()
        indices.clear()
        torch.manual_seed(0)
        module = MARLModule(learner=_mlp_learner(), guider=Guider(MATGuider(embed_dim=16), GuidedClip(epochs=1, minibatches=4, advantage_norm=norm)))
        module.build(make_env(ENV, num_envs=1, seed=0).info)
        batch = _rollout(module)
        module.compute_advantages(batch)
        flat_advantage = batch.reshape(-1).get(ADVANTAGE)
        _run_joint(module, batch)
        assert len(indices) == 4 and len(seen) == 8
        for k, idx in enumerate(indices):
            a = flat_advantage[idx]
            expected = a if norm == "batch" else (a - a.mean()) / (a.std(correction=0) + 1e-8)
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
