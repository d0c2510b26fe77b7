"""MAGPO as the official code trains it (ALGORITHMS.md section 4; issue 22): a recurrent learner under the guider and
a random agent order in the guider's teacher-forced pass, each against a direct reference. The joint loop's settings
(the agent order per epoch, the official value loss, per-minibatch advantages, two lanes) are tested in
tests/test_magpo_official_updates.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import Compose, TransformedEnv

from hcmarl.datamodules.episodes import rollout_first_episodes
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ACTION_MASK, IS_INIT, OBSERVATION, RNN_STATE
from hcmarl.modules import Guider, Learner, MARLModule
from hcmarl.nn import GRUActor, MATGuider, SableGuider
from hcmarl.nn.guider import permuted_forward
from hcmarl.optim import GradientStep
from hcmarl.schedules import Simultaneous
from hcmarl.stages import IterationContext, JointGuidedStage

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


def test_the_recurrent_learner_is_evaluated_recurrently() -> None:
    """Evaluation (the deployment policy on the evaluation env, ``rollout_first_episodes`` cut into chunks) carries the
    learner's hidden state from step to step and across chunks, zeroed at each episode start: the state each step
    reads is the GRU run by hand over the episode's observations, and each greedy action is the argmax of the head on
    the state after it."""
    torch.manual_seed(0)
    module = MARLModule(learner=_gru_learner(), guider=Guider(MATGuider(embed_dim=16), GuidedClip(epochs=1, minibatches=1)))
    env = make_env(ENV, num_envs=3, seed=2, episode_length=3)
    module.build(env.info)
    env = TransformedEnv(env, Compose(*module.env_transforms()))
    with torch.no_grad():
        rollout = rollout_first_episodes(env, module.deployment_policy(deterministic=True), max_steps=8, chunk=2)
    assert rollout.shape[1] == 4 and bool(rollout.get(IS_INIT)[:, 3].all())  # a chunk ends at step 1, an episode at step 2
    actor = module.learner.actor
    h = torch.zeros_like(rollout.get(RNN_STATE)[:, 0])
    with torch.no_grad():
        for t in range(rollout.shape[1]):
            step = rollout[:, t]
            h = torch.where(step.get(IS_INIT).unsqueeze(-1), torch.zeros_like(h), h)
            torch.testing.assert_close(step.get(RNN_STATE), h, atol=1e-6, rtol=1e-5)
            h = actor.cell(actor.encode(step), h)
            assert torch.equal(step.get(ACTION), actor.head(h).argmax(-1))
    assert bool((rollout.get(RNN_STATE)[:, 1:3].abs().sum(-1) > 0).all())


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
