"""Tests of the jumanji families ``rware/<task>``, ``lbf/<task>`` and ``connector/<task>`` (``hcmarl.envs.jumanji_batched``).

Reference: jumanji's own ``reset`` and ``step``, called env by env on the same keys and actions, with the layout
rebuilt here from jumanji's outputs (per-agent views flattened, Connector's per-agent perspective by a plain loop
over the grid, team reward the sum over agents, jumanji's own termination and truncation with RWARE's time limit
named a truncation). The task lists are checked against the MAGPO paper's ``tasks.csv``. One small batch per
family, with a short time limit so that every episode ends inside the rollout; compiling is most of the time.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import assert_fast_reset_equals_generic
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.envs import connector, lbf, make_env, rware
from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE
from hcmarl.errors import ConfigError, MissingDependencyError
from hcmarl.recipes import RECIPES_DIR

TASKS_CSV = RECIPES_DIR.parent.parent / "shared" / "reference" / "magpo" / "tasks.csv"
"""``../shared/reference/magpo/tasks.csv`` beside the repository root: the paper's tasks (liyheng/MAGPO scenario configs)."""
ENV_IDS = {"rware": "RobotWarehouse-v0", "lbf": "LevelBasedForaging-v0", "connector": "Connector-v2"}
MODULES = {"rware": rware, "lbf": lbf, "connector": connector}

HAS_JUMANJI = importlib.util.find_spec("jumanji") is not None
requires_jumanji = pytest.mark.skipif(not HAS_JUMANJI, reason="jumanji is not installed (pip install 'hcmarl[jumanji]')")

