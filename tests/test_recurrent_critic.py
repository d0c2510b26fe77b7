"""The recurrent critics (``hcmarl.nn.recurrent_critics``): values replayed in training against those computed step by
step during the rollout, the state the behaviour policy advances, the layers by hand, the critic's loss weights, and
short training runs of the recurrent MAPPO and IPPO recipes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict, TensorDictBase
from test_cli import FRAMES_PER_ITERATION, logged, read_metrics
from torchrl.envs import TransformedEnv

from hcmarl import optim
from hcmarl.acting import behaviour_policy
from hcmarl.constraints import ClipPPO
from hcmarl.envs import make_env
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, CRITIC_RNN_STATE, STATE, VALUE_TARGET
from hcmarl.modules import Critic, Learner
from hcmarl.nn import CentralValue, GRUActor, MLPActor, RecurrentAgentValue, RecurrentCentralValue, ValueNetwork
from hcmarl.optim import GradientStep
from hcmarl.roles import Roles
from hcmarl.schedules import Simultaneous
from hcmarl.stages import CriticStage, IterationContext
from hcmarl.value_sources import CriticValues

NETWORKS = {
    "central": lambda: RecurrentCentralValue(hidden_size=16, post_hidden_sizes=[8], activation="relu"),
    "agent_shared": lambda: RecurrentAgentValue(hidden_size=16, post_hidden_sizes=[8], activation="relu", agent_id=True),
    "agent_separate": lambda: RecurrentAgentValue(hidden_size=16, share_params=False),
}


def env_for(network: ValueNetwork, num_envs: int = 4) -> TransformedEnv:
    """CoordSum 3x10 with episodes of 5 steps, with what ``network`` (built for it) needs of the env."""
    base = make_env("coordsum/3x10", num_envs=num_envs, seed=1, episode_length=5)
    network.build(base.info)
    env = TransformedEnv(base)
    for transform in Critic(network).env_transforms():
        env.append_transform(transform)
    return env


def random_action(td: TensorDictBase, n_actions: int) -> None:
    obs = td.get(("agents", "observation"))
    td.set(ACTION, torch.randint(0, n_actions, obs.shape[:-1]))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_replayed_values_equal_the_rollouts_step_by_step_values_across_resets(name: str) -> None:
    torch.manual_seed(0)
    network = NETWORKS[name]()
    env = env_for(network)
    n_actions = env.base_env.info.action_dim

    @torch.no_grad()
    def act(td: TensorDictBase) -> TensorDictBase:
        td.set("step_value", network.step(td))
        random_action(td, n_actions)
        return td

    rollout = env.rollout(13, act, break_when_any_done=False)  # episodes of 5 steps: resets inside
    assert rollout["is_init"][:, 1:].any()
    with torch.no_grad():  # the values the iteration's advantages read
        value, next_value = CriticValues(Critic(network, value_norm=False))(rollout)
    torch.testing.assert_close(value, rollout["step_value"], atol=1e-6, rtol=1e-6)
    # the next observation's value continues the episode's state: the next step's value unless the episode ended there
    done = rollout.get(("next", "done")).squeeze(-1)
    continuing = ~done[:, :-1]
    torch.testing.assert_close(next_value[:, :-1][continuing], rollout["step_value"][:, 1:][continuing], atol=1e-6, rtol=1e-6)
    # the bootstrap of the last step: one more step from the state the rollout ended in
    with torch.no_grad():
        bootstrap = network.step(rollout[:, -1].get("next").clone())
    torch.testing.assert_close(next_value[:, -1], bootstrap, atol=1e-6, rtol=1e-6)
    # a replay ignoring the resets differs
    no_reset = rollout.clone()
    no_reset["is_init"] = torch.zeros_like(no_reset["is_init"])
    with torch.no_grad():
        assert not torch.allclose(network(no_reset), rollout["step_value"], atol=1e-4)


@pytest.mark.parametrize("actor", [MLPActor(hidden_sizes=[8]), GRUActor(hidden_size=8)], ids=["mlp_actor", "gru_actor"])
def test_behaviour_policy_advances_the_critic_state(actor: MLPActor | GRUActor) -> None:
    """The rollout a learner collects stores the critic's state at every step, as replaying the rollout gives it."""
    torch.manual_seed(0)
    base = make_env("coordsum/3x10", num_envs=3, seed=2, episode_length=5)
    roles = Roles(Learner(actor, ClipPPO(), Simultaneous()), Critic(NETWORKS["central"]()))
    roles.build(base.info)
    env = TransformedEnv(base)
    for transform in roles.env_transforms():
        env.append_transform(transform)
    rollout = env.rollout(11, behaviour_policy(roles), break_when_any_done=False)
    network = roles.critic.network
    with torch.no_grad():
        replayed = network.replay(rollout)
    stored = rollout.get(("next", CRITIC_RNN_STATE))
    assert stored.abs().sum() > 0
    torch.testing.assert_close(stored, replayed, atol=1e-6, rtol=1e-6)


