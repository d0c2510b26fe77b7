"""jumanji's Robotic Warehouse (``RobotWarehouse-v0``) in the hcmarl layout: the ``rware/<task>`` envs.

The tasks are the MAGPO paper's (its code's ``mava/configs/env/scenario``), with its time limit of 500 steps.
Each agent observes jumanji's ``agents_view`` (its own and the nearby cells' features within ``sensor_range``),
flattened, as float32; the global state is every agent's view concatenated (Mava's default global state); the
action mask is jumanji's (0 no-op, 1 forward, 2 left, 3 right, 4 toggle load). The team reward is jumanji's
shared reward (+1 per requested shelf delivered), which Mava gives every agent unchanged. A collision of two
agents terminates the episode; the time limit truncates it. Stepping, auto-reset and the torch hand-over:
``hcmarl.envs.jumanji_batched``.
"""

from __future__ import annotations

from typing import Any

import torch

from hcmarl.envs.jumanji_batched import JumanjiEnv, JumanjiTask, cached_task
from hcmarl.errors import UnknownEnvError

TIME_LIMIT = 500
COLUMN_HEIGHT = 8
SENSOR_RANGE = 1

TASKS: dict[str, tuple[int, int, int, int]] = {
    # task: (shelf_rows, shelf_columns, num_agents, request_queue_size)
    "tiny-2ag": (1, 3, 2, 2),
    "tiny-2ag-hard": (1, 3, 2, 1),
    "tiny-4ag": (1, 3, 4, 4),
    "tiny-4ag-easy": (1, 3, 4, 8),
    "tiny-4ag-hard": (1, 3, 4, 2),
    "small-4ag": (2, 3, 4, 4),
    "small-4ag-hard": (2, 3, 4, 2),
    "medium-4ag": (2, 5, 4, 4),
    "medium-4ag-hard": (2, 5, 4, 2),
    "medium-6ag": (2, 5, 6, 6),
    "large-4ag": (3, 5, 4, 4),
    "large-4ag-hard": (3, 5, 4, 2),
    "large-8ag": (3, 5, 8, 8),
    "large-8ag-hard": (3, 5, 8, 4),
    "xlarge-4ag": (4, 5, 4, 4),
    "xlarge-4ag-hard": (4, 5, 4, 2),
}


def tasks() -> list[str]:
    """The ``rware/<task>`` names ``make_env`` knows."""
    return list(TASKS)


def task_config(task: str) -> dict[str, int]:
    """The generator settings of ``task`` (jumanji's ``RandomGenerator`` arguments)."""
    if task not in TASKS:
        raise UnknownEnvError(f"unknown Robotic Warehouse task {task!r}; known: {', '.join('rware/' + t for t in TASKS)}")
    shelf_rows, shelf_columns, num_agents, request_queue_size = TASKS[task]
    return {
        "column_height": COLUMN_HEIGHT,
        "shelf_rows": shelf_rows,
        "shelf_columns": shelf_columns,
        "num_agents": num_agents,
        "sensor_range": SENSOR_RANGE,
        "request_queue_size": request_queue_size,
    }


def env_kwargs(task: str) -> set[str]:
    """The ``data.env_kwargs`` an ``rware`` task takes."""
    return {"time_limit"}


def build(task: str, time_limit: int = TIME_LIMIT) -> JumanjiTask:
    """The jumanji env of ``task`` (jumanji must be installed) as ``hcmarl.envs.jumanji_batched`` steps it."""
    import jax
    import jax.numpy as jnp
    from jumanji.environments import RobotWarehouse
    from jumanji.environments.routing.robot_warehouse import utils
    from jumanji.environments.routing.robot_warehouse.generator import RandomGenerator

    env = RobotWarehouse(generator=RandomGenerator(**task_config(task)), time_limit=time_limit)
    n_agents, obs_dim = env.num_agents, int(env.num_obs_features)

    def observe(observation: Any) -> tuple[Any, Any]:
        view = observation.agents_view.astype(jnp.float32)
        return view, view.reshape(-1)

    def collided(state: Any, _timestep: Any) -> Any:
        """jumanji's own end of an episode besides the time limit: an agent on a cell another agent holds."""
        return jax.vmap(lambda agent, agent_id: utils.is_collision(state.grid, agent, agent_id))(state.agents, jnp.arange(n_agents)).any()

    return JumanjiTask(name=f"rware/{task}", env=env, obs_dim=obs_dim, state_dim=n_agents * obs_dim, observe=observe, terminated=collided)


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> JumanjiEnv:
    """``make_env``'s entry for ``rware/<task>``."""
    return JumanjiEnv(*cached_task("rware", task, kwargs, build), num_envs=num_envs, seed=seed, device=device)
