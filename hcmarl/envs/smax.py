"""JaxMARL's SMAX (StarCraft-like battles in JAX) in the hcmarl layout (DESIGN.md, "Conventions").

``smax/<map>`` is JaxMARL's ``HeuristicEnemySMAX`` on one of its SMAC-named scenarios: the
learning team controls the allies, a scripted heuristic controls the enemies. The
``num_envs`` battles are stepped by one ``jax.jit(jax.vmap(...))`` call per step; results
reach torch through DLPack without copies (a copy only when jax and torch sit on different
devices).

Layout (``hcmarl.envs.base``): ``("agents", "observation")`` float32 ``[E, N, obs_dim]`` (the
allies' unit-list observations), ``("agents", "action_mask")`` bool ``[E, N, n_actions]`` (SMAX's
available actions), ``"state"`` float32 ``[E, state_dim]`` (SMAX's ``world_state``), team
``"reward"`` ``[E, 1]`` (the mean of the allies' rewards, all equal in SMAX), ``"win"`` bool
``[E, 1]`` (all enemies dead and an ally alive). The battle's end sets ``terminated``, the
time limit (``max_steps``, JaxMARL's default 100) sets ``truncated``.

A finished battle is restarted inside the jitted step (JaxMARL's auto-reset); the step still
returns the last observation of the finished episode, and the restarted one is what the
following ``reset`` with ``"_reset"`` set for that env returns, without another jax call.
Resetting an env that was not done runs a jitted partial reset.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, EnvInfo, masked_categorical_info, set_masked_categorical_specs
from hcmarl.errors import MissingDependencyError, UnknownEnvError


def _import_jaxmarl():
    """JaxMARL and its SMAX module, imported quietly.

    Importing JaxMARL prints lines about its optional environments and resets ``sys.stdout`` and
    ``sys.stderr`` to the interpreter's originals (which undoes any redirection, pytest's capture
    included); both streams are kept as they were.
    """
    if importlib.util.find_spec("jaxmarl") is None:
        raise MissingDependencyError("jaxmarl", "smax", "The 'smax/...' environments")
    stdout, stderr = sys.stdout, sys.stderr
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import jaxmarl
            from jaxmarl.environments.smax import smax_env
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    return jaxmarl, smax_env


def smax_maps() -> list[str]:
    """Every scenario in JaxMARL's ``MAP_NAME_TO_SCENARIO``."""
    return sorted(_import_jaxmarl()[1].MAP_NAME_TO_SCENARIO)


@dataclass(frozen=True)
class Batched:
    """The jitted functions over a batch of battles (all pure; ``key`` is carried through).

    What the agents see of a battle travels as one float32 row, so that a whole step reaches
    torch in a single DLPack hand-over: observations ``[N * obs_dim]``, state, available-action
    masks ``[N * n_actions]`` (1.0 for available). A step's row is the observed row, then reward,
    terminated, truncated and win (1.0 for true), then the row of the battle that acts next (the
    restarted one where the battle ended).
    """

    init: Callable  # (key, num_envs) -> (key, states, rows [E, W]): new battles
    select: Callable  # (mask [E], fresh, old) -> fresh where mask else old, for any pytree batched on E
    step: Callable  # (key, states, actions [E, N] int32) -> (key, states, step rows [E, 2 W + 4])