def test_layers_by_hand() -> None:
    """Mava's recurrent critic: [16] ReLU pre-torso, GRU, [8] ReLU post-torso, linear value head, on the global state."""
    torch.manual_seed(0)
    network = NETWORKS["central"]()
    env = env_for(network, num_envs=2)
    td = env.reset()
    td.set(CRITIC_RNN_STATE, torch.randn_like(td.get(CRITIC_RNN_STATE)))
    value = network.step(td)
    pre, post, head = network.encoder[0], network.net[0], network.net[2]
    x = torch.relu(td.get(STATE).unsqueeze(-2) @ pre.weight[0] + pre.bias[0])
    h = network.cell(x, td.get(CRITIC_RNN_STATE))
    by_hand = torch.relu(h @ post.weight[0] + post.bias[0]) @ head.weight[0] + head.bias[0]  # [2, 1, 1]
    torch.testing.assert_close(value, by_hand.squeeze(-1).expand(2, env.base_env.info.n_agents))
    torch.testing.assert_close(td.get(("next", CRITIC_RNN_STATE)), h)


def recorded_losses(
    vf_coef: float, value_loss_scale: float, network_factory: Callable[[], ValueNetwork]
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The losses a critic's update steps on (each minibatch's), and its metrics, from one seed."""
    torch.manual_seed(0)
    network = network_factory()
    env = env_for(network)
    critic = Critic(network, epochs=1, minibatches=2, loss="mse", value_norm=False, vf_coef=vf_coef, value_loss_scale=value_loss_scale)
    n_actions = env.base_env.info.action_dim

    @torch.no_grad()
    def act(td: TensorDictBase) -> TensorDictBase:
        critic.advance(td)
        random_action(td, n_actions)
        return td

    batch = env.rollout(8, act, break_when_any_done=False)
    batch.set(VALUE_TARGET, torch.randn(*batch.shape, 3))
    losses: list[torch.Tensor] = []

    def backward(loss: torch.Tensor) -> None:
        losses.append(loss.detach())
        loss.backward()

    metrics = critic.update(batch if critic.recurrent else batch.reshape(-1), GradientStep(critic.make_optimizer(), backward))
    return losses, metrics


@pytest.mark.parametrize("network", ["central", "mlp"])
def test_vf_coef_weights_the_loss_stepped_and_value_loss_scale_the_value_loss(network: str) -> None:
    factory: Callable[[], ValueNetwork] = NETWORKS["central"] if network == "central" else lambda: CentralValue(hidden_sizes=[8])
    plain_losses, plain = recorded_losses(1.0, 1.0, factory)
    weighted_losses, weighted = recorded_losses(0.5, 1.0, factory)
    scaled_losses, scaled = recorded_losses(1.0, 0.5, factory)
    assert len(plain_losses) == 2
    torch.testing.assert_close(weighted_losses[0], 0.5 * plain_losses[0])  # the step's loss is weighted (the clip follows)
    torch.testing.assert_close(weighted["value_loss"], plain["value_loss"])  # the value loss logged is not
    torch.testing.assert_close(scaled_losses[0], 0.5 * plain_losses[0])
    torch.testing.assert_close(scaled["value_loss"], 0.5 * plain["value_loss"])


def test_recurrent_critic_minibatches_are_env_rollouts_per_lane() -> None:
    roles = Roles(critic=Critic(NETWORKS["central"](), minibatches=5))  # what the module checks before training
    with pytest.raises(ConfigError, match=r"model.critic.init_args.minibatches=5 exceeds data.num_envs \(4\) \(a recurrent network's"):
        roles.check_batch(num_envs=4, frames_per_batch=4 * 128)
    Critic(CentralValue(), minibatches=5).check_batch(num_envs=4, frames_per_batch=4 * 128)  # a feed-forward critic's are frames
    with pytest.raises(ConfigError, match=r"model.critic.init_args.minibatches=3 exceeds data.num_envs per lane \(2\)"):
        Critic(NETWORKS["central"](), minibatches=3, lanes=2).check_batch(num_envs=4, frames_per_batch=4 * 128)
    with pytest.raises(ConfigError, match="model.critic.init_args.lanes=3 does not divide data.num_envs=4"):
        Critic(CentralValue(), lanes=3).check_batch(num_envs=4, frames_per_batch=4 * 128)


def test_critic_lanes_give_every_minibatch_an_equal_share_of_each_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lanes of 4 envs, 2 minibatches: each minibatch is 2 envs of the first lane and the same 2 of the second."""
    torch.manual_seed(0)
    network = NETWORKS["central"]()
    env = env_for(network, num_envs=8)
    critic = Critic(network, epochs=1, minibatches=2, value_norm=False, lanes=2)

    @torch.no_grad()
    def act(td: TensorDictBase) -> TensorDictBase:
        critic.advance(td)
        random_action(td, env.base_env.info.action_dim)
        return td

    batch = env.rollout(4, act, break_when_any_done=False)
    batch.set(VALUE_TARGET, torch.randn(*batch.shape, 3))
    pieces: list[torch.Tensor] = []
    real = optim.minibatch_indices

    def recording(*args: Any) -> Iterator[torch.Tensor]:
        for idx in real(*args):
            pieces.append(idx)
            yield idx

    monkeypatch.setattr(optim, "minibatch_indices", recording)
    critic.update(batch, GradientStep(critic.make_optimizer()))
    assert len(pieces) == 2
    for idx in pieces:
        assert bool((idx[:2] < 4).all()) and torch.equal(idx[2:], idx[:2] + 4)


