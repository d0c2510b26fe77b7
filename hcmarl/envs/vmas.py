"""VMAS scenarios (including its MPE ports) in the hcmarl layout (DESIGN.md, "Conventions").

TorchRL's own ``VmasEnv`` reports a time limit as termination and splits agents of different
sizes into groups; this wrapper keeps ``truncated`` apart from ``terminated`` (so GAE
bootstraps at the time limit, ALGORITHMS.md section 1) and pads all agents into the one
group ``agents``. The team reward is the mean of the agents' rewards.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, EnvInfo, env_kwargs_error, team_reward_from_agents
from hcmarl.errors import MissingDependencyError, UnknownEnvError


def vmas_scenarios() -> list[str]:
    """Every scenario VMAS ships (its own, MPE ports and debug scenarios)."""
    vmas = _import_vmas()
    return sorted(set(vmas.scenarios) | set(vmas.mpe_scenarios) | set(vmas.debug_scenarios))


UNUSED_SCENARIO_KWARGS = r"Scenario kwargs: .* passed but not used by the scenario"
"""The start of VMAS's warning about scenario arguments a scenario did not read."""


def _import_vmas():
    if importlib.util.find_spec("vmas") is None:
        raise MissingDependencyError("vmas", "vmas", "The 'vmas/...' environments")
    import vmas

    return vmas


