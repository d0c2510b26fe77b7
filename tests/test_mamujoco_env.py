"""Tests of the MaMuJoCo wrapper (DESIGN.md, "Conventions" and "Scale"; ALGORITHMS.md section 1).

References: TorchRL's ``check_env_specs``; gymnasium-robotics' own ``mamujoco_v1.parallel_env``
(per-agent observation and action sizes, the global state, its action mapping); the same task
stepped in this process against the one stepped by worker processes.
"""

from __future__ import annotations

import importlib.util
import os
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torchrl.envs import RewardSum, TransformedEnv
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.envs import make_env, mamujoco
from hcmarl.envs.base import ACTION, OBSERVATION, STATE
from hcmarl.envs.mamujoco import tasks
from hcmarl.envs.mamujoco_workers import MaMuJoCoWorkerError
from hcmarl.errors import MissingDependencyError, UnknownEnvError
from hcmarl.keys import EPISODE_RETURN, REWARD

HAS_MAMUJOCO = importlib.util.find_spec("gymnasium_robotics") is not None
requires_mamujoco = pytest.mark.skipif(not HAS_MAMUJOCO, reason="gymnasium-robotics is not installed")


def _raw(robot: str, partition: str):
    """gymnasium-robotics' own env for a built-in task, the independent reference."""
    from gymnasium_robotics import mamujoco_v1

    return mamujoco_v1.parallel_env(robot, partition)


