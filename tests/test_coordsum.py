"""Tests of CoordSum (ALGORITHMS.md section 5) against a plain-Python reference of its rules.

Hand-made cases force the targets by writing the env's ``targets`` attribute (int64
``[E, T + 1]``, ``targets[:, t]`` is the target shown at step ``t``) right after a reset.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.envs.base import ACTION, OBSERVATION, REWARD, EnvInfo
from hcmarl.envs.coordsum import TASKS, CoordSumEnv


class ReferenceCoordSum:
    """One CoordSum game, written from the rules with Python ints and Counters."""

    def __init__(self, n_actions: int, one_row_per_target: bool, episode_length: int = 100) -> None:
        self.n_actions = n_actions
        self.one_row_per_target = one_row_per_target
        self.episode_length = episode_length
        self.memory: dict[int, Counter[int]] = {}
        self.steps = 0

    def step(self, target: int, actions: list[int]) -> tuple[float, bool]:
        bucket = target if self.one_row_per_target else min(target, self.n_actions - 1)
        history = self.memory.setdefault(bucket, Counter())
        if history:
            best = max(history.values())
            guess = min(a for a, c in history.items() if c == best)
        else:
            guess = 0
        if sum(actions) == target:
            reward = 2.0 if guess != actions[0] else 1.0
        else:
            reward = 0.0
        history[actions[0]] += 1
        self.steps += 1
        done = self.steps == self.episode_length
        if done:
            self.memory = {}
            self.steps = 0
        return reward, done


def _shown_targets(td: TensorDictBase) -> list[int]:
    obs = td[OBSERVATION]
    assert torch.equal(obs[:, :, 0], obs[:, :1, 0].expand_as(obs[:, :, 0])), "agents see different targets"
    return [int(x) for x in obs[:, 0, 0].tolist()]


def _coordinating_actions(rng: random.Random, target: int, n_agents: int, n_actions: int) -> list[int]:
    """Actions that often hit the target, with agent 0 drawn from a few values so memory matters."""
    a0 = rng.choice([0, 1, 1, 2, 2, 2])
    rest = [rng.randrange(n_actions) for _ in range(n_agents - 1)]
    if rng.random() < 0.6:
        remaining = target - a0
        for i in range(n_agents - 1):
            rest[i] = max(0, min(n_actions - 1, remaining))
            remaining -= rest[i]
    return [a0, *rest]


def _play(env: CoordSumEnv, td: TensorDictBase, actions: list[list[int]]) -> tuple[TensorDictBase, list[float]]:
    """One step with the given per-env actions; returns the next root tensordict and the rewards."""
    td.set(ACTION, torch.tensor(actions, dtype=torch.int64))
    td = env.step(td)
    rewards = td["next", REWARD].squeeze(-1).tolist()
    return step_mdp(td), rewards


def _forced(task: str, targets: list[list[int]], one_row_per_target: bool = False) -> tuple[CoordSumEnv, TensorDictBase]:
    """An env whose first targets are forced, one row of targets per env."""
    env = CoordSumEnv(task, num_envs=len(targets), seed=0, one_row_per_target=one_row_per_target)
    td = env.reset()
    for e, row in enumerate(targets):
        env.targets[e, : len(row)] = torch.tensor(row)
    return env, td


@pytest.mark.parametrize("task", sorted(TASKS))
def test_check_env_specs_every_task(task: str) -> None:
    env = CoordSumEnv(task, num_envs=3, seed=1)
    check_env_specs(env)
    n, k, _ = TASKS[task]
    assert env.full_observation_spec[OBSERVATION].shape == (3, n, 1 + n)
    assert env.full_observation_spec["state"].shape == (3, n * (1 + n))
    assert env.full_action_spec[ACTION].n == k


def test_info() -> None:
    env = CoordSumEnv("5x20", num_envs=2)
    assert env.info == EnvInfo(
        name="coordsum/5x20",
        n_agents=5,
        obs_dim=6,
        state_dim=30,
        action_kind="categorical",
        action_dim=20,
        max_steps=100,
        has_action_mask=False,
        has_win=False,
    )


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        CoordSumEnv("4x4")
    for name in TASKS:
        assert name in str(err.value)


def test_observation_layout() -> None:
    env = CoordSumEnv("3x30", num_envs=2, seed=3)
    td = env.reset()
    obs = td[OBSERVATION]
    assert obs.dtype == torch.float32
    assert torch.equal(obs[:, :, 1:], torch.eye(3).expand(2, 3, 3))
    assert torch.equal(obs[:, :, 0], env.targets[:, :1].float().expand(2, 3))
    assert torch.equal(td["state"], obs.reshape(2, 12))
    assert td["step_count"].tolist() == [[0], [0]]
    assert env.targets.shape == (2, 101)
    assert int(env.targets.min()) >= 0 and int(env.targets.max()) < 50


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")


@pytest.mark.parametrize(
    ("task", "one_row_per_target", "device"),
    [
        ("3x10", False, "cpu"),
        ("3x10", True, "cpu"),
        ("8x15", False, "cpu"),
        ("8x15", True, "cpu"),
        pytest.param("3x10", False, "cuda", marks=NEEDS_CUDA),
    ],
)
def test_matches_reference(task: str, one_row_per_target: bool, device: str) -> None:
    n, k, maxval = TASKS[task]
    num_envs, steps = 6, 250
    env = CoordSumEnv(task, num_envs=num_envs, seed=7, one_row_per_target=one_row_per_target, device=device)
    refs = [ReferenceCoordSum(k, one_row_per_target) for _ in range(num_envs)]
    rng = random.Random(11)
    td = env.reset()
    seen_rewards: Counter[float] = Counter()
    big_targets = 0
    for t in range(steps):
        targets = _shown_targets(td)
        assert all(0 <= x < maxval for x in targets)
        assert td["step_count"].squeeze(-1).tolist() == [t % 100] * num_envs
        big_targets += sum(x > k - 1 for x in targets)
        actions = [_coordinating_actions(rng, x, n, k) for x in targets]
        td.set(ACTION, torch.tensor(actions, dtype=torch.int64, device=device))
        td, td_next = env.step_and_maybe_reset(td)
        expected = [ref.step(x, a) for ref, x, a in zip(refs, targets, actions, strict=False)]
        assert td["next", REWARD].squeeze(-1).tolist() == [r for r, _ in expected], f"step {t}"
        assert td["next", "terminated"].squeeze(-1).tolist() == [d for _, d in expected]
        seen_rewards.update(r for r, _ in expected)
        td = td_next
    assert seen_rewards[1.0] > 20 and seen_rewards[2.0] > 20 and seen_rewards[0.0] > 20
    assert big_targets > 100


def test_empty_history_guesses_zero() -> None:
    env, td = _forced("3x10", [[5], [5]])
    _, rewards = _play(env, td, [[0, 2, 3], [1, 2, 2]])
    assert rewards == [1.0, 2.0]


def test_miss_scores_zero_but_is_remembered() -> None:
    env, td = _forced("3x10", [[5, 5], [5, 5]])
    td, rewards = _play(env, td, [[3, 0, 0], [3, 1, 1]])
    assert rewards == [0.0, 2.0]
    _, rewards = _play(env, td, [[3, 1, 1], [3, 1, 1]])
    assert rewards == [1.0, 1.0]


def test_tie_gives_lowest_action() -> None:
    env, td = _forced("3x10", [[8] * 5] * 3)
    for a0 in (7, 3, 7, 3):  # misses that fill the bucket of target 8: 3 and 7 tied
        td, rewards = _play(env, td, [[a0, 9, 9]] * 3)
        assert rewards == [0.0, 0.0, 0.0]
    _, rewards = _play(env, td, [[3, 5, 0], [7, 1, 0], [0, 8, 0]])
    assert rewards == [1.0, 2.0, 2.0]


def test_guess_is_most_frequent_action() -> None:
    env, td = _forced("3x10", [[8] * 4] * 2)
    for a0 in (3, 7, 7):
        td, _ = _play(env, td, [[a0, 9, 9]] * 2)
    _, rewards = _play(env, td, [[7, 1, 0], [3, 5, 0]])
    assert rewards == [1.0, 2.0]


@pytest.mark.parametrize("one_row_per_target", [False, True])
def test_bucket_rule(one_row_per_target: bool) -> None:
    # env 0: targets 12 then 20 (both >= K - 1 = 9); env 1: 9 then 22; env 2: 3 then 4
    env, td = _forced("3x10", [[12, 20], [9, 22], [3, 4]], one_row_per_target=one_row_per_target)
    td, rewards = _play(env, td, [[5, 5, 2], [4, 5, 0], [2, 1, 0]])
    assert rewards == [2.0, 2.0, 2.0]
    _, rewards = _play(env, td, [[5, 8, 7], [4, 9, 9], [2, 2, 0]])
    shared = 1.0 if not one_row_per_target else 2.0
    assert rewards == [shared, shared, 2.0]


def test_terminates_after_exactly_100_steps() -> None:
    env = CoordSumEnv("3x10", num_envs=3, seed=5)
    td = env.reset()
    for t in range(1, 101):
        td = env.rand_step(td)
        nxt = td["next"]
        assert nxt["step_count"].squeeze(-1).tolist() == [t] * 3
        assert nxt["terminated"].squeeze(-1).tolist() == [t == 100] * 3
        assert nxt["done"].squeeze(-1).tolist() == [t == 100] * 3
        assert not nxt["truncated"].any()
        td = step_mdp(td)


def test_rollout_through_auto_reset() -> None:
    env = CoordSumEnv("3x30", num_envs=4, seed=2)
    ro = env.rollout(250, break_when_any_done=False)
    assert ro.batch_size == (4, 250)
    done_at = ro["next", "done"].squeeze(-1)
    assert done_at[:, 99].all() and done_at[:, 199].all() and done_at.sum() == 8
    assert ro["step_count"][:, 100].eq(0).all() and ro["step_count"][:, 249].eq(49).all()
    shown = ro[OBSERVATION][:, :, 0, 0]
    assert torch.equal(shown[:, 200:], env.targets[:, :50].float())
    assert not torch.equal(shown[:, :100], shown[:, 100:200])


def test_partial_reset_touches_only_selected_envs() -> None:
    env = CoordSumEnv("3x10", num_envs=4, seed=9)
    td = env.reset()
    for _ in range(10):
        td = step_mdp(env.rand_step(td))
    targets, counts = env.targets.clone(), env.counts.clone()
    assert counts.sum() == 40
    mask = torch.tensor([[True], [False], [True], [False]])
    td["_reset"] = mask
    out = env.reset(td)
    keep, redo = [1, 3], [0, 2]
    assert out["step_count"].squeeze(-1).tolist() == [0, 10, 0, 10]
    assert torch.equal(env.targets[keep], targets[keep])
    assert torch.equal(env.counts[keep], counts[keep])
    assert not torch.equal(env.targets[redo], targets[redo])
    assert env.counts[redo].sum() == 0
    shown = env.targets[:, 0].where(mask.squeeze(-1), targets[:, 10]).float()
    assert torch.equal(out[OBSERVATION][:, 0, 0], shown)
    assert not out["done"].any()
    for _ in range(90):
        out = step_mdp(env.rand_step(out))
    assert out["step_count"].squeeze(-1).tolist() == [90, 100, 90, 100]


def test_seeding() -> None:
    torch.manual_seed(0)
    unseeded = [CoordSumEnv("3x10") for _ in range(2)]
    for env in unseeded:
        env.reset()
    assert not torch.equal(unseeded[0].targets, unseeded[1].targets)
    a = CoordSumEnv("3x10", num_envs=2, seed=4)
    b = CoordSumEnv("3x10", num_envs=2, seed=4)
    c = CoordSumEnv("3x10", num_envs=2, seed=5)
    a.reset(), b.reset(), c.reset()
    assert torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, c.targets)
    c.set_seed(4)
    c.reset()
    a.set_seed(4)
    a.reset()
    assert torch.equal(a.targets, c.targets)


def test_random_actions_score_low() -> None:
    env = CoordSumEnv("3x10", num_envs=64, seed=0)
    ro = env.rollout(100)
    assert ro["next", "terminated"][:, -1].all()
    returns = ro["next", REWARD].sum(dim=(1, 2))
    assert 0.0 < returns.mean().item() < 20.0