def _build_batched(env: Any) -> Batched:
    """``jax.jit(jax.vmap(...))`` of reset and step for one JaxMARL ``HeuristicEnemySMAX``."""
    import jax
    import jax.numpy as jnp

    allies, n_allies = env.agents, env.num_allies

    def row(obs: dict, state: Any) -> Any:
        avail = env.get_avail_actions(state)
        parts = [obs[a] for a in allies] + [obs["world_state"]] + [avail[a] for a in allies]
        return jnp.concatenate([part.astype(jnp.float32) for part in parts])

    def strong(state: Any) -> Any:
        """``state`` without weak types, so that reset and step states share one jit signature."""
        return jax.tree.map(lambda x: x.astype(x.dtype), state)

    def reset_one(key):
        obs, state = env.reset(key)
        return strong(state), row(obs, state)

    def outcome(rewards: dict, state: Any) -> Any:
        """Team reward (the allies' mean), terminated, truncated, win: float32 ``[4]``."""
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[:n_allies].any(), ~alive[n_allies:].any()
        terminated = allies_dead | enemies_dead
        truncated = (state.state.step >= env.max_steps) & ~terminated
        reward = jnp.stack([rewards[a] for a in allies]).mean()
        return jnp.stack([reward, terminated, truncated, enemies_dead & ~allies_dead]).astype(jnp.float32)

    def step_one(key, state, actions):
        step_key, reset_key = jax.random.split(key)
        obs, state, rewards, dones, _ = env.step_env(step_key, state, {a: actions[i] for i, a in enumerate(allies)})
        seen, result = row(obs, state), outcome(rewards, state)
        fresh_state, fresh = reset_one(reset_key)
        done = dones["__all__"]
        state, now = jax.tree.map(lambda f, s: jnp.where(done, f, s), (fresh_state, fresh), (strong(state), seen))
        return state, jnp.concatenate([seen, result, now])

    def init(key, num_envs):
        key, sub = jax.random.split(key)
        states, rows = jax.vmap(reset_one)(jax.random.split(sub, num_envs))
        return key, states, rows

    def select(mask, fresh, old):
        def where(f, o):
            return jnp.where(mask.reshape(mask.shape + (1,) * (f.ndim - 1)), f, o)

        return jax.tree.map(where, fresh, old)

    def step(key, states, actions):
        key, sub = jax.random.split(key)
        states, rows = jax.vmap(step_one)(jax.random.split(sub, actions.shape[0]), states, actions)
        return key, states, rows

    return Batched(init=jax.jit(init, static_argnums=1), select=jax.jit(select), step=jax.jit(step))


_CACHE: dict[tuple[str, str], tuple[Any, Batched]] = {}
"""(map, repr of the scenario kwargs) -> (JaxMARL env, its jitted functions); jax keeps one
compilation per batch size inside each jitted function, so envs built again reuse it."""


def _smax_env(map_name: str, env_kwargs: dict[str, Any]) -> tuple[Any, Batched]:
    """The JaxMARL env for ``map_name`` and its batched functions, from the module cache."""
    cache_key = (map_name, repr(sorted(env_kwargs.items())))
    if cache_key not in _CACHE:
        jaxmarl, smax_env = _import_jaxmarl()
        env = jaxmarl.make("HeuristicEnemySMAX", scenario=smax_env.map_name_to_scenario(map_name), **env_kwargs)
        _CACHE[cache_key] = (env, _build_batched(env))
    return _CACHE[cache_key]


def _jax_device(device: torch.device):
    """The jax device matching ``device``: its GPU when torch uses CUDA and jax has one, else the CPU."""
    import jax

    if device.type == "cuda":
        try:
            return jax.devices("gpu")[device.index or 0]
        except RuntimeError:  # jax without a GPU backend: simulate on the CPU
            pass
    return jax.devices("cpu")[0]


def _seed_key(seed: int | None, device: Any):
    """A jax PRNG key from ``seed`` (``None`` draws one from torch's global RNG), on ``device``."""
    import jax

    if seed is None:
        seed = int(torch.empty((), dtype=torch.int64).random_())
    return jax.device_put(jax.random.PRNGKey(seed % 2**32), device)


