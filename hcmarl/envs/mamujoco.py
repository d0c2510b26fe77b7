"""Multi-agent MuJoCo (gymnasium-robotics' MaMuJoCo v1) in the hcmarl layout (DESIGN.md, "Conventions").

A task is ``<robot>-<partition>``: one of gymnasium-robotics' built-in factorisations of a
Gymnasium MuJoCo robot (``HalfCheetah-2x3``, ``Ant-4x2``, ``Humanoid-9|8``, ...), its
``CoupledHalfCheetah-1p1`` (:mod:`hcmarl.envs.coupled_half_cheetah`), or ``Walker2d-6x1``, the
HCPO paper's one-agent-per-joint Walker, built here through gymnasium-robotics' custom
``agent_factorization``. The layout (:mod:`hcmarl.envs.base`):

- ``("agents", "observation")``: float32 ``[E, N, D]``, each agent's local observation
  zero-padded at the end to the largest agent's size ``D``;
- ``"state"``: float32 ``[E, S]``, the robot's full Gymnasium observation (``env.state()``);
- ``("agents", "action")``: float32 ``[E, N, A]``; agent ``i`` uses its first ``act_sizes[i]``
  entries, the rest (padding, where agents have different action sizes) are ignored; actions
  are clipped to the action box before they reach MuJoCo;
- ``"reward"``: float32 ``[E, 1]``, the robot's reward (MaMuJoCo shares it between agents);
- ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[E, 1]``; ``truncated`` is the time
  limit (``max_steps``), ``terminated`` the robot's own end (e.g. Hopper falling over).

The ``E`` sub-envs step in this process (``num_workers=1``) or in ``num_workers`` worker
processes (DESIGN.md, "Scale": CPU-bound envs step in worker processes), each owning a
contiguous slice of the batch. A worker that fails ends the step with its traceback
(``hcmarl.envs.mamujoco_workers.MaMuJoCoWorkerError``); one that dies ends it with its exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, EnvInfo, keyword_names, named_parameters
from hcmarl.envs.mamujoco_tasks import MANY_SEGMENT_BASE, default_max_steps, make_raw_env, split_task, tasks
from hcmarl.envs.mamujoco_workers import WorkerPool
from hcmarl.errors import ConfigError

__all__ = ["LocalBatch", "MaMuJoCoEnv", "env_kwargs", "make", "tasks"]


@dataclass(frozen=True)
class Layout:
    """Sizes of a task's agents, read off a raw env (the same in every sub-env and worker)."""

    obs_sizes: tuple[int, ...]
    act_sizes: tuple[int, ...]
    state_dim: int
    action_low: float
    action_high: float

    @classmethod
    def of(cls, raw) -> Layout:
        spaces = [raw.action_space(agent) for agent in raw.possible_agents]
        return cls(
            obs_sizes=tuple(raw.observation_space(agent).shape[0] for agent in raw.possible_agents),
            act_sizes=tuple(space.shape[0] for space in spaces),
            state_dim=int(raw.single_agent_env.observation_space.shape[0]),
            action_low=float(spaces[0].low[0]),
            action_high=float(spaces[0].high[0]),
        )

    @property
    def obs_dim(self) -> int:
        return max(self.obs_sizes)

    @property
    def act_dim(self) -> int:
        return max(self.act_sizes)


