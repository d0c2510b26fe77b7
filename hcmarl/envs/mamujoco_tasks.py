"""The multi-agent MuJoCo tasks hcmarl knows and one raw gymnasium-robotics env of a task.

A task is ``<robot>-<partition>`` (:data:`PARTITIONS`); :func:`make_raw_env` builds its PettingZoo parallel env
with a time limit, hcmarl's own factorisations (``Walker2d-6x1``, ``CoupledHalfCheetah-1p1``) and MuJoCo's
warnings sent to Python's logging instead of ``MUJOCO_LOG.TXT``. :mod:`hcmarl.envs.mamujoco` batches these envs.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Any

from hcmarl.envs import coupled_half_cheetah
from hcmarl.envs.base import is_noise, quiet_import
from hcmarl.errors import ConfigError, MissingDependencyError, UnknownEnvError

LOGGER = logging.getLogger("hcmarl.envs.mamujoco")
"""The family's logger (named after the family module, where users look for it)."""

PARTITIONS: dict[str, tuple[str, ...]] = {
    "Ant": ("2x4", "2x4d", "4x2"),
    "CoupledHalfCheetah": ("1p1",),
    "HalfCheetah": ("2x3", "6x1"),
    "Hopper": ("3x1",),
    "Humanoid": ("9|8",),
    "HumanoidStandup": ("9|8",),
    "ManySegmentAnt": ("2x3", "3x2"),
    "ManySegmentSwimmer": ("10x2", "4x2"),
    "Pusher": ("3p",),
    "Reacher": ("2x1",),
    "Swimmer": ("2x1",),
    "Walker2d": ("2x3", "6x1"),
}
"""Robot -> partitions: every multi-agent factorisation gymnasium-robotics 1.4 defines in
``obsk.get_parts_and_edges`` (the ``ManySegment*`` robots take any ``<agents>x<segments>``;
the two listed are FACMAC's and a smaller one), plus ``Walker2d-6x1`` (:func:`_walker2d_6x1`)."""

MANY_SEGMENT_BASE = {"ManySegmentAnt": "Ant", "ManySegmentSwimmer": "Swimmer"}
"""Many-segment robots -> the Gymnasium robot whose env loads their generated model."""


def _check_installed() -> None:
    """``MissingDependencyError`` naming the extra unless gymnasium-robotics is installed (without importing it)."""
    if importlib.util.find_spec("gymnasium_robotics") is None:
        raise MissingDependencyError("gymnasium_robotics", "mamujoco", "The 'mamujoco/...' environments")


def _import_mamujoco():
    """gymnasium-robotics' MaMuJoCo module, imported without its notice about other envs
    (:func:`hcmarl.envs.base.quiet_import`), or ``MissingDependencyError`` naming the extra."""
    _check_installed()
    (mujoco_multi,) = quiet_import("gymnasium_robotics.envs.multiagent_mujoco.mujoco_multi")
    return mujoco_multi


def tasks() -> list[str]:
    """The ``mamujoco/<robot>-<partition>`` tasks ``make_env`` knows (a static list: gymnasium-robotics is not imported)."""
    _check_installed()
    return [f"{robot}-{partition}" for robot, partitions in PARTITIONS.items() for partition in partitions]


def split_task(task: str) -> tuple[str, str]:
    """``"HalfCheetah-2x3"`` -> ``("HalfCheetah", "2x3")``, or ``UnknownEnvError`` listing the tasks."""
    robot, _, partition = task.partition("-")
    if partition not in PARTITIONS.get(robot, ()):
        raise UnknownEnvError(f"unknown MaMuJoCo task {task!r}; known: {', '.join('mamujoco/' + t for t in tasks())}")
    return robot, partition


# ---- MuJoCo's log ---------------------------------------------------------------------------
_LOGGED_WARNINGS: set[str] = set()


def _log_mujoco_warning(message: str) -> None:
    """Send a MuJoCo warning to Python's logging, once per distinct message (not those in ``ENV_PACKAGE_NOISE``)."""
    if message not in _LOGGED_WARNINGS and not is_noise("mujoco", message):
        _LOGGED_WARNINGS.add(message)
        LOGGER.warning("MuJoCo: %s", message)


def _route_mujoco_warnings() -> None:
    """Make MuJoCo report warnings through Python's logging instead of writing ``MUJOCO_LOG.TXT`` into the cwd."""
    import mujoco

    mujoco.set_mju_user_warning(_log_mujoco_warning)