@pytest.mark.parametrize(("name", "shape"), [("central", (4, 8)), ("mlp", (32,))])
def test_critic_stage_hands_a_recurrent_critic_env_rollouts(name: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """A recurrent critic trains on the rollout ``[envs, time]`` (its minibatches whole env rollouts), an MLP on frames."""
    critic = Critic(NETWORKS["central"]() if name == "central" else CentralValue())
    seen: list[torch.Size] = []
    monkeypatch.setattr(critic, "update", lambda batch, step: seen.append(batch.batch_size) or {})
    CriticStage(critic).run(IterationContext(TensorDict({}, batch_size=[4, 8]), {"critic": GradientStep(torch.optim.SGD([torch.zeros(1)]))}))
    assert seen == [torch.Size(shape)]


@pytest.mark.parametrize("name", ["rec_mappo/coordsum_3x10", "rec_ippo/coordsum_3x10"])
def test_recurrent_recipe_trains(name: str, run_cli, tmp_path: Path) -> None:
    run_cli(
        "fit",
        name,
        "--data.total_frames",
        str(2 * FRAMES_PER_ITERATION),
        "--data.eval_every",
        "1",
        "--data.protocol",
        "hcmarl",
        "--model.learner.init_args.constraint.init_args.minibatches",
        "2",
        "--model.critic.init_args.minibatches",
        "2",
    )
    (run_dir,) = run_dirs(tmp_path)
    value_losses = logged(read_metrics(run_dir), "critic/value_loss")
    assert len(value_losses) == 2 and all(math.isfinite(v) for v in value_losses)
    assert math.isfinite(final_eval(run_dir)["eval/return"])
