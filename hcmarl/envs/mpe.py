"""PettingZoo's MPE (package ``mpe2``) in the hcmarl layout (DESIGN.md, "Conventions").

``num_envs`` PettingZoo parallel envs (CPU, numpy) are stepped one after another and their
results stacked into one batch. All agents go into the group ``agents``: observations are
zero-padded to the longest, actions are one integer per agent, and when agents have
different action counts (``simple_speaker_listener_v4``: speaker 3, listener 5)
``("agents", "action_mask")`` marks the padded actions unavailable. ``state`` is the env's
own ``state()``; the team reward is the mean of the agents' rewards. Reaching
``max_cycles`` sets ``truncated``, never ``terminated`` (ALGORITHMS.md section 1).

TorchRL's ``PettingZooEnv`` task loader still imports ``pettingzoo.mpe``, which moved to
``mpe2``, and splits agents into groups by name; hence this wrapper.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, EnvInfo, keyword_names, named_parameters, team_reward_from_agents
from hcmarl.errors import ConfigError, MissingDependencyError, UnknownEnvError

COOPERATIVE_SCENARIOS: tuple[str, ...] = (
    "simple_spread_v3",
    "simple_reference_v3",
    "simple_speaker_listener_v4",
    "simple_formation_v1",
    "simple_line_v1",
    "collect_treasure_v1",
)
"""The mpe2 scenarios whose agents share one goal (the competitive ones are left out)."""


def _check_installed() -> None:
    """``MissingDependencyError`` naming the extra ``mpe`` unless ``mpe2`` is installed (without importing it)."""
    if importlib.util.find_spec("mpe2") is None:
        raise MissingDependencyError("mpe2", "mpe", "The 'mpe/...' environments")


def _import_mpe2() -> ModuleType:
    """``mpe2``, or ``MissingDependencyError`` naming the extra ``mpe``."""
    _check_installed()
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # mpe2 imports pygame for rendering
    import mpe2

    return mpe2


def _scenario_module(scenario: str) -> ModuleType:
    """The ``mpe2.<scenario>`` module, or ``UnknownEnvError`` listing the known scenarios."""
    _import_mpe2()
    if scenario not in COOPERATIVE_SCENARIOS:
        raise UnknownEnvError(f"unknown MPE scenario {scenario!r}; known: {', '.join('mpe/' + s for s in COOPERATIVE_SCENARIOS)}")
    return importlib.import_module(f"mpe2.{scenario}")


class MpeMultiAgentEnv(EnvBase):
    """``num_envs`` mpe2 parallel envs stepped in a loop, agents padded into one group.

    Args:
        scenario: one of :data:`COOPERATIVE_SCENARIOS`, e.g. ``"simple_spread_v3"``.
        num_envs: envs in the batch.
        seed: env ``i`` is reset with ``seed + i`` at its first reset (later resets continue
            its own generator); ``None`` leaves the envs unseeded.
        device: where the returned tensors live (the simulation runs on CPU).
        max_cycles: steps per episode; reaching it is a truncation.
        **scenario_kwargs: passed to ``mpe2.<scenario>.parallel_env`` (e.g. ``N``, ``local_ratio``).
    """

    def __init__(
        self,
        scenario: str,
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        max_cycles: int = 25,
        **scenario_kwargs,
    ) -> None:
        module = _scenario_module(scenario)
        if scenario_kwargs.pop("continuous_actions", False):
            raise ConfigError(
                f"mpe/{scenario} has discrete actions only; drop continuous_actions from data.env_kwargs "
                f"(VMAS's port vmas/{scenario.rsplit('_v', 1)[0]} has continuous actions)"
            )
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.scenario = scenario
        self.max_cycles = max_cycles
        self._envs = [
            module.parallel_env(max_cycles=max_cycles, continuous_actions=False, render_mode="rgb_array", **scenario_kwargs) for _ in range(num_envs)
        ]
        first = self._envs[0]
        self.agent_names: list[str] = list(first.possible_agents)
        self.n_agents = len(self.agent_names)
        self._obs_sizes = [first.observation_space(a).shape[0] for a in self.agent_names]
        self._act_sizes = [int(first.action_space(a).n) for a in self.agent_names]
        self.obs_dim = max(self._obs_sizes)
        self.act_dim = max(self._act_sizes)
        self.state_dim = int(first.state_space.shape[0])
        self._next_seeds: list[int | None] = [None] * num_envs
        self._set_seed(seed)
        self._obs = np.zeros((num_envs, self.n_agents, self.obs_dim), dtype=np.float32)
        self._state = np.zeros((num_envs, self.state_dim), dtype=np.float32)
        self._action_mask = self._build_action_mask()
        self._make_specs()

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        return EnvInfo(
            name=f"mpe/{self.scenario}",
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            state_dim=self.state_dim,
            action_kind="categorical",
            action_dim=self.act_dim,
            max_steps=self.max_cycles,
            has_action_mask=self._action_mask is not None,
        )

    def _make_specs(self) -> None:
        E, N, dev = self.batch_size[0], self.n_agents, self.device
        flag = lambda: Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=dev)  # noqa: E731
        observation = Unbounded(shape=(E, N, self.obs_dim), dtype=torch.float32, device=dev)
        agents = Composite(observation=observation, shape=(E, N), device=dev)
        if self._action_mask is not None:
            agents["action_mask"] = Categorical(n=2, shape=(E, N, self.act_dim), dtype=torch.bool, device=dev)
        self.observation_spec = Composite(
            agents=agents, state=Unbounded(shape=(E, self.state_dim), dtype=torch.float32, device=dev), shape=(E,), device=dev
        )
        action = Categorical(n=self.act_dim, shape=(E, N), dtype=torch.int64, device=dev, mask=self._action_mask)
        self.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=dev), shape=(E,), device=dev)
        self.reward_spec = Composite(reward=Unbounded(shape=(E, 1), dtype=torch.float32, device=dev), shape=(E,), device=dev)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=(E,), device=dev)

    def _build_action_mask(self) -> torch.Tensor | None:
        """``[E, N, act_dim]``, True for each agent's own actions; ``None`` when all agents have the same count."""
        if len(set(self._act_sizes)) == 1:
            return None
        mask = torch.zeros(self.n_agents, self.act_dim, dtype=torch.bool, device=self.device)
        for i, n in enumerate(self._act_sizes):
            mask[i, :n] = True
        return mask.expand(self.batch_size[0], -1, -1)

    def _store(self, index: int, observations: dict[str, np.ndarray]) -> None:
        """Write env ``index``'s observations (padded) and global state into the caches."""
        for j, agent in enumerate(self.agent_names):
            self._obs[index, j, : self._obs_sizes[j]] = observations[agent]
        self._state[index] = self._envs[index].state()

    def _observation(self, **extra: torch.Tensor) -> TensorDict:
        """The cached observations, state (and action mask) as a TensorDict, plus ``extra`` entries."""
        E = self.batch_size[0]
        agents = {"observation": torch.from_numpy(self._obs.copy()).to(self.device)}
        if self._action_mask is not None:
            agents["action_mask"] = self._action_mask.clone()
        return TensorDict(
            {
                "agents": TensorDict(agents, batch_size=(E, self.n_agents), device=self.device),
                "state": torch.from_numpy(self._state.copy()).to(self.device),
                **extra,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset_mask = None if tensordict is None else tensordict.get("_reset", None)
        indices = range(self.batch_size[0]) if reset_mask is None else reset_mask.reshape(-1).nonzero().reshape(-1).tolist()
        for i in indices:
            observations, _ = self._envs[i].reset(seed=self._next_seeds[i])
            self._next_seeds[i] = None
            self._store(i, observations)
        false = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return self._observation(done=false, terminated=false.clone(), truncated=false.clone())

    def _check_actions(self, actions: np.ndarray) -> None:
        """Raise ``ValueError`` when an agent gets an action beyond its own count (a padded one)."""
        too_large = actions >= np.asarray(self._act_sizes)
        if too_large.any() or (actions < 0).any():
            env, agent = np.argwhere(too_large | (actions < 0))[0]
            raise ValueError(
                f"mpe/{self.scenario}: env {env} gives agent {self.agent_names[agent]!r} action {actions[env, agent]}, "
                f"outside its {self._act_sizes[agent]} actions; sample actions with ('agents', 'action_mask')"
            )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION).cpu().numpy()
        self._check_actions(actions)
        E, N = actions.shape
        rewards = np.zeros((E, N), dtype=np.float32)
        any_terminated = np.zeros((E, 1), dtype=bool)
        any_truncated = np.zeros((E, 1), dtype=bool)
        for i, env in enumerate(self._envs):
            step_actions = {agent: int(actions[i, j]) for j, agent in enumerate(self.agent_names)}
            observations, reward, term, trunc, _ = env.step(step_actions)
            self._store(i, observations)
            rewards[i] = [reward[agent] for agent in self.agent_names]
            any_terminated[i] = any(term.values())
            any_truncated[i] = any(trunc.values())
        terminated = torch.from_numpy(any_terminated).to(self.device)
        truncated = torch.from_numpy(any_truncated).to(self.device) & ~terminated
        return self._observation(
            reward=team_reward_from_agents(torch.from_numpy(rewards).to(self.device)),
            done=terminated | truncated,
            terminated=terminated,
            truncated=truncated,
        )

    def _set_seed(self, seed: int | None) -> None:
        """Env ``i`` is reset with ``seed + i`` at its next reset."""
        self._next_seeds = [None if seed is None else seed + i for i in range(self.batch_size[0])]

    def render_frame(self, index: int = 0) -> np.ndarray:
        """Env ``index`` drawn as an RGB image ``[H, W, 3]`` (uint8), off-screen with pygame."""
        return self._envs[index].render()


def tasks() -> list[str]:
    """The MPE scenarios ``make_env`` knows (``mpe/<scenario>``; a static list: ``mpe2`` is not imported)."""
    _check_installed()
    return list(COOPERATIVE_SCENARIOS)


def env_kwargs(task: str) -> set[str] | None:
    """The ``data.env_kwargs`` an MPE scenario takes: the wrapper's and its ``raw_env``'s (``render_mode`` is the wrapper's)."""
    scenario = keyword_names(_scenario_module(task).raw_env, skip=("render_mode",))
    own = named_parameters(MpeMultiAgentEnv.__init__, skip=("scenario", "num_envs", "seed", "device"))
    return None if scenario is None else own | scenario


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> MpeMultiAgentEnv:
    """``make_env``'s entry for ``mpe/<scenario>``."""
    return MpeMultiAgentEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