class VmasMultiAgentEnv(EnvBase):
    """A batch of VMAS worlds stepped on one device, with agents padded into one group."""

    def __init__(
        self,
        scenario: str,
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        continuous_actions: bool = True,
        max_steps: int = 100,
        **scenario_kwargs,
    ) -> None:
        vmas = _import_vmas()
        if scenario not in vmas_scenarios():
            raise UnknownEnvError(f"unknown VMAS scenario {scenario!r}; known: {', '.join('vmas/' + s for s in vmas_scenarios())}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.scenario = scenario
        self.max_steps = max_steps
        self.continuous_actions = continuous_actions
        with warnings.catch_warnings():
            # a scenario reads its arguments in make_world, and only warns about those it did not use: refuse them
            warnings.filterwarnings("error", message=UNUSED_SCENARIO_KWARGS, category=UserWarning)
            try:
                self._env = vmas.make_env(
                    scenario,
                    num_envs=num_envs,
                    device=device,
                    continuous_actions=continuous_actions,
                    max_steps=max_steps,
                    seed=seed,
                    terminated_truncated=True,
                    clamp_actions=True,
                    **scenario_kwargs,
                )
            except UserWarning as unused:
                raise env_kwargs_error(f"vmas/{scenario}", [k for k in scenario_kwargs if f"{k!r}:" in str(unused)]) from None
        agents = self._env.agents
        self.n_agents = len(agents)
        self._obs_sizes = [space.shape[0] for space in self._env.observation_space.spaces]
        if continuous_actions:
            self._act_sizes = [self._env.get_agent_action_size(a) for a in agents]
        else:
            self._act_sizes = [int(space.n) for space in self._env.action_space.spaces]
        self.obs_dim = max(self._obs_sizes)
        self.act_dim = max(self._act_sizes)
        self._u_range = max(float(a.u_range) for a in agents)
        self._action_mask = self._build_action_mask()
        self._make_specs()

    @property
    def info(self) -> EnvInfo:
        heterogeneous_actions = len(set(self._act_sizes)) > 1
        return EnvInfo(
            name=f"vmas/{self.scenario}",
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            state_dim=self.n_agents * self.obs_dim,
            action_kind="continuous" if self.continuous_actions else "categorical",
            action_dim=self.act_dim,
            max_steps=self.max_steps,
            has_action_mask=(not self.continuous_actions) and heterogeneous_actions,
            action_low=-self._u_range,
            action_high=self._u_range,
        )

    def _make_specs(self) -> None:
        E, N = self.batch_size[0], self.n_agents
        agents = Composite(
            observation=Unbounded(shape=(E, N, self.obs_dim), dtype=torch.float32, device=self.device),
            shape=(E, N),
            device=self.device,
        )
        if not self.continuous_actions and len(set(self._act_sizes)) > 1:
            agents["action_mask"] = Categorical(n=2, shape=(E, N, self.act_dim), dtype=torch.bool, device=self.device)
        self.observation_spec = Composite(
            agents=agents,
            state=Unbounded(shape=(E, N * self.obs_dim), dtype=torch.float32, device=self.device),
            shape=(E,),
            device=self.device,
        )
        if self.continuous_actions:
            action = Bounded(low=-self._u_range, high=self._u_range, shape=(E, N, self.act_dim), device=self.device)
        else:
            action = Categorical(n=self.act_dim, shape=(E, N), dtype=torch.int64, device=self.device, mask=self._action_mask)
        self.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=self.device), shape=(E,), device=self.device)
        self.reward_spec = Composite(reward=Unbounded(shape=(E, 1), device=self.device), shape=(E,), device=self.device)
        self.done_spec = Composite(
            done=Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=self.device),
            terminated=Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=self.device),
            truncated=Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=self.device),
            shape=(E,),
            device=self.device,
        )

    def _build_action_mask(self) -> torch.Tensor | None:
        if self.continuous_actions or len(set(self._act_sizes)) == 1:
            return None
        mask = torch.zeros(self.n_agents, self.act_dim, dtype=torch.bool, device=self.device)
        for i, n in enumerate(self._act_sizes):
            mask[i, :n] = True
        return mask.expand(self.batch_size[0], -1, -1)

    def _observation(self, obs: list[torch.Tensor]) -> TensorDict:
        E = self.batch_size[0]
        if len(set(self._obs_sizes)) == 1:
            padded = torch.stack(obs, dim=1)
        else:
            padded = torch.zeros(E, self.n_agents, self.obs_dim, device=self.device)
            for i, o in enumerate(obs):
                padded[:, i, : o.shape[-1]] = o
        agents = {"observation": padded}
        if self._action_mask is not None:
            agents["action_mask"] = self._action_mask.clone()
        return TensorDict(
            {"agents": TensorDict(agents, batch_size=(E, self.n_agents)), "state": padded.reshape(E, -1)},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _agent_actions(self, action: torch.Tensor) -> list[torch.Tensor]:
        if self.continuous_actions:
            return [action[:, i, :size] for i, size in enumerate(self._act_sizes)]
        return [action[:, i : i + 1] for i in range(self.n_agents)]

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset_mask = None if tensordict is None else tensordict.get("_reset", None)
        if reset_mask is None or bool(reset_mask.all()):
            obs = self._env.reset()
        else:
            for index in reset_mask.reshape(-1).nonzero().reshape(-1).tolist():
                self._env.reset_at(index, return_observations=False)
            obs = self._env.get_from_scenario(get_observations=True, get_rewards=False, get_infos=False, get_dones=False)[0]
        out = self._observation(obs)
        false = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update({"done": false, "terminated": false.clone(), "truncated": false.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs, rewards, terminated, truncated, _ = self._env.step(self._agent_actions(tensordict.get(ACTION)))
        out = self._observation(obs)
        terminated = terminated.reshape(-1, 1)
        truncated = truncated.reshape(-1, 1) & ~terminated
        out.update(
            {
                "reward": team_reward_from_agents(torch.stack(rewards, dim=-1)),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            }
        )
        return out

    def _set_seed(self, seed: int | None) -> None:
        self._env.seed(seed)

    def render_frame(self, index: int = 0) -> np.ndarray:
        """World ``index`` drawn as an RGB image ``[H, W, 3]`` (uint8), headless through pyglet's EGL
        (without EGL, pyglet needs a display: run under ``xvfb-run``)."""
        return self._env.render(mode="rgb_array", env_index=index)


def tasks() -> list[str]:
    """The VMAS scenarios ``make_env`` knows (``vmas/<scenario>``)."""
    return vmas_scenarios()


def env_kwargs(task: str) -> None:
    """None: a VMAS scenario reads its arguments while building its world, so only building it tells which it takes
    (:class:`VmasMultiAgentEnv` refuses those it did not read)."""
    return None


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> VmasMultiAgentEnv:
    """``make_env``'s entry for ``vmas/<scenario>``."""
    return VmasMultiAgentEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