E, STEPS, SEED = 3, 24, 5
CASES = {  # family: (task, time limit short enough for every episode to end inside STEPS)
    "rware": ("tiny-2ag", 10),
    "lbf": ("2s-8x8-2p-2f-coop", 10),
    "connector": ("con-5x5x3a", 8),
}


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """Compile with XLA's optimisations off while this module runs: compiling is most of its time, and the
    results are the same."""
    if not HAS_JUMANJI:
        yield
        return
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _csv_tasks(family: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """task -> (generator settings, env kwargs) of ``family`` in tasks.csv, values parsed."""

    def parse(text: str) -> dict[str, Any]:
        pairs = (item.split("=") for item in text.split(";") if item)
        return {k: (v == "True") if v in ("True", "False") else int(v) for k, v in pairs}

    with Path(TASKS_CSV).open() as f:
        return {r["task"]: (parse(r["task_config"]), parse(r["env_kwargs"])) for r in csv.DictReader(f) if r["env_id"] == ENV_IDS[family]}


@pytest.mark.parametrize("family", list(MODULES))
def test_tasks_equal_tasks_csv(family: str) -> None:
    module, rows = MODULES[family], _csv_tasks(family)
    assert sorted(module.tasks()) == sorted(rows)
    for task, (config, kwargs) in rows.items():
        assert module.task_config(task) == config, task
        if family == "connector":
            assert connector.TASKS[task][2] == kwargs["time_limit"], task
    assert (rware.TIME_LIMIT, lbf.TIME_LIMIT) == (500, 100)  # Mava's rware.yaml and lbf.yaml kwargs (the csv leaves them out)


def test_missing_jumanji_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jumanji" else real(name, *a))
    assert "tiny-2ag" in rware.tasks()  # the task lists need no jumanji
    with pytest.raises(MissingDependencyError, match=r"pip install 'hcmarl\[jumanji\]'"):
        make_env("rware/tiny-2ag", num_envs=2, seed=0)
    with pytest.raises(ConfigError, match="time_limit"):
        make_env("lbf/8x8-2p-2f-coop", num_envs=2, seed=0, max_steps=5)  # refused before jumanji is needed


# ---- the reference: jumanji's own step, env by env ----------------------------------------------------------------
def _jumanji_env(family: str, task: str, time_limit: int) -> Any:
    """The jumanji env of ``task`` built here from tasks.csv, not by hcmarl."""
    from jumanji.environments import Connector, LevelBasedForaging, RobotWarehouse
    from jumanji.environments.routing.connector.generator import RandomWalkGenerator
    from jumanji.environments.routing.lbf.generator import RandomGenerator as LbfGenerator
    from jumanji.environments.routing.robot_warehouse.generator import RandomGenerator as RwareGenerator

    config = _csv_tasks(family)[task][0]
    classes = {"rware": (RobotWarehouse, RwareGenerator), "lbf": (LevelBasedForaging, LbfGenerator), "connector": (Connector, RandomWalkGenerator)}
    env_class, generator = classes[family]
    return env_class(generator=generator(**config), time_limit=time_limit)


def _connector_views(grid: np.ndarray, n: int) -> np.ndarray:
    """Each agent's ``[G, G, 5]`` view, cell by cell: heads and targets marked (r + 1) / n (r counted from the
    observer), paths 1, the observer's own head and target 1 (Mava's ``ConnectorWrapper``)."""
    views = np.zeros((n, *grid.shape, 5), np.float32)
    for observer in range(n):
        for (x, y), value in np.ndenumerate(grid):
            if value == 0:
                continue
            owner, kind = divmod(int(value) - 1, 3)  # kind 0: path, 1: head, 2: target
            r = (owner - observer) % n
            if kind == 0:
                views[observer, x, y, 2] = 1
            else:
                views[observer, x, y, kind - 1] = (r + 1) / n
                views[observer, x, y, kind + 2] = float(r == 0)
    return views


def _layout(family: str, timestep: Any) -> dict[str, np.ndarray]:
    """The hcmarl layout of one env's jumanji timestep, rebuilt here."""
    obs = timestep.observation
    if family == "connector":
        views = _connector_views(np.asarray(obs.grid), int(obs.action_mask.shape[0]))
        observation, state = views.reshape(views.shape[0], -1), views[0, ..., :3].reshape(-1)
    else:
        observation = np.asarray(obs.agents_view, np.float32)
        state = observation.reshape(-1)
    return {"observation": observation, "state": state, "mask": np.asarray(obs.action_mask)}


def _outcome(family: str, timestep: Any, time_limit: int) -> dict[str, Any]:
    """Team reward and flags of one env's jumanji step: jumanji's own termination (discount 0), except RWARE, which
    reports its time limit as a termination."""
    last = bool(timestep.last())
    terminated = last and bool((np.asarray(timestep.discount) == 0).all())
    if family == "rware":
        terminated = last and int(timestep.observation.step_count) < time_limit
    out = {"reward": float(np.sum(np.asarray(timestep.reward))), "terminated": terminated, "truncated": last and not terminated}
    if family == "connector":
        ratio = float(timestep.extras["ratio_connections"])
        out |= {"win": ratio == 1.0, "connection_rate": ratio}
    return out


def _reference(family: str, actions: np.ndarray) -> list[list[tuple[dict, dict, dict]]]:
    """Per env, per step: (layout before the step, layout after it, outcome), by jumanji's own jitted ``reset`` and
    ``step`` on one env at a time. Keys as ``hcmarl.envs.jumanji_batched`` documents them: the constructor and the
    first reset each split the seed's key and reset env ``i`` with ``fold_in(sub, i)``; each step splits off a
    ``reset_key`` and restarts an ended env ``i`` with ``fold_in(reset_key, i)``."""
    import jax

    task, time_limit = CASES[family]
    env = _jumanji_env(family, task, time_limit)
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    key = jax.random.PRNGKey(SEED)
    for _ in range(2):  # the constructor's batch, then the first reset's
        key, sub = jax.random.split(key)
    states, timesteps = zip(*(reset(jax.random.fold_in(sub, i)) for i in range(E)), strict=True)
    states, timesteps = list(states), list(timesteps)
    steps: list[list[tuple[dict, dict, dict]]] = [[] for _ in range(E)]
    for t in range(actions.shape[1]):
        key, reset_key = jax.random.split(key)
        for i in range(E):
            before = _layout(family, timesteps[i])
            states[i], timestep = step(states[i], actions[i, t].astype(np.int32))
            steps[i].append((before, _layout(family, timestep), _outcome(family, timestep, time_limit)))
            timesteps[i] = timestep
            if timestep.last():
                states[i], timesteps[i] = reset(jax.random.fold_in(reset_key, i))
    return steps


def _masked_random(td):
    mask = td[ACTION_MASK]
    td[ACTION] = torch.rand(mask.shape).masked_fill_(~mask, -1.0).argmax(-1)
    return td


@pytest.fixture(scope="module", params=list(CASES))
def rollout(request) -> tuple[str, Any, Any]:
    """(family, hcmarl env, a rollout of STEPS random available actions through it, with TorchRL's auto-resets)."""
    family = request.param
    task, time_limit = CASES[family]
    env = make_env(f"{family}/{task}", num_envs=E, seed=SEED, time_limit=time_limit)
    torch.manual_seed(0)
    return family, env, env.rollout(STEPS, policy=_masked_random, break_when_any_done=False)


@requires_jumanji
def test_rollout_equals_jumanji_step_env_by_env(rollout) -> None:
    family, env, td = rollout
    reference = _reference(family, td[ACTION].numpy())
    nxt = td["next"]
    for i in range(E):
        for t, (before, after, outcome) in enumerate(reference[i]):
            where = f"{family} env {i} step {t}"
            for got, expected in ((td[i, t], before), (nxt[i, t], after)):
                np.testing.assert_allclose(got[OBSERVATION].numpy(), expected["observation"], rtol=1e-6, err_msg=where)
                np.testing.assert_allclose(got[STATE].numpy(), expected["state"], rtol=1e-6, err_msg=where)
                np.testing.assert_array_equal(got[ACTION_MASK].numpy(), expected["mask"], err_msg=where)
            assert float(nxt[i, t][REWARD]) == pytest.approx(outcome["reward"], abs=1e-6), where
            for flag in ("terminated", "truncated", "win"):
                if flag in outcome:
                    assert bool(nxt[i, t][flag]) == outcome[flag], f"{where}: {flag}"
            assert bool(nxt[i, t]["done"]) == (outcome["terminated"] or outcome["truncated"]), where
            if "connection_rate" in outcome:
                assert float(nxt[i, t]["connection_rate"]) == pytest.approx(outcome["connection_rate"]), where


@requires_jumanji
def test_truncation_only_at_the_time_limit(rollout) -> None:
    family, env, td = rollout
    time_limit = CASES[family][1]
    assert env.info.max_steps == time_limit and env.info.has_action_mask and env.info.has_win == (family == "connector")
    nxt = td["next"]
    done, terminated, truncated = (nxt[k].squeeze(-1) for k in ("done", "terminated", "truncated"))
    assert torch.equal(done, terminated | truncated) and not (terminated & truncated).any()
    assert truncated.any()  # every family reaches its (shortened) time limit
    if family == "connector":
        assert terminated.any()  # random agents connect or block each other
    for i in range(E):
        ends = done[i].nonzero().flatten().tolist()
        lengths = np.diff([-1, *ends])
        assert all(bool(truncated[i, t]) == (length == time_limit) for t, length in zip(ends, lengths, strict=True)), family
        assert (lengths <= time_limit).all()


@requires_jumanji
def test_specs(rollout) -> None:
    check_env_specs(rollout[1])


@requires_jumanji
def test_maybe_reset_equals_torchrls_generic_reset(rollout) -> None:
    """``JumanjiEnv.maybe_reset`` (the fast path after a step) gives what ``EnvBase.maybe_reset`` gives."""
    family, env, _ = rollout
    torch.manual_seed(1)
    td = env.reset()
    for t in range(STEPS):
        if t == 2:  # env 0 restarts two steps later than the others: some envs end without the rest
            td = env.reset(td.set("_reset", torch.tensor([[True], [False], [False]])))
        td = env.step(_masked_random(td))
        done = td["next", "done"]
        if done.any() and not done.all():
            break
        td = step_mdp(td) if not done.any() else env.maybe_reset(step_mdp(td))
    assert done.any() and not done.all(), family
    after_step = step_mdp(td)
    assert_fast_reset_equals_generic(env, after_step, f"{family}: ")


@requires_jumanji
def test_partial_reset_restarts_only_chosen_envs(rollout) -> None:
    family, env, _ = rollout
    td = env.reset()
    for _ in range(3):
        td = step_mdp(env.step(_masked_random(td)))
    before = td[STATE].clone()
    td["_reset"] = torch.tensor([[True], [False], [False]])
    td = env.reset(td)
    assert env.env_states.step_count.tolist() == [0, 3, 3], family
    torch.testing.assert_close(td[STATE][1:], before[1:])
    assert not td["done"].any()
