"""The on-policy datamodule: env -> TorchRL collector -> one rollout TensorDict per iteration.

DESIGN.md, "One iteration", step 1. One Lightning epoch is one iteration: the train loader
has length 1 (so Lightning prefetches nothing) and collects only when asked, with the
module's behaviour policy. The validation loader runs evaluation episodes with the
module's deployment policy; ``record_episode`` draws one such episode frame by frame. What it
calls on the module is the protocol :class:`hcmarl.datamodules.PolicySource`; what a module may
read from it, :class:`hcmarl.datamodules.RolloutSource`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.envs import Compose, EnvBase, TransformedEnv
from torchrl.envs.utils import step_mdp

from hcmarl.datamodules.episodes import episode_returns, first_episode_end, rollout_first_episodes
from hcmarl.datamodules.protocols import BehaviourPolicy, Policy, PolicySource, require_policy_source
from hcmarl.envs import check_env_kwargs, make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.evaluation import protocol_for
from hcmarl.keys import EPISODE_RETURN, REWARD

RANK_SEED_STRIDE = 100_003
EVALUATION_SEED_STRIDE = 1_000_003  # evaluation seed x stride + iterations done: one seed per evaluation


@contextmanager
def evaluation_random_stream(seed: int, device: torch.device) -> Iterator[None]:
    """Inside this block torch's global generators (the CPU's, and ``device``'s where it is a GPU) start from
    ``seed``; after it they are as they were before it.

    An evaluation's sampled actions (the ``magpo`` protocol's, a conductor's sampled instructions) come from torch's
    global generators, which training samples from too. Run inside this block, an evaluation neither consumes
    training's random numbers (a seed trains the same parameters whatever its evaluation cadence) nor draws from
    where training left them. ``device`` is this rank's (the root device of the trainer's strategy)."""
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            torch.cuda.default_generators[gpu].manual_seed(seed)
        yield


def iterations_for(total_frames: int, num_envs: int, rollout_steps: int, world_size: int = 1) -> int:
    """Iterations (Lightning epochs) a run of ``total_frames`` takes on ``world_size`` ranks: whole iterations,
    rounded up. Frames count over all ranks, and every rank collects ``num_envs * rollout_steps`` per iteration."""
    return math.ceil(total_frames / (world_size * num_envs * rollout_steps))


class RunningReturns:
    """Each training env's return since its episode began, carried from one rollout to the next.

    What TorchRL's ``RewardSum`` transform writes at every step, computed on the collected batch
    instead, so that the collector steps the env itself rather than a ``TransformedEnv`` (whose
    reset after a step merges every entry, about 0.5 ms per step at 64 SMAX envs).
    """

    def __init__(self) -> None:
        self._so_far: torch.Tensor | None = None  # [E, 1]: the running return after the last collected step

    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """``[E, T, 1]`` returns so far at each step of a rollout ``reward``, ``done`` ``[E, T, 1]`` (time on dim 1)."""
        so_far = torch.zeros_like(reward[:, 0]) if self._so_far is None else self._so_far
        returns = []
        for t in range(reward.shape[1]):
            so_far = so_far + reward[:, t]
            returns.append(so_far)
            so_far = so_far.masked_fill(done[:, t], 0.0)
        self._so_far = so_far
        return torch.stack(returns, dim=1)


class _OnDemand:
    """An iterable whose items are made one by one, only when asked for (so Lightning prefetches nothing)."""

    def __init__(self, *makers: Callable[[], TensorDictBase]) -> None:
        self._makers = makers

    def __len__(self) -> int:
        return len(self._makers)

    def __iter__(self) -> Iterator[TensorDictBase]:
        for make in self._makers:
            yield make()


@dataclass(frozen=True)
class RecordedEpisode:
    """One episode drawn frame by frame: ``frames`` holds the first observation's image and one per step."""

    frames: list[np.ndarray]
    episode_return: float

    @property
    def steps(self) -> int:
        return len(self.frames) - 1


