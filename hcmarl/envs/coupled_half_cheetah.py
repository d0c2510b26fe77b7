"""gymnasium-robotics' ``CoupledHalfCheetah`` (two half cheetahs joined by a tendon), readable under MuJoCo 4.

Its observations include four entries of the tendon's Jacobian row (the columns of each cheetah's
root x and z: ``ten_J[0][:2]`` and ``ten_J[0][9:11]``). gymnasium-robotics 1.4 reads
``data.ten_J`` as the dense ``[ntendon, nv]`` matrix older MuJoCo releases keep; MuJoCo 4 stores it
sparse (the nonzeros of each row, located by ``model.ten_J_rowadr``, ``ten_J_rownnz`` and
``ten_J_colind``), and both the single-agent env and the factorisation fail on it. Here the same
observations are built from the dense row :func:`tendon_jacobian_row` gives under either layout.
The imports of gymnasium-robotics happen on use (the ``mamujoco`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TENDON = 0
"""The one tendon, between the two cheetahs' back thighs."""

EPISODE_STEPS = 1000
"""The episode length gymnasium-robotics gives the task (it has no Gymnasium registration)."""


def tendon_jacobian_row(data: Any, tendon: int) -> np.ndarray:
    """Row ``tendon`` of the tendon Jacobian, dense ``[nv]``, from MuJoCo's dense or sparse ``data.ten_J``.

    It satisfies ``row @ data.qvel == data.ten_velocity[tendon]`` (the tendon velocity is J qdot).
    """
    if data.ten_J.ndim == 2:  # MuJoCo before 4: dense [ntendon, nv]
        return np.array(data.ten_J[tendon])
    model = data.model
    row = np.zeros(model.nv)
    start, count = int(model.ten_J_rowadr[tendon]), int(model.ten_J_rownnz[tendon])
    row[model.ten_J_colind[start : start + count]] = data.ten_J[start : start + count]
    return row


def tendon_observation(data: Any) -> np.ndarray:
    """The four Jacobian entries CoupledHalfCheetah observes: columns 0, 1, 9 and 10 (each cheetah's root x and z) of the tendon's row."""
    row = tendon_jacobian_row(data, TENDON)
    return np.concatenate([row[:2], row[9:11]])


def single_agent_env(max_steps: int):
    """The single-agent CoupledHalfCheetah with its observation built by :func:`tendon_observation`, time-limited."""
    from gymnasium.wrappers import TimeLimit
    from gymnasium_robotics.envs.multiagent_mujoco.coupled_half_cheetah import CoupledHalfCheetahEnv

    class DenseTendonCoupledHalfCheetah(CoupledHalfCheetahEnv):
        """gymnasium-robotics' observation (40 entries, same order), the tendon Jacobian read densely."""

        def _get_obs(self) -> np.ndarray:
            data = self.data
            return np.concatenate(
                [
                    data.qpos.flat[1:9],  # the first cheetah, less its root x
                    data.qpos.flat[10:18],  # the second cheetah, less its root x
                    data.qvel.flat,
                    tendon_observation(data),
                    data.ten_length,
                    data.ten_velocity,
                ]
            )

    return TimeLimit(DenseTendonCoupledHalfCheetah(), max_episode_steps=max_steps)


def factorization_1p1() -> dict[str, Any]:
    """gymnasium-robotics' ``1p1`` partition (one cheetah per agent), its ``ten_J`` observations read densely."""
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    parts, edges, global_nodes = get_parts_and_edges("CoupledHalfCheetah", "1p1")
    for node in (node for part in parts for node in part):
        if "ten_J" in node.extra_obs:
            node.extra_obs["ten_J"] = tendon_observation
    return {"partition": parts, "edges": edges, "globals": global_nodes}
