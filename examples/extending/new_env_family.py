"""Template: a new env family, named in a recipe by this module's dotted path (docs/extending.md, "A new env family").

The game (small enough to read in one sitting, and learnable in seconds): ``N`` agents see a target
t in {0..K-1}, drawn anew every step, and their own one-hot id. Agent i scores when it plays (t + i) mod K, so the
agents must tell themselves apart. The team reward is the fraction of agents that scored,

    r_t = (1 / N) * sum_i 1[a_i = (t + i) mod K],

so a random team earns T / K per episode of T steps and a perfect one T.

What hcmarl asks of a family (``hcmarl/envs/__init__.py``): a module with ``tasks() -> list[str]`` and
``make(task, num_envs, seed, device, **kwargs) -> EnvBase``, whose env has an ``info`` (``hcmarl.envs.EnvInfo``) and
the layout of ``hcmarl/envs/base.py``: batch ``[E]``; ``("agents", "observation")`` ``[E, N, obs_dim]`` and
``("agents", "action")`` ``[E, N]`` inside the group ``agents``; ``state`` ``[E, state_dim]`` at the top level;
``reward`` ``[E, 1]`` (the team's); ``done``, ``terminated``, ``truncated`` ``[E, 1]``.

``make_env`` takes a family that is not one of hcmarl's own as the dotted path of its module, so this one is
``examples.extending.new_env_family/<task>``. From the repository root (``PYTHONPATH=.`` makes ``examples``
importable; a module in a package you have installed needs nothing):

    PYTHONPATH=. hcmarl fit --config recipes/mappo/coordsum_3x10.yaml --data.env examples.extending.new_env_family/3x4
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, OBSERVATION, REWARD, STATE, EnvInfo

FAMILY = __name__  # a family of the user's is named by its module's dotted path
TASKS: dict[str, tuple[int, int]] = {"2x3": (2, 3), "3x4": (3, 4), "5x8": (5, 8)}
"""Task name -> ``(n_agents, n_actions)``."""


class MatchEnv(EnvBase):
    """A batch of ``num_envs`` games of "play the target shifted by your id", stepped together in torch.

    Args:
        task: one of :data:`TASKS`.
        num_envs: games stepped together (the batch size ``E``).
        seed: seed of the env's own generator; None draws one from torch's global generator.
        device: where the env's tensors live.
        episode_length: steps per episode ``T``; an episode ends in a true termination.
    """

    def __init__(
        self, task: str = "3x4", num_envs: int = 1, seed: int | None = None, device: str | torch.device = "cpu", episode_length: int = 25
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown {FAMILY} task {task!r}; valid tasks: {', '.join(TASKS)}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.task, self.episode_length = task, episode_length
        self.n_agents, self.n_actions = TASKS[task]
        e, n, k, d = num_envs, self.n_agents, self.n_actions, self.device
        self.obs_dim, self.state_dim = k + n, k + 1  # observation: target one-hot, own id; state: target one-hot, time
        self._generator = torch.Generator(device=d)
        self._generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_()) if seed is None else seed)
        self._ids = torch.eye(n, device=d).expand(e, n, n)
        self._shift = torch.arange(n, device=d)  # agent i's offset from the target
        self.target = torch.zeros(e, dtype=torch.int64, device=d)
        self.step_count = torch.zeros(e, dtype=torch.int64, device=d)

        flag = Categorical(n=2, shape=(e, 1), dtype=torch.bool, device=d)
        self.full_observation_spec = Composite(
            agents=Composite(observation=Unbounded(shape=(e, n, self.obs_dim), device=d), shape=(e, n), device=d),
            state=Unbounded(shape=(e, self.state_dim), device=d),
            shape=(e,),
            device=d,
        )
        self.full_action_spec = Composite(
            agents=Composite(action=Categorical(n=k, shape=(e, n), dtype=torch.int64, device=d), shape=(e, n), device=d),
            shape=(e,),
            device=d,
        )
        self.full_reward_spec = Composite(reward=Unbounded(shape=(e, 1), device=d), shape=(e,), device=d)
        self.full_done_spec = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(e,), device=d)

    @property
    def info(self) -> EnvInfo:
        """What the networks read to size themselves (``build(info)``)."""
        return EnvInfo(
            name=f"{FAMILY}/{self.task}",
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            state_dim=self.state_dim,
            action_kind="categorical",
            action_dim=self.n_actions,
            max_steps=self.episode_length,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._generator.manual_seed(seed)

    def _draw_targets(self, where: torch.Tensor) -> None:
        """New targets for the envs where ``where`` ``[E]`` is True."""
        fresh = torch.randint(0, self.n_actions, self.target.shape, generator=self._generator, device=self.device)
        self.target = torch.where(where, fresh, self.target)

    def _observe(self, **extra: torch.Tensor) -> TensorDict:
        e, n = self.batch_size[0], self.n_agents
        target = torch.nn.functional.one_hot(self.target, self.n_actions).float()  # [E, K]
        observation = torch.cat([target.unsqueeze(1).expand(e, n, self.n_actions), self._ids], dim=-1)
        time = (self.step_count.float() / self.episode_length).unsqueeze(-1)
        agents = TensorDict({"observation": observation}, batch_size=(e, n), device=self.device)
        return TensorDict({OBSERVATION[0]: agents, STATE: torch.cat([target, time], dim=-1), **extra}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: object) -> TensorDict:
        reset = None if tensordict is None else tensordict.get("_reset", None)  # [E, 1]: the envs to reset (None: all)
        where = torch.ones_like(self.target, dtype=torch.bool) if reset is None else reset.reshape(-1)
        self._draw_targets(where)
        self.step_count = self.step_count.masked_fill(where, 0)
        no = torch.zeros(self.batch_size[0], 1, dtype=torch.bool, device=self.device)
        return self._observe(done=no, terminated=no.clone(), truncated=no.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        action = tensordict.get(ACTION).to(self.device, torch.int64)  # [E, N]
        wanted = (self.target.unsqueeze(-1) + self._shift) % self.n_actions
        reward = (action == wanted).float().mean(dim=-1, keepdim=True)  # [E, 1], the team's
        self.step_count = self.step_count + 1
        terminated = (self.step_count >= self.episode_length).unsqueeze(-1)
        self._draw_targets(torch.ones_like(self.target, dtype=torch.bool))
        return self._observe(**{REWARD: reward, "done": terminated.clone(), "terminated": terminated, "truncated": torch.zeros_like(terminated)})


# ---- the family protocol make_env calls --------------------------------------------------------------------------
def tasks() -> list[str]:
    """The tasks ``make_env`` accepts as ``<FAMILY>/<task>``."""
    return list(TASKS)


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> MatchEnv:
    """``make_env``'s entry for ``<FAMILY>/<task>``; ``kwargs`` come from a recipe's ``data.env_kwargs``."""
    return MatchEnv(task, num_envs, seed, device, **kwargs)
