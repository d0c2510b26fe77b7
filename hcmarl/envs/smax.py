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

A finished battle is restarted inside the jitted step (only the battles that ended are reset,
at the step that reports them terminated or truncated); the step still returns the last
observation of the finished episode, and the restarted one is what the following reset
(``maybe_reset``, or ``reset`` with ``"_reset"`` set for that env) returns, without another jax
call. Resetting an env that was not done runs a jitted partial reset.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from hcmarl.envs.base import (
    ACTION,
    ACTION_MASK,
    OBSERVATION,
    STATE,
    EnvInfo,
    masked_categorical_info,
    named_parameters,
    quiet_import,
    set_masked_categorical_specs,
)
from hcmarl.envs.jax_common import PackedEnvs, jax_device, seed_key
from hcmarl.envs.smax_batched import Batched, build_batched
from hcmarl.errors import MissingDependencyError, UnknownEnvError


def _import_jaxmarl():
    """JaxMARL and its SMAX module, imported without the lines JaxMARL prints about its optional environments
    (:func:`hcmarl.envs.base.quiet_import`)."""
    if importlib.util.find_spec("jaxmarl") is None:
        raise MissingDependencyError("jaxmarl", "smax", "The 'smax/...' environments")
    jaxmarl, smax_env = quiet_import("jaxmarl", "jaxmarl.environments.smax.smax_env")
    return jaxmarl, smax_env


def smax_maps() -> list[str]:
    """Every scenario in JaxMARL's ``MAP_NAME_TO_SCENARIO``."""
    return sorted(_import_jaxmarl()[1].MAP_NAME_TO_SCENARIO)


_RESET_KEYS = {OBSERVATION, ACTION_MASK, STATE, "win", "done", "terminated", "truncated"}
"""What ``SmaxEnv._reset`` returns, as ``keys(True, True)`` names them."""

_CACHE: dict[tuple[str, str], tuple[Any, Batched]] = {}
"""(map, repr of the scenario kwargs) -> (JaxMARL env, its jitted functions); jax keeps one
compilation per batch size inside each jitted function, so envs built again reuse it."""


