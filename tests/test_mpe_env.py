"""Tests of the PettingZoo MPE wrapper ``mpe/<scenario>`` (DESIGN.md, "Conventions"; ALGORITHMS.md section 1).

References: TorchRL's ``check_env_specs``; raw ``mpe2`` parallel envs built here, seeded and
driven with the same actions (their observations, ``state()`` and rewards); the rules of
the layout in ``hcmarl.envs.base``.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.envs import make_env
from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, STATE
from hcmarl.errors import ConfigError, MissingDependencyError, UnknownEnvError
from hcmarl.nn.distributions import masked_categorical

HAS_MPE2 = importlib.util.find_spec("mpe2") is not None
requires_mpe2 = pytest.mark.skipif(not HAS_MPE2, reason="mpe2 is not installed")
PAPER_SCENARIOS = ["simple_spread_v3", "simple_reference_v3", "simple_speaker_listener_v4"]


def _raw_envs(scenario: str, num_envs: int, seed: int, **kwargs) -> list:
    """Independent mpe2 parallel envs, env ``i`` reset with ``seed + i`` (the wrapper's seeding rule)."""
    module = importlib.import_module(f"mpe2.{scenario}")
    envs = [module.parallel_env(continuous_actions=False, **kwargs) for _ in range(num_envs)]
    first_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    return envs, first_obs


def _padded(observations: dict, agents: list[str], width: int) -> torch.Tensor:
    """One raw env's observations as ``[N, width]``, zero-padded."""
    out = torch.zeros(len(agents), width)
    for j, agent in enumerate(agents):
        out[j, : len(observations[agent])] = torch.as_tensor(observations[agent])
    return out


def _random_actions(env, generator: torch.Generator) -> torch.Tensor:
    """Uniform actions within each agent's own action count, ``[E, N]``."""
    counts = torch.tensor(env._act_sizes, dtype=torch.float32)
    uniform = torch.rand(env.batch_size[0], env.n_agents, generator=generator)
    return (uniform * counts).long()


@requires_mpe2
def test_simple_spread_specs_shapes_and_info() -> None:
    env = make_env("mpe/simple_spread_v3", num_envs=3, seed=0)
    check_env_specs(env)
    info = env.info
    from mpe2 import simple_spread_v3

    raw = simple_spread_v3.parallel_env()
    assert info.name == "mpe/simple_spread_v3"
    assert info.n_agents == len(raw.possible_agents) == 3
    assert info.obs_dim == raw.observation_space("agent_0").shape[0] == 18
    assert info.state_dim == raw.state_space.shape[0] == 54
    assert info.categorical and info.action_dim == raw.action_space("agent_0").n == 5
    assert info.max_steps == 25 and not info.has_action_mask and not info.has_win
    rollout = env.rollout(5)
    assert rollout.batch_size == (3, 5)
    assert rollout[OBSERVATION].shape == (3, 5, 3, 18) and rollout[OBSERVATION].dtype == torch.float32
    assert rollout[STATE].shape == (3, 5, 54) and rollout[STATE].dtype == torch.float32
    assert rollout[ACTION].shape == (3, 5, 3) and rollout[ACTION].dtype == torch.int64
    assert rollout["next", "reward"].shape == (3, 5, 1) and rollout["next", "reward"].dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert rollout["next", key].shape == (3, 5, 1) and rollout["next", key].dtype == torch.bool
    assert ACTION_MASK not in rollout.keys(include_nested=True)


@requires_mpe2
@pytest.mark.parametrize("scenario", PAPER_SCENARIOS)
def test_matches_raw_mpe2_for_same_seed_and_actions(scenario: str) -> None:
    E, steps = 3, 30  # past one 25-step episode: the auto-reset continues each env's own generator
    env = make_env(f"mpe/{scenario}", num_envs=E, seed=5)
    raw_envs, raw_obs = _raw_envs(scenario, E, seed=5)
    agents = list(raw_envs[0].possible_agents)
    generator = torch.Generator().manual_seed(0)
    td = env.reset()
    for t in range(steps):
        expected_obs = torch.stack([_padded(o, agents, env.info.obs_dim) for o in raw_obs])
        torch.testing.assert_close(td[OBSERVATION], expected_obs)
        torch.testing.assert_close(td[STATE], torch.stack([torch.as_tensor(r.state()) for r in raw_envs]))
        td[ACTION] = _random_actions(env, generator)
        td, td_next = env.step_and_maybe_reset(td)
        for i, raw in enumerate(raw_envs):
            obs, rewards, _, truncations, _ = raw.step({a: int(td[ACTION][i, j]) for j, a in enumerate(agents)})
            team = np.mean([rewards[a] for a in agents], dtype=np.float32)
            assert td["next", "reward"][i, 0].item() == pytest.approx(float(team), abs=1e-6), (t, i)
            assert td["next", "truncated"][i, 0].item() == any(truncations.values())
            raw_obs[i] = raw.reset()[0] if any(truncations.values()) else obs
        td = td_next


@requires_mpe2
def test_speaker_listener_padding_and_mask() -> None:
    env = make_env("mpe/simple_speaker_listener_v4", num_envs=4, seed=0)
    check_env_specs(env)
    assert env.agent_names == ["speaker_0", "listener_0"]
    assert env._obs_sizes == [3, 11] and env._act_sizes == [3, 5]
    info = env.info
    assert info.has_action_mask and info.obs_dim == 11 and info.action_dim == 5 and info.state_dim == 14
    td = env.reset()
    assert td[OBSERVATION].shape == (4, 2, 11)
    assert (td[OBSERVATION][:, 0, 3:] == 0).all()  # the speaker's padding
    assert td[OBSERVATION][:, 0, :3].ne(0).any(-1).all()  # its goal colour, before the padding
    mask = td[ACTION_MASK]
    assert mask.dtype == torch.bool and mask.shape == (4, 2, 5)
    assert mask[:, 0].tolist() == [[True, True, True, False, False]] * 4
    assert mask[:, 1].all()


@requires_mpe2
def test_masked_policy_never_picks_a_padded_action() -> None:
    env = make_env("mpe/simple_speaker_listener_v4", num_envs=4, seed=0)
    torch.manual_seed(0)

    def policy(td):
        mask = td[ACTION_MASK]
        td[ACTION] = masked_categorical(torch.zeros(mask.shape), mask).sample()
        return td

    rollout = env.rollout(100, policy=policy, break_when_any_done=False)
    speaker, listener = rollout[ACTION][..., 0], rollout[ACTION][..., 1]
    assert set(speaker.unique().tolist()) == {0, 1, 2}
    assert set(listener.unique().tolist()) == {0, 1, 2, 3, 4}
    assert rollout["next", ACTION_MASK].equal(rollout[ACTION_MASK])


@requires_mpe2
def test_padded_action_is_refused_with_a_clear_error() -> None:
    env = make_env("mpe/simple_speaker_listener_v4", num_envs=2, seed=0)
    td = env.reset()
    td[ACTION] = torch.tensor([[0, 0], [4, 0]])
    with pytest.raises(ValueError, match="env 1 gives agent 'speaker_0' action 4, outside its 3 actions"):
        env.step(td)


@requires_mpe2
def test_time_limit_is_truncation_not_termination() -> None:
    env = make_env("mpe/simple_spread_v3", num_envs=3, seed=0, max_cycles=5)
    assert env.info.max_steps == 5
    td = env.reset()
    for t in range(5):
        td = env.rand_step(td)
        done, terminated, truncated = (td["next", k] for k in ("done", "terminated", "truncated"))
        torch.testing.assert_close(done, terminated | truncated)
        assert not terminated.any(), t
        assert done.all() if t == 4 else not done.any(), t
        assert truncated.all() if t == 4 else not truncated.any(), t
        td = step_mdp(td)


@requires_mpe2
def test_partial_reset_restarts_only_chosen_envs() -> None:
    env = make_env("mpe/simple_spread_v3", num_envs=3, seed=0, max_cycles=5)
    td = env.reset()
    for _ in range(3):
        td = step_mdp(env.rand_step(td))
    before_obs, before_state = td[OBSERVATION].clone(), td[STATE].clone()
    td["_reset"] = torch.tensor([[True], [False], [False]])
    td = env.reset(td)
    assert not torch.allclose(td[OBSERVATION][0], before_obs[0])
    torch.testing.assert_close(td[OBSERVATION][1:], before_obs[1:])
    torch.testing.assert_close(td[STATE][1:], before_state[1:])
    torch.testing.assert_close(td[STATE][0], torch.as_tensor(env._envs[0].state()))
    for _ in range(2):
        td = env.rand_step(td)
        done = td["next", "done"].flatten()
        td = step_mdp(td)
    assert done.tolist() == [False, True, True]


@requires_mpe2
def test_episode_returns_with_random_policy() -> None:
    E = 16
    env = TransformedEnv(make_env("mpe/simple_spread_v3", num_envs=E, seed=0), RewardSum())
    torch.manual_seed(0)
    rollout = env.rollout(25)  # one full episode per env
    reward, done = rollout["next", "reward"], rollout["next", "done"]
    assert done[:, -1].all() and not done[:, :-1].any()
    returns = reward.sum(dim=1).squeeze(-1)
    torch.testing.assert_close(rollout["next", "episode_reward"][:, -1].squeeze(-1), returns)
    assert returns.unique().numel() == E  # every env plays its own episode
    # Random play on simple_spread (local_ratio 0.5, 25 steps): about -1 per step, never positive.
    assert (reward < 0).all()
    assert -60.0 < returns.mean().item() < -15.0


@requires_mpe2
def test_set_seed_repeats_the_first_episode_and_later_episodes_differ() -> None:
    env = make_env("mpe/simple_spread_v3", num_envs=2, seed=3, max_cycles=2)
    first = env.reset()[OBSERVATION]
    assert not torch.allclose(first[0], first[1])  # env i uses seed + i
    again = env.reset()[OBSERVATION]
    assert not torch.allclose(again, first)  # a later reset continues each env's generator
    env.set_seed(3)
    torch.testing.assert_close(env.reset()[OBSERVATION], first)


@requires_mpe2
def test_kwargs_reach_the_scenario_and_continuous_is_refused() -> None:
    env = make_env("mpe/simple_spread_v3", num_envs=2, seed=0, N=4)
    assert env.info.n_agents == 4 and env.reset()[OBSERVATION].shape == (2, 4, env.info.obs_dim)
    with pytest.raises(ConfigError, match="discrete actions only"):
        make_env("mpe/simple_spread_v3", continuous_actions=True)


@requires_mpe2
def test_unknown_and_competitive_scenarios_are_refused() -> None:
    for bad in ("mpe/nope", "mpe/simple_tag_v3", "mpe/simple_spread"):
        with pytest.raises(UnknownEnvError) as err:
            make_env(bad)
        message = str(err.value)
        assert bad in message
        assert all(f"mpe/{s}" in message for s in PAPER_SCENARIOS), bad


def test_missing_mpe2_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "mpe2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as err:
        make_env("mpe/simple_spread_v3")
    assert "pip install 'hcmarl[mpe]'" in str(err.value)
