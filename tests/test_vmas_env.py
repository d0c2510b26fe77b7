"""Tests of the VMAS wrapper and ``make_env`` (DESIGN.md, "Conventions"; ALGORITHMS.md section 1).

References: TorchRL's ``check_env_specs``, the raw VMAS environment the wrapper holds
(its per-agent observations and action spaces), and the rules of the layout in
``hcmarl.envs.base``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.envs import make_env
from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, STATE
from hcmarl.errors import MissingDependencyError, UnknownEnvError
from hcmarl.nn.distributions import masked_categorical

HAS_VMAS = importlib.util.find_spec("vmas") is not None
requires_vmas = pytest.mark.skipif(not HAS_VMAS, reason="vmas is not installed")


def _zero_action(env, td):
    td[ACTION] = env.action_spec[ACTION].zero()
    return td


@requires_vmas
def test_balance_specs_and_info() -> None:
    env = make_env("vmas/balance", num_envs=4, seed=0)
    check_env_specs(env)
    info = env.info
    raw_obs_sizes = [space.shape[0] for space in env._env.observation_space.spaces]
    assert info.name == "vmas/balance"
    assert info.n_agents == len(env._env.agents) == 3  # VMAS's default for balance
    assert info.obs_dim == max(raw_obs_sizes)
    assert info.state_dim == info.n_agents * info.obs_dim
    assert info.action_kind == "continuous" and not info.categorical
    assert info.action_dim == 2
    td = env.reset()
    assert td.batch_size == (4,)
    assert td[OBSERVATION].shape == (4, info.n_agents, info.obs_dim)
    assert td[OBSERVATION].dtype == torch.float32
    assert td[STATE].shape == (4, info.state_dim)
    td = env.rand_step(td)
    assert td["next", "reward"].shape == (4, 1)
    for key in ("done", "terminated", "truncated"):
        assert td["next", key].shape == (4, 1) and td["next", key].dtype == torch.bool


@requires_vmas
def test_scenario_kwargs_reach_vmas() -> None:
    env = make_env("vmas/balance", num_envs=2, seed=0, n_agents=4)
    assert env.info.n_agents == 4
    assert env.reset()[OBSERVATION].shape[:2] == (2, 4)


@requires_vmas
def test_simple_spread_discrete_is_categorical() -> None:
    env = make_env("vmas/simple_spread", num_envs=2, seed=0, continuous_actions=False)
    info = env.info
    assert info.action_kind == "categorical" and info.categorical
    assert info.action_dim == int(env._env.action_space.spaces[0].n)
    assert not info.has_action_mask  # all agents have the same action count
    td = env.rand_step(env.reset())
    assert td[ACTION].dtype == torch.int64 and td[ACTION].shape == (2, info.n_agents)
    check_env_specs(env)


@requires_vmas
def test_time_limit_is_truncation_not_termination() -> None:
    env = make_env("vmas/balance", num_envs=3, seed=0, max_steps=5)
    td = env.reset()
    for t in range(5):
        td = env.step(_zero_action(env, td))
        done, terminated, truncated = (td["next", k] for k in ("done", "terminated", "truncated"))
        torch.testing.assert_close(done, terminated | truncated)
        if t < 4:
            assert not done.any(), t
        else:
            assert done.all() and truncated.all() and not terminated.any()
        td = step_mdp(td)


@requires_vmas
def test_partial_reset_restarts_only_chosen_envs() -> None:
    env = make_env("vmas/balance", num_envs=3, seed=0, max_steps=5)
    td = env.reset()
    for _ in range(3):
        td = step_mdp(env.step(_zero_action(env, td)))
    before = td[OBSERVATION].clone()
    td["_reset"] = torch.tensor([[True], [False], [False]])
    td = env.reset(td)
    assert not torch.allclose(td[OBSERVATION][0], before[0])
    torch.testing.assert_close(td[OBSERVATION][1:], before[1:])
    for _ in range(2):
        td = env.step(_zero_action(env, td))
        done = td["next", "done"].flatten()
        td = step_mdp(td)
    assert done.tolist() == [False, True, True]


@requires_vmas
def test_state_is_concatenation_of_padded_observations() -> None:
    env = make_env("vmas/simple_speaker_listener", num_envs=3, seed=0, continuous_actions=False)
    td = env.reset()
    raw = env._env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False, get_dones=False)[0]
    assert len({o.shape[-1] for o in raw}) > 1  # agents' observation sizes differ: padding matters
    D = env.info.obs_dim
    padded = [torch.cat([o, torch.zeros(o.shape[0], D - o.shape[-1])], dim=-1) for o in raw]
    torch.testing.assert_close(td[OBSERVATION], torch.stack(padded, dim=1))
    torch.testing.assert_close(td[STATE], torch.cat(padded, dim=-1))
    td[ACTION] = torch.zeros(3, env.info.n_agents, dtype=torch.int64)
    nxt = env.step(td)["next"]
    torch.testing.assert_close(nxt[STATE], nxt[OBSERVATION].reshape(3, -1))


def _speaker_listener(num_envs: int = 4):
    return make_env("vmas/simple_speaker_listener", num_envs=num_envs, seed=0, continuous_actions=False)


@requires_vmas
def test_speaker_listener_action_mask() -> None:
    env = _speaker_listener()
    own_counts = [int(space.n) for space in env._env.action_space.spaces]
    assert own_counts == [27, 9]
    info = env.info
    assert info.has_action_mask and info.action_dim == 27
    td = env.reset()
    mask = td[ACTION_MASK]
    assert mask.dtype == torch.bool and mask.shape == (4, 2, 27)
    assert mask.sum(-1).tolist() == [own_counts] * 4
    for i, n in enumerate(own_counts):  # the available actions are the first n
        assert mask[:, i, :n].all() and not mask[:, i, n:].any()


@requires_vmas
def test_speaker_listener_rollout_with_masked_random_policy() -> None:
    env = _speaker_listener()
    torch.manual_seed(0)

    def policy(td):
        mask = td[ACTION_MASK]
        td[ACTION] = masked_categorical(torch.zeros(mask.shape), mask).sample()
        return td

    rollout = env.rollout(12, policy=policy)
    assert rollout.batch_size == (4, 12)
    actions = rollout[ACTION]
    assert (actions[..., 1] < 9).all() and (actions[..., 0] < 27).all()
    assert (actions[..., 0] >= 9).any()  # the speaker does use its larger action set
    assert torch.isfinite(rollout["next", "reward"]).all()
    assert rollout["next", ACTION_MASK].sum(-1)[..., 1].eq(9).all()


@requires_vmas
def test_speaker_listener_action_spec_respects_mask() -> None:
    env = _speaker_listener()
    check_env_specs(env)
    td = env.reset()
    for _ in range(10):
        td = step_mdp(env.rand_step(td))


@requires_vmas
def test_unknown_env_names() -> None:
    with pytest.raises(UnknownEnvError) as err:
        make_env("vmas/nope")
    assert "nope" in str(err.value) and "vmas/balance" in str(err.value)
    for bad in ("nofamily/x", "balance", "vmas/"):
        with pytest.raises(UnknownEnvError) as err:
            make_env(bad)
        message = str(err.value)
        assert "vmas/balance" in message and "coordsum/3x10" in message, bad


def test_missing_vmas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "vmas" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as err:
        make_env("vmas/balance")
    assert "pip install 'hcmarl[vmas]'" in str(err.value)
    assert isinstance(err.value, ImportError)