# ---- one raw env ----------------------------------------------------------------------------
def default_max_steps(robot: str) -> int:
    """Gymnasium's registered episode length for the robot's single-agent env."""
    import gymnasium

    if robot == "CoupledHalfCheetah":
        return coupled_half_cheetah.EPISODE_STEPS
    steps = gymnasium.spec(f"{MANY_SEGMENT_BASE.get(robot, robot)}-v5").max_episode_steps
    if steps is None:
        raise ConfigError(f"Gymnasium registers no episode length for mamujoco/{robot}; give the env's max_steps")
    return int(steps)


def _single_agent_env(robot: str, partition: str, max_steps: int, **gym_kwargs: Any):
    """The Gymnasium MuJoCo env MaMuJoCo factorises, with a ``max_steps`` time limit.

    Built here rather than by gymnasium-robotics so the many-segment models are generated in a
    private temporary folder (gymnasium-robotics writes them into its own package folder, where
    concurrent workers would collide).
    """
    import gymnasium

    if robot == "CoupledHalfCheetah":
        if gym_kwargs:
            raise ConfigError(f"CoupledHalfCheetah takes no Gymnasium arguments; remove {sorted(gym_kwargs)} from the env's kwargs")
        return coupled_half_cheetah.single_agent_env(max_steps)
    if robot not in MANY_SEGMENT_BASE:
        return gymnasium.make(f"{robot}-v5", max_episode_steps=max_steps, disable_env_checker=True, **gym_kwargs)
    from gymnasium_robotics.envs.multiagent_mujoco import many_segment_ant, many_segment_swimmer

    gen_asset = {"ManySegmentAnt": many_segment_ant, "ManySegmentSwimmer": many_segment_swimmer}[robot].gen_asset
    agents, segments = (int(n) for n in partition.split("x"))
    with tempfile.TemporaryDirectory(prefix="hcmarl_mamujoco_") as folder:
        xml = str(Path(folder) / f"{robot}.xml")
        gen_asset(n_segs=agents * segments, asset_path=xml)
        base = MANY_SEGMENT_BASE[robot]
        return gymnasium.make(f"{base}-v5", max_episode_steps=max_steps, disable_env_checker=True, xml_file=xml, **gym_kwargs)


def _walker2d_6x1() -> dict[str, Any]:
    """Walker2d with one agent per joint (the HCPO paper's ``Walker2d-6x1``).

    The joint graph, its edges and global nodes are gymnasium-robotics' own Walker2d ones; the
    partition puts each joint in its own agent, agent ``i`` driving Walker2d-v5's action ``i``
    (right thigh, leg, foot, then left thigh, leg, foot).
    """
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    parts, edges, global_nodes = get_parts_and_edges("Walker2d", "2x3")
    joints = sorted((node for part in parts for node in part), key=lambda node: node.act_ids)
    return {"partition": [(joint,) for joint in joints], "edges": edges, "globals": global_nodes}


FACTORIZATIONS = {"Walker2d-6x1": _walker2d_6x1, "CoupledHalfCheetah-1p1": coupled_half_cheetah.factorization_1p1}
"""Tasks built with a factorisation of hcmarl's (gymnasium-robotics' ``agent_factorization``), by task."""


def make_raw_env(task: str, max_steps: int | None = None, agent_obsk: int = 1, **gym_kwargs: Any):
    """One gymnasium-robotics ``MultiAgentMujocoEnv`` (a PettingZoo parallel env) for ``task``.

    Args:
        task: ``<robot>-<partition>``, one of :func:`tasks`.
        max_steps: time limit (truncation); ``None`` is Gymnasium's default for the robot.
        agent_obsk: how many joints away an agent observes (MaMuJoCo's ``agent_obsk``).
        **gym_kwargs: arguments of the Gymnasium MuJoCo env (e.g. ``ctrl_cost_weight``).
    """
    robot, partition = split_task(task)
    mujoco_multi = _import_mamujoco()
    _route_mujoco_warnings()
    steps = default_max_steps(robot) if max_steps is None else max_steps
    single = _single_agent_env(robot, partition, steps, **gym_kwargs)
    factorization = FACTORIZATIONS[task]() if task in FACTORIZATIONS else None
    return mujoco_multi.MultiAgentMujocoEnv(robot, partition, agent_obsk=agent_obsk, agent_factorization=factorization, gym_env=single)
