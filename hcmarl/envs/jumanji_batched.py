"""jumanji's multi-agent grid worlds batched in jax, and the TorchRL env that steps them (``rware``, ``lbf``, ``connector``).

A family module (``hcmarl.envs.rware``, ``lbf``, ``connector``) describes one task as a :class:`JumanjiTask`: the
jumanji ``Environment``, how its observation becomes the agents' observations and the global state, when an
episode is terminated, and the episode metrics it reports. :func:`build_batched` turns that into jitted functions
over a batch of envs, and :class:`JumanjiEnv` steps them with the layout of ``hcmarl.envs.base``, as
``hcmarl.envs.smax`` does for SMAX:

- one ``jax.jit(jax.vmap(...))`` call per step, whose result reaches torch in one DLPack hand-over: per env the
  observed row (observations ``[N * obs_dim]``, state, action masks ``[N * n_actions]``), then team reward,
  terminated, truncated, win and the task's metrics, then the row of the episode that acts next;
- auto-reset inside that call: an env whose episode ended is restarted there (only those envs), the step still
  returns the ended episode's last observation, and the reset TorchRL runs next (``maybe_reset``) returns the
  restarted one without another jax call;
- each env's jumanji state travels packed into one uint8 row (``hcmarl.envs.smax_batched.byte_packing``).

Restart keys: the env at batch index ``i`` restarted by a step gets ``fold_in(reset_key, i)``, where
``key, reset_key = split(key)`` at each step (``tests/test_jumanji_envs.py`` replays this with jumanji's own
``reset`` and ``step``). ``truncated`` is the time limit reached without ``terminated``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, STATE, EnvInfo
from hcmarl.envs.jax_common import PackedEnvs, jax_device, restart_ended, seed_key, select_where
from hcmarl.envs.smax_batched import byte_packing
from hcmarl.errors import MissingDependencyError

FLAGS = ("done", "terminated", "truncated")


def require_jumanji(family: str) -> None:
    """``MissingDependencyError`` naming the ``jumanji`` extra unless jumanji is installed."""
    if importlib.util.find_spec("jumanji") is None:
        raise MissingDependencyError("jumanji", "jumanji", f"The '{family}/...' environments")


@dataclass(frozen=True)
class JumanjiTask:
    """One task of a jumanji family as the shared code steps it.

    ``observe(observation) -> (observations [N, obs_dim], state [state_dim])`` maps jumanji's observation of one
    env (its ``action_mask`` is used as it is); ``terminated(state, timestep)`` says whether a step that ended the
    episode ended it before its time limit; ``win(timestep)``, where the family has one, whether the episode was
    won; ``metrics`` name -> ``f(timestep)``, float episode metrics reported at every step. The sizes are read from
    the jumanji env once (``cached_property``: reading them from jax arrays at every step costs a jax dispatch each).
    """

    name: str
    env: Any
    obs_dim: int
    state_dim: int
    observe: Callable[[Any], tuple[Any, Any]]
    terminated: Callable[[Any, Any], Any]
    win: Callable[[Any], Any] | None = None
    metrics: dict[str, Callable[[Any], Any]] = field(default_factory=dict)

    @cached_property
    def n_agents(self) -> int:
        return int(self.env.num_agents)

    @cached_property
    def n_actions(self) -> int:
        return int(self.env.action_spec.num_values[0])

    @cached_property
    def max_steps(self) -> int:
        return int(self.env.time_limit)

    @cached_property
    def row_width(self) -> int:
        """``W``: floats in the row of one env (observations, state, masks)."""
        return self.n_agents * (self.obs_dim + self.n_actions) + self.state_dim

    @cached_property
    def outcome_width(self) -> int:
        """Floats after the observed row: reward, terminated, truncated, win, then the metrics."""
        return 4 + len(self.metrics)


@dataclass(frozen=True)
class Batched:
    """The jitted functions over a batch of envs of one task (all pure; ``key`` is carried through)."""

    init: Callable  # (key, num_envs) -> (key, packed states [E, B], rows [E, W]): new episodes
    select: Callable  # (mask [E], fresh [E, ...], old [E, ...]) -> fresh where mask else old
    step: Callable  # (key, packed states, actions [E, N] int32) -> (key, packed states, step rows [E, 2 W + outcome_width])
    unpack: Callable  # packed states [E, B] -> jumanji states batched on E


def discount_terminated(_state: Any, timestep: Any) -> Any:
    """``JumanjiTask.terminated`` of the envs whose last step's discount is 0 for every agent on termination and
    not on truncation (jumanji's LBF and Connector)."""
    return (timestep.discount == 0).all()


def env_keys(key: Any, indices: Any) -> Any:
    """The reset keys of the envs at batch ``indices``: ``fold_in(key, i)`` for env ``i``."""
    import jax

    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def build_batched(task: JumanjiTask) -> Batched:
    """``jax.jit(jax.vmap(...))`` of reset and step (with its auto-reset) for ``task``."""
    import jax
    import jax.numpy as jnp

    env = task.env
    pack, unpack = byte_packing(jax.eval_shape(lambda key: env.reset(key)[0], jax.random.PRNGKey(0)))

    def row(observation: Any) -> Any:
        observations, state = task.observe(observation)
        parts = [observations.reshape(-1), state.reshape(-1), observation.action_mask.reshape(-1)]
        return jnp.concatenate([part.astype(jnp.float32) for part in parts])

    def reset_one(key):
        state, timestep = env.reset(key)
        return pack(state), row(timestep.observation)

    def advance_one(packed, actions):
        """One env's step without restarting it: (packed state, observed row, outcome, ended)."""
        state, timestep = env.step(unpack(packed), actions)
        terminated = timestep.last() & task.terminated(state, timestep)
        truncated = timestep.last() & ~terminated
        win = task.win(timestep) if task.win is not None else False
        values = [jnp.sum(timestep.reward), terminated, truncated, win, *(f(timestep) for f in task.metrics.values())]
        return pack(state), row(timestep.observation), jnp.stack([jnp.asarray(v, jnp.float32) for v in values]), timestep.last()

    def init(key, num_envs):
        key, sub = jax.random.split(key)
        packed, rows = jax.vmap(reset_one)(env_keys(sub, jnp.arange(num_envs)))
        return key, packed, rows

    def restart(key, done, packed, rows):
        """New episodes where ``done`` (``restart_ended``), env ``i``'s from ``fold_in(key, i)``."""

        def fresh_some(key, index):
            return jax.vmap(reset_one)(env_keys(key, index))

        return restart_ended(fresh_some, lambda key: fresh_some(key, jnp.arange(done.shape[0])), key, done, packed, rows)

    def step(key, packed, actions):
        key, reset_key = jax.random.split(key)
        packed, seen, outcome, done = jax.vmap(advance_one)(packed, actions)
        packed, now = restart(reset_key, done, packed, seen)
        return key, packed, jnp.concatenate([seen, outcome, now], axis=1)

    return Batched(init=jax.jit(init, static_argnums=1), select=jax.jit(select_where), step=jax.jit(step), unpack=jax.jit(jax.vmap(unpack)))


_CACHE: dict[tuple[str, str], tuple[JumanjiTask, Batched]] = {}
"""(env name, repr of its kwargs) -> (task, its jitted functions); jax keeps one compilation per batch size inside
each jitted function, so envs built again (the evaluation env, tests) reuse it."""


def cached_task(family: str, task: str, kwargs: dict[str, Any], build: Callable[..., JumanjiTask]) -> tuple[JumanjiTask, Batched]:
    """``build(task, **kwargs)`` and its batched functions, from the module cache; ``MissingDependencyError`` naming
    the ``jumanji`` extra without jumanji."""
    require_jumanji(family)
    cache_key = (f"{family}/{task}", repr(sorted(kwargs.items())))
    if cache_key not in _CACHE:
        built = build(task, **kwargs)
        _CACHE[cache_key] = (built, build_batched(built))
    return _CACHE[cache_key]


class JumanjiEnv(EnvBase):
    """``num_envs`` envs of one jumanji task, stepped together by jitted jax code (module docstring).

    Args:
        task: the task.
        functions: its jitted functions (``build_batched``; ``cached_task`` gives both).
        num_envs: envs stepped together (the batch size).
        seed: seed of the jax PRNG key; ``None`` draws one from torch's global RNG.
        device: where the returned tensors live; jax simulates on the matching GPU if it has one.

    The step and the partial reset are compiled (and run once) in the constructor.
    """

    def __init__(self, task: JumanjiTask, functions: Batched, num_envs: int = 1, seed: int | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        import jax

        self._jax = jax
        self.task, self._fns = task, functions
        self._jax_device = jax_device(self.device)
        self._flags = (*FLAGS, "win") if self.task.win is not None else FLAGS
        key, packed, rows = self._fns.init(seed_key(seed, self._jax_device), num_envs)
        # SMAX's holder of the mutable state (key, packed states, rows, which envs the last step restarted), in a
        # plain object because an ``nn.Module`` attribute write costs about 0.1 ms
        self._envs = PackedEnvs(key=key, packed=packed, rows=self._torch(rows), restarted=torch.zeros(num_envs, dtype=torch.bool, device=self.device))
        self._warm_up()
        self._set_specs()

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        t = self.task
        return EnvInfo(
            name=t.name,
            n_agents=t.n_agents,
            obs_dim=t.obs_dim,
            state_dim=t.state_dim,
            action_kind="categorical",
            action_dim=t.n_actions,
            max_steps=t.max_steps,
            has_action_mask=True,
            has_win=t.win is not None,
            metrics=tuple(t.metrics),
        )

    @property
    def env_states(self) -> Any:
        """jumanji's states of the envs (a pytree batched on the envs), for inspecting them."""
        return self._fns.unpack(self._envs.packed)

    def _set_specs(self) -> None:
        """The layout's specs: masked categorical actions, the state, the done flags, ``win`` and the metrics."""
        t, E, d = self.task, self.batch_size[0], self.device
        N = t.n_agents
        flag = Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=d)
        metrics = {name: Unbounded(shape=(E, 1), dtype=torch.float32, device=d) for name in t.metrics}
        agents = Composite(
            observation=Unbounded(shape=(E, N, t.obs_dim), dtype=torch.float32, device=d),
            action_mask=Categorical(n=2, shape=(E, N, t.n_actions), dtype=torch.bool, device=d),
            shape=(E, N),
            device=d,
        )
        win = {"win": flag.clone()} if t.win is not None else {}
        self.observation_spec = Composite(
            agents=agents, state=Unbounded(shape=(E, t.state_dim), dtype=torch.float32, device=d), **win, **metrics, shape=(E,), device=d
        )
        action = Categorical(n=t.n_actions, shape=(E, N), dtype=torch.int64, device=d)
        self.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=d), shape=(E,), device=d)
        self.reward_spec = Composite(reward=Unbounded(shape=(E, 1), dtype=torch.float32, device=d), shape=(E,), device=d)
        self.done_spec = Composite({name: flag.clone() for name in FLAGS}, shape=(E,), device=d)

    def _warm_up(self) -> None:
        """Compile the step and the partial reset's selection now, not in the first iteration (results discarded)."""
        E, N = self.batch_size[0], self.task.n_agents
        b = self._envs
        self._jax.block_until_ready(self._fns.step(b.key, b.packed, self._to_jax(torch.zeros(E, N, dtype=torch.int32))))
        self._jax.block_until_ready(self._fns.select(self._to_jax(torch.zeros(E, dtype=torch.bool)), b.packed, b.packed))

    def _to_jax(self, tensor: torch.Tensor) -> Any:
        """A torch tensor as an input of the jitted functions: a NumPy view on the CPU, DLPack on a GPU (as SMAX)."""
        if self._jax_device.platform == "cpu":
            return tensor.cpu().contiguous().numpy()
        return self._jax.dlpack.from_dlpack(tensor.to(torch.device("cuda", self._jax_device.id)).contiguous())

    def _torch(self, array: Any) -> torch.Tensor:
        """A jax array as a torch tensor on ``self.device``: shared memory through DLPack (copied only across devices)."""
        return torch.from_dlpack(array).to(self.device)

    def _observed(self, rows: torch.Tensor, **entries: torch.Tensor) -> TensorDict:
        """The hcmarl layout of ``rows`` ``[E, W]`` plus ``entries`` (``[E, 1]`` each), built without per-entry checks."""
        t, E = self.task, self.batch_size[0]
        observations, states, masks = rows.split([t.n_agents * t.obs_dim, t.state_dim, t.n_agents * t.n_actions], dim=1)
        agents = TensorDict._new_unsafe(
            {"observation": observations.unflatten(1, (t.n_agents, t.obs_dim)), "action_mask": masks.unflatten(1, (t.n_agents, t.n_actions)) > 0.5},
            batch_size=torch.Size((E, t.n_agents)),
            device=self.device,
        )
        return TensorDict._new_unsafe({"agents": agents, "state": states, **entries}, batch_size=self.batch_size, device=self.device)

    def _fresh_entries(self) -> dict[str, torch.Tensor]:
        """What a reset reports besides the rows: every flag false, every metric 0."""
        no = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        zero = torch.zeros(*self.batch_size, 1, device=self.device)
        return {**{flag: no.clone() for flag in self._flags}, **{name: zero.clone() for name in self.task.metrics}}

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        b = self._envs
        mask = torch.ones_like(b.restarted) if reset is None else reset.reshape(-1).to(self.device)
        b.reset_where(mask, self._fns.init, self._fns.select, self._to_jax, self._torch)
        return self._observed(b.rows, **self._fresh_entries())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._to_jax(tensordict.get(ACTION).to(torch.int32))
        b, t = self._envs, self.task
        b.key, b.packed, rows = self._fns.step(b.key, b.packed, actions)
        seen, outcome, b.rows = self._torch(rows).split([t.row_width, t.outcome_width, t.row_width], dim=1)
        reward, flags, values = outcome.split([1, 3, len(t.metrics)], dim=1)
        terminated, truncated, win = (flags > 0.5).split(1, dim=1)
        done = terminated | truncated
        b.restarted = done.reshape(-1).clone()
        entries = {"reward": reward, "done": done, "terminated": terminated, "truncated": truncated}
        if t.win is not None:
            entries["win"] = win
        entries |= {name: values[:, i : i + 1] for i, name in enumerate(t.metrics)}
        return self._observed(seen, **entries)

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``EnvBase.maybe_reset`` for envs the step already restarted, without TorchRL's merge (as ``SmaxEnv``):
        the restarted rows, every flag false, every metric 0, and any other entry (the last action) zeroed where
        an env was reset. A done env the step did not restart takes the generic path."""
        done = tensordict.get("done", None)
        if done is None or not bool(done.any()):
            return tensordict
        b, ended = self._envs, done.reshape(-1)
        if bool((ended & ~b.restarted).any()):
            return super().maybe_reset(tensordict)
        fresh = self._fresh_entries()
        for key in tensordict.keys(True, True):
            if key not in (OBSERVATION, ACTION_MASK, STATE, *fresh):
                value = tensordict.get(key)
                tensordict.set(key, value.masked_fill(ended.reshape(-1, *[1] * (value.ndim - 1)), 0))
        restarted = self._observed(b.rows)
        for key in (OBSERVATION, ACTION_MASK, STATE):
            tensordict.set(key, restarted.get(key))
        for key, value in fresh.items():
            tensordict.set(key, torch.where(done, value, tensordict.get(key)) if key in self.task.metrics else value)
        b.restarted = torch.zeros_like(b.restarted)
        return tensordict

    def _set_seed(self, seed: int | None) -> None:
        self._envs.key = seed_key(seed, self._jax_device)