def _smax_env(map_name: str, env_kwargs: dict[str, Any]) -> tuple[Any, Batched]:
    """The JaxMARL env for ``map_name`` and its batched functions, from the module cache."""
    cache_key = (map_name, repr(sorted(env_kwargs.items())))
    if cache_key not in _CACHE:
        jaxmarl, smax_env = _import_jaxmarl()
        env = jaxmarl.make("HeuristicEnemySMAX", scenario=smax_env.map_name_to_scenario(map_name), **env_kwargs)
        _CACHE[cache_key] = (env, build_batched(env))
    return _CACHE[cache_key]


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
        self._jax_device = jax_device(self.device)
        self._row_width = self.n_agents * (self.obs_dim + self.n_actions) + self.state_dim  # W of ``Batched``
        key, packed, rows = self._fns.init(seed_key(seed, self._jax_device), num_envs)
        restarted = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._envs = PackedEnvs(key=key, packed=packed, rows=self._torch(rows), restarted=restarted)
        self._warm_up()
        set_masked_categorical_specs(self, self.n_agents, self.obs_dim, self.state_dim, self.n_actions)

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        return masked_categorical_info(f"smax/{self.map_name}", self)

    @property
    def battle_states(self) -> Any:
        """JaxMARL's states of the battles (a pytree batched on the envs), for inspecting or editing them.

        Setting it replaces the battles; the rows the agents see change only at the next step.
        """
        return self._fns.unpack(self._envs.packed)

    @battle_states.setter
    def battle_states(self, states: Any) -> None:
        self._envs.packed = self._fns.pack(states)

    def _warm_up(self) -> None:
        """Compile the step and the partial reset's selection now, not in the first iteration (results discarded).

        The inputs are made as ``_step`` and ``_reset`` make theirs, so the calls hit the same compilation.
        """
        E, N = self.batch_size[0], self.n_agents
        actions = self._to_jax(torch.zeros(E, N, dtype=torch.int32))
        mask = self._to_jax(torch.zeros(E, dtype=torch.bool))
        b = self._envs
        self._jax.block_until_ready(self._fns.step(b.key, b.packed, actions))
        self._jax.block_until_ready(self._fns.select(mask, b.packed, b.packed))

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

    def _split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of ``rows`` ``[E, W]``: observations ``[E, N, obs_dim]``, states ``[E, state_dim]``, masks ``[E, N, n_actions]`` (bool)."""
        N, obs_dim, n_actions = self.n_agents, self.obs_dim, self.n_actions
        observations, states, masks = rows.split([N * obs_dim, self.state_dim, N * n_actions], dim=1)
        return observations.unflatten(1, (N, obs_dim)), states, masks.unflatten(1, (N, n_actions)) > 0.5

    def _observed(self, rows: torch.Tensor, **entries: torch.Tensor) -> TensorDict:
        """The hcmarl layout of ``rows`` ``[E, W]``, plus ``entries`` (``[E, 1]`` each).

        Built without TensorDict's checks of each entry (``_new_unsafe``, as TorchRL's Brax wrapper
        does): every shape is fixed by ``_split`` and the env's specs, and the checks cost a tenth
        of the Python time of a step.
        """
        observations, states, masks = self._split(rows)
        agents_shape = torch.Size((self.batch_size[0], self.n_agents))
        agents = TensorDict._new_unsafe({"observation": observations, "action_mask": masks}, batch_size=agents_shape, device=self.device)
        return TensorDict._new_unsafe({"agents": agents, "state": states, **entries}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        b = self._envs
        mask = torch.ones_like(b.restarted) if reset is None else reset.reshape(-1).to(self.device)
        b.reset_where(mask, self._fns.init, self._fns.select, self._to_jax, self._torch)
        no = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return self._observed(b.rows, win=no, done=no.clone(), terminated=no.clone(), truncated=no.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._to_jax(tensordict.get(ACTION).to(torch.int32))
        b = self._envs
        b.key, b.packed, rows = self._fns.step(b.key, b.packed, actions)
        seen, outcome, b.rows = self._torch(rows).split([self._row_width, 4, self._row_width], dim=1)
        terminated, truncated, win = (outcome[:, 1:] > 0.5).split(1, dim=1)
        done = terminated | truncated
        b.restarted = done.reshape(-1).clone()
        return self._observed(seen, reward=outcome[:, :1], win=win, done=done, terminated=terminated, truncated=truncated)

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``EnvBase.maybe_reset`` for battles the step already restarted, without its TensorDict merge.

        After a step, ``self._envs.rows`` holds the restarted battles' first rows and, for the
        others, the rows just observed. So the reset's result is those rows with every done flag and
        ``win`` false, and any other entry (the last action) zeroed where a battle ended, as
        TorchRL's merge pads it: the same as the generic path (``tests/test_smax_env.py`` compares
        the two), at about a fifth of its cost per step. A done env the step did not restart
        (``tensordict`` not from the last step) takes the generic path.
        """
        done = tensordict.get("done", None)
        if done is None or not bool(done.any()):
            return tensordict
        battles, ended = self._envs, done.reshape(-1)
        if bool((ended & ~battles.restarted).any()):
            return super().maybe_reset(tensordict)
        for key in tensordict.keys(True, True):  # what a reset does not give (the last action): 0 where reset, as TorchRL pads
            if key not in _RESET_KEYS:
                value = tensordict.get(key)
                tensordict.set(key, value.masked_fill(ended.reshape(-1, *[1] * (value.ndim - 1)), 0))
        observations, states, masks = self._split(battles.rows)
        tensordict.set(OBSERVATION, observations)
        tensordict.set(ACTION_MASK, masks)
        tensordict.set(STATE, states)
        for flag in ("win", "done", "terminated", "truncated"):
            tensordict.set(flag, torch.zeros_like(done))
        battles.restarted = torch.zeros_like(battles.restarted)
        return tensordict

    def _jax_torch_device(self) -> torch.device:
        """The torch device naming the memory jax simulates in (for handing actions over)."""
        if self._jax_device.platform == "gpu":
            return torch.device("cuda", self._jax_device.id)
        return torch.device("cpu")

    def _set_seed(self, seed: int | None) -> None:
        self._envs.key = seed_key(seed, self._jax_device)


def tasks() -> list[str]:
    """The SMAX maps ``make_env`` knows (``smax/<map>``)."""
    return smax_maps()


def env_kwargs(task: str) -> set[str]:
    """The ``data.env_kwargs`` an SMAX map takes: those of JaxMARL's ``HeuristicEnemySMAX`` and of the ``SMAX`` it
    wraps (which it builds from its ``**env_kwargs``), less ``scenario`` (the map's)."""
    from jaxmarl.environments.smax.heuristic_enemy_smax_env import HeuristicEnemySMAX

    _, smax_env = _import_jaxmarl()
    return named_parameters(HeuristicEnemySMAX.__init__) | named_parameters(smax_env.SMAX.__init__, skip=("scenario",))


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> SmaxEnv:
    """``make_env``'s entry for ``smax/<map>``."""
    return SmaxEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