class SmaxEnv(EnvBase):
    """``num_envs`` SMAX battles of one map, stepped together by jitted jax code.

    Args:
        map_name: a key of JaxMARL's ``MAP_NAME_TO_SCENARIO`` (``3s5z``, ``27m_vs_30m``, ...).
        num_envs: battles stepped together (the batch size).
        seed: seed of the jax PRNG key; ``None`` draws one from torch's global RNG.
        device: where the returned tensors live; jax simulates on the matching GPU if it has one.
        **env_kwargs: passed to JaxMARL's ``SMAX`` (e.g. ``max_steps``, ``won_battle_bonus``).

    The reset and step functions are compiled (and run once) in the constructor.
    """

    def __init__(
        self,
        map_name: str = "3s5z",
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        **env_kwargs: Any,
    ) -> None:
        if map_name not in smax_maps():
            raise UnknownEnvError(f"unknown SMAX map {map_name!r}; known: {', '.join('smax/' + m for m in smax_maps())}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        import jax

        self.map_name = map_name
        self._jax = jax
        self._smax, self._fns = _smax_env(map_name, env_kwargs)
        self.n_agents = self._smax.num_allies
        self.n_actions = self._smax.num_ally_actions
        self.obs_dim = self._smax.obs_size
        self.state_dim = self._smax.state_size
        self.max_steps = int(self._smax.max_steps)
        self._jax_device = _jax_device(self.device)
        self._key = _seed_key(seed, self._jax_device)
        self._row_width = self.n_agents * (self.obs_dim + self.n_actions) + self.state_dim  # W of ``Batched``
        self._key, self._states, rows = self._fns.init(self._key, num_envs)
        self._rows = self._torch(rows)  # [E, W]: what the agents act on next
        self._restarted = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._warm_up()
        set_masked_categorical_specs(self, self.n_agents, self.obs_dim, self.state_dim, self.n_actions)

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        return masked_categorical_info(f"smax/{self.map_name}", self)

    def _warm_up(self) -> None:
        """Compile the step and the partial reset's selection now, not in the first iteration (results discarded).

        The inputs are made as ``_step`` and ``_reset`` make theirs, so the calls hit the same compilation.
        """
        E, N = self.batch_size[0], self.n_agents
        actions = self._to_jax(torch.zeros(E, N, dtype=torch.int32))
        mask = self._to_jax(torch.zeros(E, dtype=torch.bool))
        self._jax.block_until_ready(self._fns.step(self._key, self._states, actions))
        self._jax.block_until_ready(self._fns.select(mask, self._states, self._states))

    def _to_jax(self, tensor: torch.Tensor) -> Any:
        """A torch tensor as an input of the jitted functions, on the simulation device.

        On a GPU through DLPack. On the CPU as a NumPy view, which jit copies in (a few KB): about
        0.05 ms per step in the stepping loop at 64 envs, against 0.3 ms for jax's DLPack import.
        """
        if self._jax_device.platform == "cpu":
            return tensor.cpu().contiguous().numpy()
        return self._jax.dlpack.from_dlpack(tensor.to(self._jax_torch_device()).contiguous())

    def _torch(self, array: Any) -> torch.Tensor:
        """A jax array as a torch tensor on ``self.device``: shared memory through DLPack (copied only across devices)."""
        return torch.from_dlpack(array).to(self.device)

    def _observed(self, rows: torch.Tensor, **entries: torch.Tensor) -> TensorDict:
        """The hcmarl layout of ``rows`` ``[E, W]`` (views; the masks compared to 0.5), plus ``entries``."""
        E, N, obs_dim, n_actions = self.batch_size[0], self.n_agents, self.obs_dim, self.n_actions
        observations, states, masks = rows.split([N * obs_dim, self.state_dim, N * n_actions], dim=1)
        agents = TensorDict(
            {"observation": observations.unflatten(1, (N, obs_dim)), "action_mask": masks.unflatten(1, (N, n_actions)) > 0.5},
            batch_size=(E, N),
            device=self.device,
        )
        return TensorDict({"agents": agents, "state": states, **entries}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones_like(self._restarted) if reset is None else reset.reshape(-1).to(self.device)
        if bool((mask & ~self._restarted).any()):  # some env to reset was not restarted by the step
            self._key, fresh_states, fresh_rows = self._fns.init(self._key, self.batch_size[0])
            self._states = self._fns.select(self._to_jax(mask), fresh_states, self._states)
            self._rows = torch.where(mask.unsqueeze(-1), self._torch(fresh_rows), self._rows)
        self._restarted &= ~mask
        no = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return self._observed(self._rows, win=no, done=no.clone(), terminated=no.clone(), truncated=no.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._to_jax(tensordict.get(ACTION).to(torch.int32))
        self._key, self._states, rows = self._fns.step(self._key, self._states, actions)
        seen, outcome, self._rows = self._torch(rows).split([self._row_width, 4, self._row_width], dim=1)
        terminated, truncated, win = (outcome[:, 1:] > 0.5).split(1, dim=1)
        done = terminated | truncated
        self._restarted = done.reshape(-1).clone()
        return self._observed(seen, reward=outcome[:, :1], win=win, done=done, terminated=terminated, truncated=truncated)

    def _jax_torch_device(self) -> torch.device:
        """The torch device naming the memory jax simulates in (for handing actions over)."""
        if self._jax_device.platform == "gpu":
            return torch.device("cuda", self._jax_device.id)
        return torch.device("cpu")

    def _set_seed(self, seed: int | None) -> None:
        self._key = _seed_key(seed, self._jax_device)


def tasks() -> list[str]:
    """The SMAX maps ``make_env`` knows (``smax/<map>``)."""
    return smax_maps()


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> SmaxEnv:
    """``make_env``'s entry for ``smax/<map>``."""
    return SmaxEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