def _actions(env, t: int) -> torch.Tensor:
    """Deterministic actions for step ``t``, different per env, agent and action entry."""
    shape = env.action_spec[ACTION].shape
    return torch.sin(torch.arange(shape.numel(), dtype=torch.float32).reshape(shape) + 0.7 * t)


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging if the block takes longer than ``seconds``."""

    def fail(*_):
        raise TimeoutError(f"no answer within {seconds} s: the env hangs")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@requires_mamujoco
def test_halfcheetah_layout_matches_info_and_state() -> None:
    env = make_env("mamujoco/HalfCheetah-2x3", num_envs=2, seed=0)
    info = env.info
    raw = _raw("HalfCheetah", "2x3")
    assert (info.name, info.n_agents, info.action_kind, info.max_steps) == ("mamujoco/HalfCheetah-2x3", 2, "continuous", 1000)
    assert info.obs_dim == max(raw.observation_space(a).shape[0] for a in raw.possible_agents)
    assert info.action_dim == 3 and (info.action_low, info.action_high) == (-1.0, 1.0)
    assert info.state_dim == raw.state().shape[0] == 17
    check_env_specs(env)
    rollout = env.rollout(5)
    assert rollout.batch_size == (2, 5)
    assert rollout[OBSERVATION].shape == (2, 5, 2, info.obs_dim) and rollout[OBSERVATION].dtype == torch.float32
    assert rollout[ACTION].shape == (2, 5, 2, 3) and rollout[ACTION].dtype == torch.float32
    assert rollout[STATE].shape == (2, 5, info.state_dim) and rollout[STATE].dtype == torch.float32
    assert rollout["next", REWARD].shape == (2, 5, 1) and rollout["next", REWARD].dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert rollout["next", key].shape == (2, 5, 1) and rollout["next", key].dtype == torch.bool
    for i, sub in enumerate(env._batch.envs):  # the state is the robot's own state(), as float32
        np.testing.assert_allclose(rollout["next", STATE][i, -1].numpy(), sub.state().astype(np.float32))


@requires_mamujoco
def test_unequal_agents_are_padded() -> None:
    env = make_env("mamujoco/Humanoid-9|8", num_envs=2, seed=0)
    raw = _raw("Humanoid", "9|8")
    obs_sizes = [raw.observation_space(a).shape[0] for a in raw.possible_agents]
    act_sizes = [raw.action_space(a).shape[0] for a in raw.possible_agents]
    assert len(set(obs_sizes)) == 2 and act_sizes == [9, 8]
    assert env.info.obs_dim == max(obs_sizes) and env.info.action_dim == 9
    td = env.step(env.reset().set(ACTION, _actions(env, 0)))["next"]
    for e, sub in enumerate(env._batch.envs):
        for i, own in enumerate(sub._get_obs().values()):
            assert own.shape[0] == obs_sizes[i]
            np.testing.assert_allclose(td[OBSERVATION][e, i, : obs_sizes[i]].numpy(), own.astype(np.float32))
            assert not td[OBSERVATION][e, i, obs_sizes[i] :].any()


@requires_mamujoco
def test_padded_action_entries_are_ignored() -> None:
    envs = [make_env("mamujoco/Humanoid-9|8", num_envs=1, seed=3) for _ in range(2)]
    actions = _actions(envs[0], 0) * 0.3
    other = actions.clone()
    other[:, 1, 8] = 123.0  # agent 1 has 8 actions: entry 8 is padding
    outs = [env.step(env.reset().set(ACTION, a))["next"] for env, a in zip(envs, (actions, other), strict=False)]
    torch.testing.assert_close(outs[0][OBSERVATION], outs[1][OBSERVATION])
    torch.testing.assert_close(outs[0][REWARD], outs[1][REWARD])


@requires_mamujoco
def test_walker2d_6x1_has_one_joint_per_agent() -> None:
    env = make_env("mamujoco/Walker2d-6x1", num_envs=2, seed=0)
    assert env.info.n_agents == 6 and env.info.action_dim == 1
    assert env.info.state_dim == _raw("Walker2d", "2x3").state().shape[0]
    sub = env._batch.envs[0]
    assert [sub.action_space(a).shape[0] for a in sub.possible_agents] == [1] * 6
    global_action = sub.map_local_actions_to_global_action({a: np.array([float(i)]) for i, a in enumerate(sub.possible_agents)})
    np.testing.assert_array_equal(global_action, np.arange(6.0))  # agent i drives Walker2d's action i
    check_env_specs(env)


def _tendon_length_jacobian(model, data, tendon: int, h: float = 1e-6) -> np.ndarray:
    """d(tendon length)/dq by central differences (the reference; CoupledHalfCheetah's joints are hinges and slides, nq == nv)."""
    import mujoco

    probe, row = mujoco.MjData(model), np.zeros(model.nv)
    for j in range(model.nv):
        lengths = []
        for sign in (1.0, -1.0):
            probe.qpos[:] = data.qpos
            probe.qpos[j] += sign * h
            mujoco.mj_kinematics(model, probe)
            mujoco.mj_tendon(model, probe)
            lengths.append(probe.ten_length[tendon])
        row[j] = (lengths[0] - lengths[1]) / (2 * h)
    return row


@requires_mamujoco
def test_coupled_half_cheetah_reads_the_tendon_jacobian_densely() -> None:
    import mujoco

    from hcmarl.envs.coupled_half_cheetah import TENDON, tendon_jacobian_row

    env = make_env("mamujoco/CoupledHalfCheetah-1p1", num_envs=1, seed=0)
    assert (env.info.n_agents, env.info.action_dim, env.info.state_dim, env.info.max_steps) == (2, 6, 40, 1000)
    check_env_specs(env)
    td = env.reset()
    for t in range(4):
        td = step_mdp(env.step(td.set(ACTION, _actions(env, t))))
    sub = env._batch.envs[0]
    model, data = sub.single_agent_env.unwrapped.model, sub.single_agent_env.unwrapped.data
    probe = mujoco.MjData(model)  # the env's last state, its derived quantities recomputed at the final qpos
    probe.qpos[:], probe.qvel[:] = data.qpos, data.qvel
    mujoco.mj_forward(model, probe)
    row = tendon_jacobian_row(probe, TENDON)
    assert np.count_nonzero(np.abs(row) > 1e-3) == 4  # nonzero in the two cheetahs' root x and z columns only
    np.testing.assert_allclose(row, _tendon_length_jacobian(model, probe, TENDON), atol=1e-6)
    np.testing.assert_allclose(row @ probe.qvel, probe.ten_velocity[TENDON], rtol=1e-10)
    row = tendon_jacobian_row(data, TENDON)  # what the env observed (MuJoCo's values from the last step)
    observed = np.concatenate([row[:2], row[9:11]]).astype(np.float32)
    np.testing.assert_allclose(td[STATE][0, 34:38].numpy(), observed, rtol=1e-6)  # the state's entries 34-37
    for i, own in enumerate(sub._get_obs().values()):  # each agent's thigh node observes the same four entries
        np.testing.assert_allclose(td[OBSERVATION][0, i, : own.shape[0]].numpy(), own.astype(np.float32))
        assert any(np.allclose(own[k : k + 4], observed) for k in range(own.shape[0] - 3))


@requires_mamujoco
def test_time_limit_is_truncation_and_returns_are_summed() -> None:
    env = TransformedEnv(
        make_env("mamujoco/HalfCheetah-2x3", num_envs=2, seed=0, max_steps=5), RewardSum(in_keys=[REWARD], out_keys=[EPISODE_RETURN])
    )
    assert env.base_env.info.max_steps == 5
    rollout = env.rollout(5, policy=lambda td: td.set(ACTION, _actions(env, 0)))
    done, terminated, truncated = (rollout["next", k].squeeze(-1) for k in ("done", "terminated", "truncated"))
    assert not done[:, :4].any()
    assert done[:, 4].all() and truncated[:, 4].all() and not terminated.any()
    torch.testing.assert_close(rollout["next", EPISODE_RETURN][:, -1], rollout["next", REWARD].sum(dim=1))


@requires_mamujoco
def test_hopper_falling_is_termination_not_truncation() -> None:
    env = make_env("mamujoco/Hopper-3x1", num_envs=2, seed=0)
    td = env.reset()
    for t in range(200):
        td = env.step(td.set(ACTION, torch.ones_like(_actions(env, t))))
        if td["next", "done"].any():
            break
        td = step_mdp(td)
    assert td["next", "terminated"].any() and not td["next", "truncated"].any(), t


@requires_mamujoco
def test_seed_i_is_seed_plus_i() -> None:
    first = make_env("mamujoco/Ant-4x2", num_envs=2, seed=5).reset()
    again = make_env("mamujoco/Ant-4x2", num_envs=2, seed=5).reset()
    second = make_env("mamujoco/Ant-4x2", num_envs=1, seed=6).reset()
    torch.testing.assert_close(first[STATE], again[STATE])
    torch.testing.assert_close(first[STATE][1], second[STATE][0])
    assert not torch.equal(first[STATE][0], first[STATE][1])


@requires_mamujoco
def test_workers_give_the_same_data_as_one_process() -> None:
    kwargs = dict(num_envs=4, seed=0, max_steps=4)
    local = make_env("mamujoco/HalfCheetah-2x3", **kwargs)
    pooled = make_env("mamujoco/HalfCheetah-2x3", num_workers=2, **kwargs)
    try:
        with _deadline(60):
            check_env_specs(pooled)
            local.set_seed(0), pooled.set_seed(0)
            step = iter(range(100))
            policy = lambda env: lambda td: td.set(ACTION, _actions(env, next(step)))  # noqa: E731
            a = local.rollout(10, policy=policy(local), break_when_any_done=False)  # crosses two time limits
            step = iter(range(100))
            b = pooled.rollout(10, policy=policy(pooled), break_when_any_done=False)
        assert a["next", "truncated"].any()
        torch.testing.assert_close(a.exclude("agents"), b.exclude("agents"), rtol=0, atol=0)
        torch.testing.assert_close(a["next", OBSERVATION], b["next", OBSERVATION], rtol=0, atol=0)
    finally:
        pooled.close()


@requires_mamujoco
def test_failing_worker_raises_its_error() -> None:
    env = make_env("mamujoco/HalfCheetah-2x3", num_envs=2, seed=0, num_workers=2, ctrl_cost_weight="oops")
    with _deadline(60), pytest.raises(MaMuJoCoWorkerError, match="TypeError"):
        env.step(env.reset().set(ACTION, _actions(env, 0)))
    assert env._batch.processes == []  # the pool closed itself


@requires_mamujoco
def test_killed_worker_raises_instead_of_hanging() -> None:
    env = make_env("mamujoco/HalfCheetah-2x3", num_envs=2, seed=0, num_workers=2)
    td = env.reset()
    os.kill(env._batch.processes[1].pid, signal.SIGKILL)
    with _deadline(60), pytest.raises(MaMuJoCoWorkerError, match="worker 1 died"):
        env.step(td.set(ACTION, _actions(env, 0)))


@requires_mamujoco
def test_every_task_builds_and_steps() -> None:
    for task in tasks():
        env = make_env(f"mamujoco/{task}", num_envs=1, seed=0)
        td = env.rand_step(env.reset())
        assert td["next", OBSERVATION].shape == (1, env.info.n_agents, env.info.obs_dim), task
        assert torch.isfinite(td["next", STATE]).all(), task


@requires_mamujoco
def test_mujoco_log_stays_out_of_the_working_directory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mujoco

    mujoco.set_mju_user_warning(None)  # undo earlier tests: MuJoCo's default writes MUJOCO_LOG.TXT into the cwd
    monkeypatch.chdir(tmp_path)
    make_env("mamujoco/HalfCheetah-2x3", num_envs=1, seed=0)  # its model triggers a MuJoCo compiler warning
    assert list(tmp_path.iterdir()) == []


@requires_mamujoco
def test_unknown_tasks_list_the_known_ones() -> None:
    with pytest.raises(UnknownEnvError) as err:
        make_env("mamujoco/HalfCheetah-9x9")  # through make_env's own check (it lists every family's names)
    assert "mamujoco/HalfCheetah-2x3" in str(err.value) and "mamujoco/Walker2d-6x1" in str(err.value)
    for bad in ("Robot-2x3", "HalfCheetah", "Walker2d-6x2"):
        with pytest.raises(UnknownEnvError) as err:
            mamujoco.make(bad, num_envs=1, seed=0, device=torch.device("cpu"))
        assert "mamujoco/HalfCheetah-2x3" in str(err.value) and "mamujoco/Walker2d-6x1" in str(err.value), bad


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "gymnasium_robotics" else real_find_spec(name, *a, **k))
    with pytest.raises(MissingDependencyError) as err:
        make_env("mamujoco/HalfCheetah-2x3")
    assert "pip install 'hcmarl[mamujoco]'" in str(err.value)