class OnPolicyDataModule(L.LightningDataModule):
    """Owns the training and evaluation envs and the collector.

    Args:
        env: ``family/task`` name, e.g. ``coordsum/3x10`` or ``vmas/balance``.
        num_envs: environments stepped in parallel by each DDP rank.
        rollout_steps: steps per env per iteration; each rank collects ``num_envs * rollout_steps`` frames an
            iteration, so an iteration is ``world_size * num_envs * rollout_steps`` frames.
        total_frames: training length in env frames, counted over all ranks (as ``frames`` is logged); the run
            takes ``ceil(total_frames / (world_size * num_envs * rollout_steps))`` iterations.
        seed: base seed; rank r uses ``seed + r * 100003``, evaluation a seed of its own.
        eval_episodes: episodes per evaluation (one env each), under ``protocol: hcmarl`` (None: 32). A preset fixes
            them: a value other than the preset's is a ``ConfigError``.
        eval_every: iterations between evaluations, under ``protocol: hcmarl`` (None: 10); likewise fixed by a preset.
        env_kwargs: extra arguments for the env (e.g. ``{n_agents: 4}`` for VMAS).
        protocol: the evaluation protocol (``hcmarl.evaluation``): ``hcmarl`` (``eval_every``, ``eval_episodes``, the
            final parameters scored), ``magpo`` (122 evaluations, sampled, the absolute metric) or ``hcpo`` (every
            iteration, deterministic, the median of the last ten); the presets fix cadence, episodes and actions.
    """

    def __init__(
        self,
        env: str = "coordsum/3x10",
        num_envs: int = 16,
        rollout_steps: int = 128,
        total_frames: int = 1_000_000,
        seed: int = 0,
        eval_episodes: int | None = None,
        eval_every: int | None = None,
        env_kwargs: dict[str, Any] | None = None,
        protocol: str = "hcmarl",
    ) -> None:
        super().__init__()
        check_env_kwargs(env, env_kwargs or {})  # before the trainer starts: a wrong recipe leaves no run folder behind
        for key, value in (("num_envs", num_envs), ("rollout_steps", rollout_steps), ("eval_episodes", eval_episodes), ("eval_every", eval_every)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {value}")
        self.env_name = env
        self.num_envs = num_envs
        self.rollout_steps = rollout_steps
        self.total_frames = total_frames
        self.seed = seed
        self.eval_episodes = eval_episodes
        self.eval_every = eval_every
        self.env_kwargs = dict(env_kwargs or {})
        self.protocol = protocol_for(protocol, env, eval_every, eval_episodes)
        self.evaluation_rounds = 1  # batches of protocol.episodes per evaluation (the final one may run more)
        self.check_budget(world_size=1)
        self.frames = 0  # over all ranks
        self.iterations_done = 0
        self.last_collect_seconds = float("nan")
        self.env_info: EnvInfo | None = None
        self.train_env: EnvBase | None = None
        self.eval_env: EnvBase | None = None
        self.render_env: EnvBase | None = None
        self._collector: Collector | None = None
        self._behaviour: BehaviourPolicy | None = None
        self._rollouts: Iterator[TensorDictBase] | None = None
        self._policy_envs: dict[EnvBase, EnvBase] = {}
        self._running_returns = RunningReturns()

    @property
    def frames_per_batch(self) -> int:
        """Frames one rank collects per iteration (the rollout's ``num_envs * rollout_steps``)."""
        return self.num_envs * self.rollout_steps

    @property
    def world_size(self) -> int:
        """Ranks training together: the trainer's world size, known once its strategy is set up (1 before)."""
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def global_frames_per_batch(self) -> int:
        """Frames all ranks together collect per iteration."""
        return self.world_size * self.frames_per_batch

    @property
    def iterations(self) -> int:
        """Iterations a run of ``total_frames`` takes from the start, on ``world_size`` ranks."""
        return iterations_for(self.total_frames, self.num_envs, self.rollout_steps, self.world_size)

    @property
    def iterations_left(self) -> int:
        """Iterations still needed to reach ``total_frames`` from ``frames`` (a resumed run has some already)."""
        return math.ceil(max(self.total_frames - self.frames, 0) / self.global_frames_per_batch)

    def check_budget(self, world_size: int) -> None:
        """Raise a ``ConfigError`` if ``total_frames`` is less than one iteration of ``world_size`` ranks."""
        per_iteration = world_size * self.frames_per_batch
        if self.total_frames >= per_iteration:
            return
        formula = (
            f"num_envs * rollout_steps = {per_iteration}"
            if world_size == 1
            else f"ranks * num_envs * rollout_steps = {world_size} * {self.num_envs} * {self.rollout_steps} = {per_iteration}, "
            "since data.total_frames counts the frames of all ranks"
        )
        raise ConfigError(
            f"data.total_frames={self.total_frames} is less than one iteration ({formula}); raise total_frames or lower num_envs/rollout_steps"
        )

    def _plan_iterations(self) -> None:
        """Set the trainer's ``max_epochs`` (one epoch is one iteration) to end the run at ``total_frames`` frames
        over all ranks (the iterations done plus those left at this world size), and its evaluation interval to the
        protocol's for a run of that length."""
        trainer = self._running_trainer()
        trainer.fit_loop.max_epochs = self.iterations_done + self.iterations_left
        trainer.check_val_every_n_epoch = self.protocol.evaluation_interval(trainer.fit_loop.max_epochs)

    def _running_trainer(self) -> L.Trainer:
        """The trainer running this datamodule (a ``RuntimeError`` when there is none)."""
        if self.trainer is None:
            raise RuntimeError("OnPolicyDataModule has no trainer: pass it to trainer.fit or trainer.validate")
        return self.trainer

    def _env_info(self) -> EnvInfo:
        """The env's description, known once ``setup`` has made the evaluation envs (a ``RuntimeError`` before)."""
        if self.env_info is None:
            raise RuntimeError("OnPolicyDataModule.setup has not run: the env is not made yet")
        return self.env_info

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _eval_seed(self) -> int:
        return self.seed + 7 + self._rank() * RANK_SEED_STRIDE + 50_021

    def _policy_source(self) -> PolicySource:
        """The trainer's module, which must implement :class:`~hcmarl.datamodules.PolicySource` (else a ``ConfigError``)."""
        return require_policy_source(self._running_trainer().lightning_module)

    def setup(self, stage: str) -> None:
        """Check the trainer's module implements ``PolicySource``; make the envs of this rank; when fitting, check the
        budget and set the run's iterations for the world size."""
        if self.trainer is not None:
            self._policy_source()  # before any env is made
        device, rank = self._device(), self._rank()
        if stage == "fit":
            self.check_budget(self.world_size)
            self._plan_iterations()
        if self.eval_env is None:
            base = make_env(self.env_name, self.protocol.episodes, self._eval_seed(), device, **self.env_kwargs)
            self.env_info = base.info
            self.eval_env = base
        if stage == "fit" and self.train_env is None:
            self.train_env = make_env(self.env_name, self.num_envs, self.seed + rank * RANK_SEED_STRIDE, device, **self.env_kwargs)

    # ---- training data --------------------------------------------------------------------
    def train_dataloader(self) -> _OnDemand:
        return _OnDemand(self.collect)

    def collect(self) -> TensorDictBase:
        """One rollout ``[num_envs, rollout_steps]`` with the module's behaviour policy."""
        if self._behaviour is None or self._rollouts is None:
            self._behaviour, self._rollouts = self._start_collector()
        start = time.perf_counter()
        self._behaviour.begin_rollout()
        batch = next(self._rollouts)
        batch.set(("next", EPISODE_RETURN), self._running_returns(batch.get(("next", REWARD)), batch.get(("next", "done"))))
        self.last_collect_seconds = time.perf_counter() - start
        self.frames += self.world_size * batch.numel()  # every rank collects a batch of this size
        self.iterations_done += 1
        return batch

    def _start_collector(self) -> tuple[BehaviourPolicy, Iterator[TensorDictBase]]:
        """Make the collector, holding the module's behaviour policy itself (no copy); the policy and its rollouts."""
        behaviour = self._policy_source().behaviour_policy()
        self._collector = Collector(
            self._policy_env(self.train_env),
            behaviour,
            frames_per_batch=self.frames_per_batch,
            total_frames=-1,
            device=self._device(),
            trust_policy=True,
            auto_register_policy_transforms=False,
        )
        return behaviour, iter(self._collector)

    def _policy_env(self, base: EnvBase) -> EnvBase:
        """``base`` as the module's policies step it, made once per env: in a ``TransformedEnv`` with the
        transforms they need (e.g. a recurrent state primer), or ``base`` itself when they need none."""
        if base not in self._policy_envs:
            transforms = self._policy_source().env_transforms()
            self._policy_envs[base] = TransformedEnv(base, Compose(*transforms)) if transforms else base
        return self._policy_envs[base]

    # ---- evaluation -----------------------------------------------------------------------
    def val_dataloader(self) -> _OnDemand:
        """One batch of episodes per evaluation mode of the module (HCPO: ``local`` and ``central``)."""
        module, deterministic = self._policy_source(), self.protocol.deterministic
        modes = module.evaluation_modes().values()
        return _OnDemand(*(lambda mode=mode: self.evaluate(module.deployment_policy(mode, deterministic), self.evaluation_rounds) for mode in modes))

    @contextmanager
    def evaluation_batches(self, rounds: int) -> Iterator[None]:
        """Evaluations inside this block run ``rounds`` batches of episodes each (the absolute metric's 10 x 32)."""
        self.evaluation_rounds = rounds
        try:
            yield
        finally:
            self.evaluation_rounds = 1

    @torch.no_grad()
    def evaluate(self, policy: Policy, rounds: int = 1) -> TensorDict:
        """``rounds`` batches of ``protocol.episodes`` episodes, one per env, with ``policy``: returns, lengths, and
        the env's wins and episode metrics (``EnvInfo.metrics``), each of the env's first episode. Each batch continues
        the evaluation envs' random stream, so the batches are different episodes. The policy's sampled actions draw
        from a stream of their own (``evaluation_random_stream``), so evaluating leaves training's random numbers as
        they were."""
        info = self._env_info()
        batches = []
        with evaluation_random_stream(self._eval_seed() * EVALUATION_SEED_STRIDE + self.iterations_done, self._device()):
            for _ in range(rounds):
                rollout = rollout_first_episodes(self._policy_env(self.eval_env), policy, info.max_steps)
                returns, lengths = episode_returns(rollout.get(("next", REWARD)), rollout.get(("next", "done")))
                out = TensorDict({"return": returns, "length": lengths}, batch_size=returns.shape)
                done = rollout.get(("next", "done"))
                for name in ("win",) * info.has_win + info.metrics:
                    out.set(name, first_episode_end(rollout.get(("next", name)), done))
                batches.append(out)
        return torch.cat(batches) if rounds > 1 else batches[0]

    @torch.no_grad()
    def record_episode(self, policy: Policy) -> RecordedEpisode:
        """One episode on one env with ``policy`` (the evaluation seed), drawn after the reset and after every step.

        The env must render (``hcmarl.envs.check_renderable``); the episode ends when the env is done
        or after ``max_steps`` steps.
        """
        if self.render_env is None:
            self.render_env = make_env(self.env_name, 1, self._eval_seed(), self._device(), **self.env_kwargs)
        env, draw = self._policy_env(self.render_env), self.render_env.render_frame
        td = env.reset()
        frames, episode_return = [draw()], 0.0
        for _ in range(self._env_info().max_steps):
            td = env.step(policy(td))
            frames.append(draw())
            episode_return += float(td.get(("next", REWARD)).sum())
            if bool(td.get(("next", "done")).any()):
                break
            td = step_mdp(td)
        return RecordedEpisode(frames, episode_return)

    # ---- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Frames (over all ranks) and iterations done, and the env, for resuming."""
        return {"frames": self.frames, "iterations": self.iterations_done, "env": self.env_name}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore frames and iterations from a checkpoint; a resumed fit runs the iterations left to ``total_frames``
        at this run's world size."""
        if state_dict.get("env") != self.env_name:
            raise ConfigError(f"--ckpt_path: the checkpoint was trained on {state_dict.get('env')!r}, this recipe uses data.env={self.env_name!r}")
        self.frames = int(state_dict["frames"])
        # a checkpoint from before frames were counted over all ranks has no iteration count: every such run had one rank
        self.iterations_done = int(state_dict.get("iterations", self.frames // self.frames_per_batch))
        if self.trainer is not None and self.trainer.training:
            self._plan_iterations()  # the frames left may take a different number of iterations at another world size

    def teardown(self, stage: str) -> None:
        if self._collector is not None and stage == "fit":
            self._collector.shutdown()
            self._collector = None
            self._rollouts = None
