"""SMAX battles batched in jax: the jitted reset, step and partial reset that ``hcmarl.envs.smax.SmaxEnv`` calls.

Everything here is pure jax over a batch of battles of one JaxMARL ``HeuristicEnemySMAX``; the
TorchRL side (DLPack hand-over, TensorDicts, resets) is in ``hcmarl.envs.smax``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hcmarl.envs.jax_common import restart_ended, select_where


@dataclass(frozen=True)
class Batched:
    """The jitted functions over a batch of battles (all pure; ``key`` is carried through).

    Each battle's JaxMARL state travels packed into one uint8 row (``pack``/``unpack``), so that a
    call hands jax three arrays rather than a pytree of a dozen: jax's dispatch costs about 10 us
    per array, and the step is called once per env step.

    What the agents see of a battle travels as one float32 row, so that a whole step reaches
    torch in a single DLPack hand-over: observations ``[N * obs_dim]``, state, available-action
    masks ``[N * n_actions]`` (1.0 for available). A step's row is the observed row, then reward,
    terminated, truncated and win (1.0 for true), then the row of the battle that acts next (the
    restarted one where the battle ended).
    """

    init: Callable  # (key, num_envs) -> (key, packed states [E, B], rows [E, W]): new battles
    select: Callable  # (mask [E], fresh [E, ...], old [E, ...]) -> fresh where mask else old
    step: Callable  # (key, packed states, actions [E, N] int32) -> (key, packed states, step rows [E, 2 W + 4])
    pack: Callable  # JaxMARL states batched on E -> packed states [E, B]
    unpack: Callable  # packed states [E, B] -> JaxMARL states batched on E


def byte_packing(template: Any) -> tuple[Callable, Callable]:
    """``pack(state) -> uint8 [B]`` and its inverse ``unpack``, for pytrees shaped like ``template`` (one battle).

    Each leaf's bytes (bools as 0/1) follow one another in ``jax.tree.leaves`` order.
    """
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(template)
    layout = [(leaf.shape, jnp.dtype(leaf.dtype)) for leaf in leaves]
    sizes = [math.prod(shape) * (1 if dtype == jnp.bool_ else dtype.itemsize) for shape, dtype in layout]

    def pack(state: Any) -> Any:
        def to_bytes(leaf: Any) -> Any:
            flat = leaf.reshape(-1)
            return flat.astype(jnp.uint8) if flat.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(flat, jnp.uint8).reshape(-1)

        return jnp.concatenate([to_bytes(leaf) for leaf in jax.tree.leaves(state)])

    def unpack(row: Any) -> Any:
        def from_bytes(part: Any, shape: tuple, dtype: Any) -> Any:
            if dtype == jnp.bool_:
                return part.astype(jnp.bool_).reshape(shape)
            if dtype.itemsize > 1:
                part = part.reshape(-1, dtype.itemsize)
            return jax.lax.bitcast_convert_type(part, dtype).reshape(shape)

        parts = jnp.split(row, list(itertools.accumulate(sizes))[:-1])
        return jax.tree.unflatten(treedef, [from_bytes(part, *spec) for part, spec in zip(parts, layout, strict=True)])

    return pack, unpack


def build_batched(env: Any) -> Batched:
    """``jax.jit(jax.vmap(...))`` of reset and step for one JaxMARL ``HeuristicEnemySMAX``."""
    import jax
    import jax.numpy as jnp

    allies, n_allies = env.agents, env.num_allies
    pack, unpack = byte_packing(jax.eval_shape(lambda key: env.reset(key)[1], jax.random.PRNGKey(0)))

    def row(obs: dict, state: Any) -> Any:
        avail = env.get_avail_actions(state)
        parts = [obs[a] for a in allies] + [obs["world_state"]] + [avail[a] for a in allies]
        return jnp.concatenate([part.astype(jnp.float32) for part in parts])

    def reset_one(key):
        obs, state = env.reset(key)
        return pack(state), row(obs, state)

    def outcome(rewards: dict, state: Any) -> Any:
        """Team reward (the allies' mean), terminated, truncated, win: float32 ``[4]``."""
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[:n_allies].any(), ~alive[n_allies:].any()
        terminated = allies_dead | enemies_dead
        truncated = (state.state.step >= env.max_steps) & ~terminated
        reward = jnp.stack([rewards[a] for a in allies]).mean()
        return jnp.stack([reward, terminated, truncated, enemies_dead & ~allies_dead]).astype(jnp.float32)

    def advance_one(key, packed, actions):
        """One battle's step, without restarting it: (packed state, observed row, outcome, ended).

        The battle has ended when it is terminated or truncated by ``outcome``. JaxMARL's own
        ``dones["__all__"]`` compares the step count before its increment with ``max_steps``, so it
        would end a battle one step after the truncation reported here.
        """
        obs, state, rewards, _, _ = env.step_env(key, unpack(packed), {a: actions[i] for i, a in enumerate(allies)})
        result = outcome(rewards, state)
        return pack(state), row(obs, state), result, (result[1] > 0) | (result[2] > 0)

    def init(key, num_envs):
        key, sub = jax.random.split(key)
        packed, rows = jax.vmap(reset_one)(jax.random.split(sub, num_envs))
        return key, packed, rows

    def restart(key, done, packed, rows):
        """New battles where ``done`` (``restart_ended``), ``slots`` of them from ``jax.random.split(key, slots)``."""
        return restart_ended(
            lambda key, index: jax.vmap(reset_one)(jax.random.split(key, index.shape[0])),
            lambda key: init(key, done.shape[0])[1:],
            key,
            done,
            packed,
            rows,
        )

    def step(key, packed, actions):
        key, step_key, reset_key = jax.random.split(key, 3)
        packed, seen, result, done = jax.vmap(advance_one)(jax.random.split(step_key, actions.shape[0]), packed, actions)
        packed, now = restart(reset_key, done, packed, seen)
        return key, packed, jnp.concatenate([seen, result, now], axis=1)

    return Batched(
        init=jax.jit(init, static_argnums=1),
        select=jax.jit(select_where),
        step=jax.jit(step),
        pack=jax.jit(jax.vmap(pack)),
        unpack=jax.jit(jax.vmap(unpack)),
    )
