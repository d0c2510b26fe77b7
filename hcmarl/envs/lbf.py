"""jumanji's Level-Based Foraging (``LevelBasedForaging-v0``) in the hcmarl layout: the ``lbf/<task>`` envs.

The tasks are the MAGPO paper's (its code's ``mava/configs/env/scenario``), with its time limit of 100 steps
(``2s-`` tasks see 2 cells around; ``-coop`` tasks force the agents to load every food together). Each agent
observes jumanji's vector observation as float32: ``(y, x, level)`` of each food, of itself, then of the other
agents, ``(-1, -1, 0)`` for what lies outside its field of view; the global state is every agent's observation concatenated (Mava's default global state);
the action mask is jumanji's (0 no-op, 1 up, 2 right, 3 down, 4 left, 5 load). The team reward is the sum of the
agents' rewards, as Mava's ``aggregate_rewards`` (on in the paper's config) gives every agent: jumanji normalises
them so that eating every food yields 1 in all. Eating every food terminates the episode; the time limit truncates
it. Stepping, auto-reset and the torch hand-over: ``hcmarl.envs.jumanji_batched``.
"""

from __future__ import annotations

from typing import Any

import torch

from hcmarl.envs.jumanji_batched import JumanjiEnv, JumanjiTask, cached_task, discount_terminated
from hcmarl.errors import UnknownEnvError

TIME_LIMIT = 100
MAX_AGENT_LEVEL = 2

TASKS: dict[str, tuple[int, int, int, int, bool]] = {
    # task: (grid_size, fov, num_agents, num_food, force_coop)
    "2s-8x8-2p-2f-coop": (8, 2, 2, 2, True),
    "8x8-2p-2f-coop": (8, 8, 2, 2, True),
    "2s-10x10-3p-3f": (10, 2, 3, 3, False),
    "10x10-3p-3f": (10, 10, 3, 3, False),
    "15x15-3p-5f": (15, 15, 3, 5, False),
    "15x15-4p-3f": (15, 15, 4, 3, False),
    "15x15-4p-5f": (15, 15, 4, 5, False),
}


def tasks() -> list[str]:
    """The ``lbf/<task>`` names ``make_env`` knows."""
    return list(TASKS)


def task_config(task: str) -> dict[str, Any]:
    """The generator settings of ``task`` (jumanji's ``RandomGenerator`` arguments)."""
    if task not in TASKS:
        raise UnknownEnvError(f"unknown Level-Based Foraging task {task!r}; known: {', '.join('lbf/' + t for t in TASKS)}")
    grid_size, fov, num_agents, num_food, force_coop = TASKS[task]
    return {
        "grid_size": grid_size,
        "fov": fov,
        "num_agents": num_agents,
        "num_food": num_food,
        "max_agent_level": MAX_AGENT_LEVEL,
        "force_coop": force_coop,
    }


def env_kwargs(task: str) -> set[str]:
    """The ``data.env_kwargs`` an ``lbf`` task takes."""
    return {"time_limit"}


def build(task: str, time_limit: int = TIME_LIMIT) -> JumanjiTask:
    """The jumanji env of ``task`` (jumanji must be installed) as ``hcmarl.envs.jumanji_batched`` steps it."""
    import jax
    import jax.numpy as jnp
    from jumanji.environments import LevelBasedForaging
    from jumanji.environments.routing.lbf.generator import RandomGenerator

    env = LevelBasedForaging(generator=RandomGenerator(**task_config(task)), time_limit=time_limit)
    n_agents, obs_dim = env.num_agents, int(jax.eval_shape(env.reset, jax.random.PRNGKey(0))[1].observation.agents_view.shape[-1])

    def observe(observation: Any) -> tuple[Any, Any]:
        view = observation.agents_view.astype(jnp.float32)
        return view, view.reshape(-1)

    return JumanjiTask(name=f"lbf/{task}", env=env, obs_dim=obs_dim, state_dim=n_agents * obs_dim, observe=observe, terminated=discount_terminated)


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> JumanjiEnv:
    """``make_env``'s entry for ``lbf/<task>``."""
    return JumanjiEnv(*cached_task("lbf", task, kwargs, build), num_envs=num_envs, seed=seed, device=device)
