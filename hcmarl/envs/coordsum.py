"""CoordSum, MAGPO's didactic coordination game (ALGORITHMS.md section 5 (CoordSum)).

``N`` agents each pick an integer in ``{0..K-1}``; the team scores when the actions sum to
the current target. A guesser remembers agent 0's past actions per target bucket: a success
is worth 2.0 when agent 0 surprises the guesser (its action differs from the most frequent
one recorded in that bucket) and 1.0 otherwise. An episode is ``T = 100`` steps, ending in a
true termination.

The env is vectorised in torch over ``num_envs`` copies and follows the layout of
:mod:`hcmarl.envs.base`. Its internal state, all on ``device``:

- ``targets``: int64 ``[E, T + 1]``, the targets drawn at reset (the observation at step
  ``t`` shows ``targets[:, t]``);
- ``counts``: int64 ``[E, R, K]``, the guesser's memory, how often agent 0 played each
  action in each bucket (``R = K`` by default, ``R = maxval`` with ``one_row_per_target``);
- ``step_count``: int64 ``[E]``, steps taken in the current episode.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, OBSERVATION, REWARD, STATE, EnvInfo, named_parameters

TASKS: dict[str, tuple[int, int, int]] = {
    "3x10": (3, 10, 30),
    "3x30": (3, 30, 50),
    "5x20": (5, 20, 80),
    "8x15": (8, 15, 100),
}
"""Task name -> ``(n_agents, n_actions, maxval)``; targets are drawn from ``{0..maxval-1}``."""


class CoordSumEnv(EnvBase):
    """A batch of ``num_envs`` CoordSum games (ALGORITHMS.md section 5).

    Args:
        task: one of :data:`TASKS` (``"3x10"``, ``"3x30"``, ``"5x20"``, ``"8x15"``).
        num_envs: number of games stepped together (the batch size).
        seed: seed of the env's own target generator; ``None`` draws one from torch's global RNG.
        device: where the env's tensors live.
        one_row_per_target: ``False`` (the official code) buckets the guesser's memory by
            ``min(target, K - 1)``, so all targets ``>= K - 1`` share one row; ``True`` keeps
            one row per target value.
        episode_length: steps per episode ``T``.
    """

    def __init__(
        self,
        task: str = "3x10",
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        one_row_per_target: bool = False,
        episode_length: int = 100,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown CoordSum task {task!r}; valid tasks: {', '.join(TASKS)}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.task = task
        self.num_envs = num_envs
        self.n_agents, self.n_actions, self.maxval = TASKS[task]
        self.one_row_per_target = one_row_per_target
        self.episode_length = episode_length
        self.n_buckets = self.maxval if one_row_per_target else self.n_actions

        n, k, e = self.n_agents, self.n_actions, num_envs
        self.obs_dim = 1 + n
        self.state_dim = n * self.obs_dim
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_())
        self._generator.manual_seed(seed)
        self._env_index = torch.arange(e, device=self.device)
        self._agent_ids = torch.eye(n, dtype=torch.float32, device=self.device).expand(e, n, n)
        self.targets = torch.zeros(e, episode_length + 1, dtype=torch.int64, device=self.device)
        self.counts = torch.zeros(e, self.n_buckets, k, dtype=torch.int64, device=self.device)
        self.step_count = torch.zeros(e, dtype=torch.int64, device=self.device)

        self.full_observation_spec = Composite(
            agents=Composite(
                observation=Unbounded(shape=(e, n, self.obs_dim), dtype=torch.float32, device=self.device),
                shape=(e, n),
                device=self.device,
            ),
            state=Unbounded(shape=(e, self.state_dim), dtype=torch.float32, device=self.device),
            step_count=Unbounded(shape=(e, 1), dtype=torch.int64, device=self.device),
            shape=(e,),
            device=self.device,
        )
        self.full_action_spec = Composite(
            agents=Composite(
                action=Categorical(n=k, shape=(e, n), dtype=torch.int64, device=self.device),
                shape=(e, n),
                device=self.device,
            ),
            shape=(e,),
            device=self.device,
        )
        self.full_reward_spec = Composite(
            reward=Unbounded(shape=(e, 1), dtype=torch.float32, device=self.device),
            shape=(e,),
            device=self.device,
        )
        self.full_done_spec = Composite(
            done=Categorical(n=2, shape=(e, 1), dtype=torch.bool, device=self.device),
            terminated=Categorical(n=2, shape=(e, 1), dtype=torch.bool, device=self.device),
            truncated=Categorical(n=2, shape=(e, 1), dtype=torch.bool, device=self.device),
            shape=(e,),
            device=self.device,
        )

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        return EnvInfo(
            name=f"coordsum/{self.task}",
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            state_dim=self.state_dim,
            action_kind="categorical",
            action_dim=self.n_actions,
            max_steps=self.episode_length,
            has_action_mask=False,
            has_win=False,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._generator.manual_seed(seed)

    def _current_target(self) -> torch.Tensor:
        """The target shown now, int64 ``[E]``."""
        index = self.step_count.clamp(max=self.episode_length).unsqueeze(-1)
        return self.targets.gather(1, index).squeeze(-1)

    def _observe(self, **extra: torch.Tensor) -> TensorDict:
        e, n = self.num_envs, self.n_agents
        target = self._current_target().to(torch.float32)
        obs = torch.cat([target.view(e, 1, 1).expand(e, n, 1), self._agent_ids], dim=-1)
        agents = TensorDict({OBSERVATION[1]: obs}, batch_size=(e, n), device=self.device)
        return TensorDict(
            {
                OBSERVATION[0]: agents,
                STATE: obs.reshape(e, self.state_dim),
                "step_count": self.step_count.unsqueeze(-1).clone(),
                **extra,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: object) -> TensorDict:
        new_targets = torch.randint(
            0,
            self.maxval,
            self.targets.shape,
            generator=self._generator,
            device=self.device,
            dtype=torch.int64,
        )
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            self.targets.copy_(new_targets)
            self.counts.zero_()
            self.step_count.zero_()
        else:
            mask = reset.reshape(self.num_envs)
            self.targets.copy_(torch.where(mask.unsqueeze(-1), new_targets, self.targets))
            self.counts.masked_fill_(mask.view(-1, 1, 1), 0)
            self.step_count.masked_fill_(mask, 0)
        no = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return self._observe(done=no, terminated=no.clone(), truncated=no.clone())

    def _step(self, tensordict: TensorDictBase) -> TensorDict:
        actions = tensordict.get(ACTION).to(device=self.device, dtype=torch.int64)
        a0 = actions[:, 0]
        target = self._current_target()
        bucket = target if self.one_row_per_target else target.clamp(max=self.n_actions - 1)
        guess = self.counts[self._env_index, bucket].argmax(dim=-1)
        success = actions.sum(dim=-1) == target
        reward = torch.where(guess != a0, 2.0, 1.0) * success
        self.counts[self._env_index, bucket, a0] += 1
        self.step_count += 1
        terminated = (self.step_count >= self.episode_length).unsqueeze(-1)
        return self._observe(
            **{
                REWARD: reward.to(torch.float32).unsqueeze(-1),
                "done": terminated.clone(),
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
            }
        )


def tasks() -> list[str]:
    """The CoordSum tasks ``make_env`` knows (``coordsum/<task>``)."""
    return list(TASKS)


def env_kwargs(task: str) -> set[str]:
    """The ``data.env_kwargs`` a CoordSum task takes: :class:`CoordSumEnv`'s own."""
    return named_parameters(CoordSumEnv.__init__, skip=("task", "num_envs", "seed", "device"))


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs) -> CoordSumEnv:
    """``make_env``'s entry for ``coordsum/<task>``."""
    return CoordSumEnv(task=task, num_envs=num_envs, seed=seed, device=device, **kwargs)