# ---- a batch of raw envs, stepped in one process ------------------------------------------------
class LocalBatch:
    """Raw envs stepped one after another in this process; arrays in, padded arrays out."""

    def __init__(self, task: str, num_envs: int, **env_kwargs: Any) -> None:
        self.envs = [make_raw_env(task, **env_kwargs) for _ in range(num_envs)]
        self.layout = Layout.of(self.envs[0])

    def _observe(self, envs: list, observations: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """``envs``' per-agent ``observations`` padded into float32 ``[n, N, D]``, and their states ``[n, S]``."""
        obs = np.zeros((len(envs), len(self.layout.obs_sizes), self.layout.obs_dim), dtype=np.float32)
        for e, agents in enumerate(observations):
            for i, agent_obs in enumerate(agents.values()):
                obs[e, i, : agent_obs.shape[0]] = agent_obs
        return obs, np.stack([env.state() for env in envs]).astype(np.float32)

    def reset(self, indices: list[int], seeds: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """Reset the envs at ``indices`` (seeding each with its entry of ``seeds``); their obs and states."""
        envs = [self.envs[i] for i in indices]
        return self._observe(envs, [env.reset(seed=seed)[0] for env, seed in zip(envs, seeds, strict=True)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Step every env with ``actions [n, N, A]``: obs, states, rewards ``[n]``, terminated, truncated ``[n]``."""
        rewards, terminated, truncated = (np.zeros(len(self.envs), dtype=t) for t in (np.float32, bool, bool))
        clipped = np.clip(actions, self.layout.action_low, self.layout.action_high)
        observations = []
        for e, env in enumerate(self.envs):
            agent_actions = {
                agent: clipped[e, i, :size] for i, (agent, size) in enumerate(zip(env.possible_agents, self.layout.act_sizes, strict=True))
            }
            agent_obs, reward, term, trunc, _ = env.step(agent_actions)
            first = env.possible_agents[0]
            observations.append(agent_obs)
            rewards[e], terminated[e], truncated[e] = reward[first], term[first], trunc[first]
        return (*self._observe(self.envs, observations), rewards, terminated, truncated)

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ---- the same batch split over worker processes -------------------------------------------------
class MaMuJoCoEnv(EnvBase):
    """A batch of ``num_envs`` MaMuJoCo envs in the hcmarl layout (see the module docstring).

    Args:
        task: ``<robot>-<partition>``, one of :func:`tasks`.
        num_envs: sub-envs in the batch.
        seed: sub-env ``i`` is seeded with ``seed + i`` at its first reset; ``None`` seeds from the OS.
        device: where the returned tensors live (MuJoCo itself runs on the CPU).
        num_workers: processes stepping the sub-envs (1: this process); at most ``num_envs`` are used.
        max_steps: time limit of an episode; ``None`` is Gymnasium's default for the robot (1000 for most).
        agent_obsk: how many joints away an agent observes (MaMuJoCo's ``agent_obsk``, default 1).
        **gym_kwargs: arguments of the robot's Gymnasium env (e.g. ``ctrl_cost_weight``).
    """

    def __init__(
        self,
        task: str,
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 1,
        max_steps: int | None = None,
        agent_obsk: int = 1,
        **gym_kwargs: Any,
    ) -> None:
        robot, _ = split_task(task)
        if num_workers < 1:
            raise ConfigError(f"data.env_kwargs.num_workers must be at least 1, got {num_workers}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.task = task
        self.max_steps = default_max_steps(robot) if max_steps is None else max_steps
        env_kwargs = {"max_steps": self.max_steps, "agent_obsk": agent_obsk, **gym_kwargs}
        workers = min(num_workers, num_envs)
        self._batch = LocalBatch(task, num_envs, **env_kwargs) if workers == 1 else WorkerPool(task, num_envs, workers, **env_kwargs)
        self.layout = self._batch.layout
        self.n_agents = len(self.layout.obs_sizes)
        self._seeds = self._seeds_from(seed)
        self._last: TensorDict | None = None
        self._make_specs()

    @property
    def info(self) -> EnvInfo:
        return EnvInfo(
            name=f"mamujoco/{self.task}",
            n_agents=self.n_agents,
            obs_dim=self.layout.obs_dim,
            state_dim=self.layout.state_dim,
            action_kind="continuous",
            action_dim=self.layout.act_dim,
            max_steps=self.max_steps,
            action_low=self.layout.action_low,
            action_high=self.layout.action_high,
        )

    def _make_specs(self) -> None:
        E, N, device = self.batch_size[0], self.n_agents, self.device
        flag = lambda: Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=device)  # noqa: E731
        self.observation_spec = Composite(
            agents=Composite(
                observation=Unbounded(shape=(E, N, self.layout.obs_dim), dtype=torch.float32, device=device),
                shape=(E, N),
                device=device,
            ),
            state=Unbounded(shape=(E, self.layout.state_dim), dtype=torch.float32, device=device),
            shape=(E,),
            device=device,
        )
        action = Bounded(
            low=self.layout.action_low, high=self.layout.action_high, shape=(E, N, self.layout.act_dim), dtype=torch.float32, device=device
        )
        self.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=device), shape=(E,), device=device)
        self.reward_spec = Composite(reward=Unbounded(shape=(E, 1), dtype=torch.float32, device=device), shape=(E,), device=device)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=(E,), device=device)

    def _seeds_from(self, seed: int | None) -> list[int | None]:
        """The seed each sub-env takes at its next reset: ``seed + i``, or ``None`` (OS entropy)."""
        return [None if seed is None else seed + i for i in range(self.batch_size[0])]

    def _set_seed(self, seed: int | None) -> None:
        self._seeds = self._seeds_from(seed)

    def _tensordict(self, obs: np.ndarray, state: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, **extra: torch.Tensor) -> TensorDict:
        E, N = obs.shape[0], self.n_agents
        ended = torch.from_numpy(terminated).reshape(E, 1)
        cut = torch.from_numpy(truncated).reshape(E, 1) & ~ended
        return TensorDict(
            {
                "agents": TensorDict({"observation": torch.from_numpy(obs)}, batch_size=(E, N)),
                "state": torch.from_numpy(state),
                "done": ended | cut,
                "terminated": ended,
                "truncated": cut,
                **extra,
            },
            batch_size=(E,),
        ).to(self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        """Reset the sub-envs flagged in ``"_reset"`` (all without one); the others keep their last step's data."""
        E = self.batch_size[0]
        flags = None if tensordict is None else tensordict.get("_reset", None)
        if flags is None or self._last is None:
            indices = list(range(E))
        else:
            indices = flags.reshape(E).nonzero().reshape(-1).tolist()
        obs, state = self._batch.reset(indices, [self._seeds[i] for i in indices])
        for i in indices:
            self._seeds[i] = None
        no = np.zeros(len(indices), dtype=bool)
        fresh = self._tensordict(obs, state, no, no)
        if self._last is None or len(indices) == E:
            self._last = fresh
        else:
            self._last = self._last.clone()  # the old one may be held by the caller: never write into it
            self._last[torch.tensor(indices, device=self.device)] = fresh
        return self._last.clone()

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION).detach().to("cpu", torch.float32).numpy()
        obs, state, reward, terminated, truncated = self._batch.step(actions)
        out = self._tensordict(obs, state, terminated, truncated, reward=torch.from_numpy(reward).reshape(-1, 1))
        self._last = out.exclude("reward")
        return out

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the sub-envs and end any worker processes."""
        self._batch.close()
        super().close(raise_if_closed=raise_if_closed)


def env_kwargs(task: str) -> set[str] | None:
    """The ``data.env_kwargs`` a MaMuJoCo task takes: :class:`MaMuJoCoEnv`'s own and the arguments of the robot's
    Gymnasium env (none for ``CoupledHalfCheetah``), less those hcmarl sets (a many-segment robot's ``xml_file``)."""
    robot, _ = split_task(task)
    own = named_parameters(MaMuJoCoEnv.__init__, skip=("task", "num_envs", "seed", "device"))
    if robot == "CoupledHalfCheetah":
        return own
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    entry_point = gymnasium.spec(f"{MANY_SEGMENT_BASE.get(robot, robot)}-v5").entry_point
    if not isinstance(entry_point, str):
        return None
    creator = load_env_creator(entry_point)
    if not isinstance(creator, type):
        return None
    skip = ("model_path", "observation_space", *(("xml_file",) if robot in MANY_SEGMENT_BASE else ()))
    gym = keyword_names(creator, skip=skip)
    return None if gym is None else own | gym


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> MaMuJoCoEnv:
    """``make_env``'s entry for ``mamujoco/<robot>-<partition>``; ``kwargs`` as :class:`MaMuJoCoEnv`."""
    return MaMuJoCoEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
