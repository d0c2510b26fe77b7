"""jumanji's Connector in the hcmarl layout: the ``connector/<task>`` envs.

Each agent must draw a path from its start to its target; a path blocks every other agent. The tasks are the
MAGPO paper's (its code's ``mava/configs/env/scenario``, ``Connector-v2``; jumanji 1.1.2 registers the same class
as ``Connector-v3``): a ``grid_size`` grid, ``num_agents`` agents placed by jumanji's ``RandomWalkGenerator``, and a
time limit per task.

Each agent observes the grid ``[grid_size, grid_size, 5]`` flattened, from its own perspective (as Mava's
``ConnectorWrapper``): every agent's head position and every target marked with ``(r + 1) / N``, ``r`` the
agent's index counted from the observer (so the observer is ``1 / N``), the cells of every path with 1, and the
observer's own head and target with 1 in two channels of their own. The global state is the first three channels
from agent 0's perspective (``[grid_size, grid_size, 3]``). The action mask is jumanji's (0 no-op, 1 up,
2 right, 3 down, 4 left). The team reward is the sum of the agents' dense rewards (+1 for connecting, -0.03 per step
while unconnected), as Mava's ``aggregate_rewards`` (on in the paper's config) gives every agent.

The episode terminates when every agent is connected or blocked; the time limit truncates it. ``win`` is every
agent connected (Mava's ``won_episode``): the paper's Table 1 figure for Connector is its rate. ``connection_rate``
is the fraction of agents connected after the step (jumanji's ``ratio_connections``); its value at an episode's last
step is the episode's connection rate.
Stepping, auto-reset and the torch hand-over: ``hcmarl.envs.jumanji_batched``.
"""

from __future__ import annotations

from typing import Any

import torch

from hcmarl.envs.jumanji_batched import JumanjiEnv, JumanjiTask, cached_task, discount_terminated
from hcmarl.errors import UnknownEnvError

CHANNELS = 5
STATE_CHANNELS = 3

TASKS: dict[str, tuple[int, int, int]] = {
    # task: (grid_size, num_agents, time_limit)
    "con-5x5x3a": (5, 3, 25),
    "con-7x7x5a": (7, 5, 49),
    "con-10x10x10a": (10, 10, 100),
    "con-15x15x23a": (15, 23, 225),
}


def tasks() -> list[str]:
    """The ``connector/<task>`` names ``make_env`` knows."""
    return list(TASKS)


def task_config(task: str) -> dict[str, int]:
    """The generator settings of ``task`` (jumanji's ``RandomWalkGenerator`` arguments)."""
    if task not in TASKS:
        raise UnknownEnvError(f"unknown Connector task {task!r}; known: {', '.join('connector/' + t for t in TASKS)}")
    grid_size, num_agents, _ = TASKS[task]
    return {"grid_size": grid_size, "num_agents": num_agents}


def env_kwargs(task: str) -> set[str]:
    """The ``data.env_kwargs`` a ``connector`` task takes."""
    return {"time_limit"}


def agents_views(grid: Any, n_agents: int) -> Any:
    """Every agent's view ``[N, G, G, 5]`` of jumanji's grid (module docstring).

    jumanji's grid holds 0 for an empty cell and ``3 a + k`` for agent ``a``'s path (``k = 1``), head (2) or
    target (3).
    """
    import jax.numpy as jnp
    from jumanji.environments.routing.connector.constants import PATH, POSITION, TARGET

    owner, kind = (grid - 1) // 3, (grid - 1) % 3 + 1  # meaningless where grid == 0, masked below
    occupied = grid > 0
    observers = jnp.arange(n_agents)[:, None, None]
    rank = (owner[None] - observers) % n_agents  # 0 for the observer itself
    mark = (rank + 1) / n_agents

    def where(kinds: Any, values: Any) -> Any:
        return jnp.where(occupied & kinds, values, 0.0)

    heads, targets = kind == POSITION, kind == TARGET
    channels = [
        where(heads, mark),
        where(targets, mark),
        where(kind == PATH, 1.0),
        where(heads & (rank == 0), 1.0),
        where(targets & (rank == 0), 1.0),
    ]
    return jnp.stack([jnp.broadcast_to(c, (n_agents, *grid.shape)) for c in channels], axis=-1).astype(jnp.float32)


def build(task: str, time_limit: int | None = None) -> JumanjiTask:
    """The jumanji env of ``task`` (jumanji must be installed) as ``hcmarl.envs.jumanji_batched`` steps it (``time_limit``: the task's by default)."""
    from jumanji.environments import Connector
    from jumanji.environments.routing.connector.generator import RandomWalkGenerator

    limit = TASKS[task][2] if time_limit is None else time_limit
    env = Connector(generator=RandomWalkGenerator(**task_config(task)), time_limit=limit)
    n_agents, size = env.num_agents, env.grid_size

    def observe(observation: Any) -> tuple[Any, Any]:
        views = agents_views(observation.grid, n_agents)
        return views.reshape(n_agents, -1), views[0, ..., :STATE_CHANNELS].reshape(-1)

    return JumanjiTask(
        name=f"connector/{task}",
        env=env,
        obs_dim=size * size * CHANNELS,
        state_dim=size * size * STATE_CHANNELS,
        observe=observe,
        terminated=discount_terminated,
        win=lambda timestep: timestep.extras["ratio_connections"] == 1.0,
        metrics={"connection_rate": lambda timestep: timestep.extras["ratio_connections"]},
    )


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> JumanjiEnv:
    """``make_env``'s entry for ``connector/<task>``."""
    return JumanjiEnv(*cached_task("connector", task, kwargs, build), num_envs=num_envs, seed=seed, device=device)
