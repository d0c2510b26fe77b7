"""MAGPO's guider role (ALGORITHMS.md section 4): the autoregressive joint policy that collects, and its update.

The guider alone acts in training rollouts. With ``GuidedClip`` its update runs the minibatch loop
that MAGPO shares with the learner: on each minibatch both networks are evaluated with their
pre-update parameters, the guider's loss (``GuidedClip``, plus its value loss) treats the learner
as a constant and the learner's (``GuidedImitation``) treats the guider as one, and both step, each
with its own optimiser. Without a learner (MAT alone) the same loop is PPO on the guider. Any other
constraint (e.g. ``GuidedTrustRegion``) moves the guider's policy alone, anchored at the learner;
the learner then imitates the updated guider by its own schedule, and a critic role gives the values.

A recurrent guider (Sable) keeps its hidden state in a ``GuiderMemory`` per stream of envs
(the collector's, or one evaluation's), not in the TensorDict: the state is ``[envs, blocks, 3,
H, d, d]``, far too large to store at every step. The collector's memory records the state at
the start of each rollout, which the update replays the rollout from.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import InitTracker, Transform

from hcmarl.advantages import ValueLoss, ValueNorm, value_loss
from hcmarl.constraints import Constraint, Evaluation, evaluate_actions, index_distribution
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB, VALUE_TARGET
from hcmarl.nn.distributions import detach_distribution, map_distribution
from hcmarl.modules.learner import Learner
from hcmarl.nn.guider import GuiderNetwork
from hcmarl.optim import GradientStep, minibatch_indices
from hcmarl.schedules import Simultaneous


class GuiderMemory:
    """A recurrent guider's hidden state over one stream of envs, and the state at the start of the current rollout.

    ``state`` is None until the first step (the network starts from zeros); an episode start
    (``is_init``) cuts it inside the network.
    """

    def __init__(self) -> None:
        self.state: torch.Tensor | None = None
        self.rollout_start: torch.Tensor | None = None

    def begin_rollout(self) -> None:
        """Called by the datamodule before each rollout: remember the state the rollout starts from."""
        self.rollout_start = self.state


class Guider(nn.Module):
    """The guider mu_phi(a_i | o, a_<i) with a value per agent, moved by ``GuidedClip`` (or another constraint).

    Args:
        network: the guider block, e.g. ``hcmarl.nn.MATGuider``.
        constraint: the guider's rule: ``hcmarl.guided.GuidedClip`` (MAGPO's shared minibatch loop, which also trains
            the value head and steps the learner), or any other constraint, which moves the guider's policy alone
            (e.g. ``hcmarl.guided.GuidedTrustRegion``; the recipe then needs a critic role).
        lr: Adam learning rate of the guider.
        vf_coef: weight of the value loss in the guider's loss (its value head is the critic when the
            recipe has no critic role).
        value_loss: ``huber`` (delta ``huber_delta``) or ``mse``.
        clip_value: clip the new value to old +- this (None: no clipping).
        value_norm: the value head predicts normalised values (HARL's ValueNorm).
    """

    def __init__(
        self,
        network: GuiderNetwork,
        constraint: GuidedClip | Constraint,
        lr: float = 2.5e-4,
        vf_coef: float = 0.5,
        value_loss: ValueLoss = "huber",
        huber_delta: float = 10.0,
        clip_value: float | None = None,
        value_norm: bool = True,
    ) -> None:
        super().__init__()
        self.network = network
        self.constraint = constraint
        self.lr = lr
        self.vf_coef = vf_coef
        self.value_loss = value_loss
        self.huber_delta = huber_delta
        self.clip_value = clip_value
        self.value_norm = ValueNorm() if value_norm else None
        self.collection_memory: GuiderMemory | None = None

    @property
    def recurrent(self) -> bool:
        """Whether the network carries a memory across steps (its minibatches are then whole env rollouts)."""
        return self.network.recurrent

    @property
    def joint(self) -> bool:
        """Whether the update is MAGPO's shared loop (``GuidedClip``): guider policy, value head and learner step together."""
        return isinstance(self.constraint, GuidedClip)

    def env_transforms(self) -> list[Transform]:
        """A recurrent guider needs the envs to mark episode starts (``is_init``)."""
        return [InitTracker()] if self.recurrent else []

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the network for the env described by ``info`` (reading a conductor's K instructions if ``n_instructions > 0``)."""
        self.network.build(info, n_instructions)

    def check_learner(self, learner: Learner | None) -> None:
        """ConfigErrors for a learner this guider cannot be paired with (MAGPO, CTDS) or a missing one (MAT)."""
        delta = getattr(self.constraint, "delta", math.inf)
        if learner is None:
            if not math.isinf(delta):
                raise ConfigError(
                    f"model.guider.constraint.delta={delta}: the double clip holds the guider near a learner, "
                    "and this recipe has none (MAT alone); set delta: .inf, or add a model.learner using GuidedImitation"
                )
            return
        imitation = learner.constraint
        if not isinstance(imitation, GuidedImitation):
            raise ConfigError(
                "model.guider is set, so the learner imitates it: model.learner.constraint must be "
                f"hcmarl.guided.GuidedImitation (got {type(imitation).__name__})"
            )
        if imitation.lam < 0:
            raise ConfigError(f"model.learner.constraint.lam must be >= 0, got {imitation.lam}")
        own_loop = imitation.epochs is not None or imitation.minibatches is not None
        if self.joint and own_loop:
            raise ConfigError(
                "model.guider.constraint is GuidedClip, whose loop steps the learner on the guider's minibatches: "
                "remove model.learner.constraint.init_args.epochs and minibatches"
            )
        if self.joint and not isinstance(learner.schedule, Simultaneous):
            raise ConfigError(
                "model.guider.constraint is GuidedClip, which steps all the learner's agents together on its minibatches: set "
                "model.learner.schedule to hcmarl.schedules.Simultaneous, or move the guider by another constraint "
                "(e.g. hcmarl.guided.GuidedTrustRegion) so that the learner runs its own schedule"
            )
        if not self.joint and (imitation.epochs is None or imitation.minibatches is None):
            raise ConfigError(
                f"model.guider.constraint is {type(self.constraint).__name__}, which moves the guider alone; the learner then "
                "runs its own loop: set model.learner.constraint.init_args.epochs and minibatches"
            )
        if learner.actor.recurrent:
            raise ConfigError("a guider with a recurrent learner is not supported yet: use hcmarl.nn.MLPActor for model.learner.actor")

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the guider (network and value normaliser buffers: parameters only)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=1e-5, fused=True)

    def check_batch(self, num_envs: int, frames_per_batch: int) -> None:
        """A ConfigError if the constraint asks for more minibatches than the batch has units (frames, or env rollouts
        for a recurrent guider)."""
        units, unit = (num_envs, "data.num_envs") if self.recurrent else (frames_per_batch, "the frames per iteration")
        minibatches = getattr(self.constraint, "minibatches", 1)
        if minibatches > units:
            raise ConfigError(
                f"model.guider.constraint.minibatches={minibatches} exceeds {unit} ({units})"
                + (" (a recurrent guider's minibatches are whole env rollouts)" if self.recurrent else "")
                + "; lower minibatches or raise "
                + ("data.num_envs" if self.recurrent else "data.num_envs * data.rollout_steps")
            )

    def new_collection_memory(self) -> GuiderMemory:
        """A fresh memory for the collector's envs, kept as ``collection_memory`` (the update replays from its rollout start)."""
        self.collection_memory = GuiderMemory()
        return self.collection_memory

    def rollout_start_state(self) -> torch.Tensor | None:
        """The hidden state the last collected rollout started from (None: zeros, or a memoryless guider)."""
        return None if self.collection_memory is None else self.collection_memory.rollout_start

    @torch.no_grad()
    def act(self, td: TensorDictBase, deterministic: bool = False, memory: GuiderMemory | None = None) -> TensorDictBase:
        """Decode the joint action agent by agent; write it and each agent's log mu(a_i | o, a_<i).

        A recurrent guider reads and advances ``memory`` (required for it)."""
        if self.recurrent and memory is None:
            raise ValueError("a recurrent guider acts with a GuiderMemory: pass memory=GuiderMemory()")
        action, log_prob, state = self.network.sample(td, deterministic, None if memory is None else memory.state)
        if memory is not None:
            memory.state = state
        td.set(ACTION, action)
        td.set(LOG_PROB, log_prob)
        return td

    @torch.no_grad()
    def rollout_values(self, batch: TensorDictBase, start_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each agent's value of every step's observation and of its next one, in return units, ``[E, T, N]`` each."""
        value, next_value = self.network.rollout_values(batch, start_state)
        if self.value_norm is None:
            return value, next_value
        return self.value_norm.denormalize(value), self.value_norm.denormalize(next_value)

    def update(
        self,
        batch: TensorDictBase,
        step: GradientStep,
        learner: Learner | None = None,
        learner_step: GradientStep | None = None,
        train_value: bool = True,
        start_state: torch.Tensor | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The guider's update on a batch ``[E, T]`` holding advantages; returns the mean diagnostics per role,
        ``{"guider": {...}, "learner": {...}}`` (the learner's only from MAGPO's joint loop).

        Minibatches are frames, or, for a recurrent guider, whole env rollouts replayed from ``start_state``
        (the state at their first step). Any constraint but ``GuidedClip``: ``update_alone``. ``GuidedClip``: MAGPO's
        joint update (ALGORITHMS.md section 4); per minibatch, guider loss = GuidedClip(mu; pi constant) + vf_coef *
        value loss (if ``train_value``) and learner loss = GuidedImitation(pi; mu constant), both from the pre-update
        parameters, then both step.
        """
        if not self.recurrent:
            batch = batch.reshape(-1)
        if not self.joint:
            return {"guider": self.update_alone(batch, step, learner, start_state)}
        rule = self.constraint
        imitation = None if learner is None else learner.constraint
        keys = [*self.network.in_keys, ACTION, LOG_PROB, ADVANTAGE] + ([] if learner is None else learner.actor.in_keys)
        target = batch.get(VALUE_TARGET)
        batch = batch.select(*keys, strict=False)
        if train_value and self.value_norm is not None:
            self.value_norm.update(target)
            target = self.value_norm.normalize(target)
        old_value = None
        if train_value and self.clip_value is not None:
            with torch.no_grad():
                old_value = self.network(batch, start_state)[1]
        sums: dict[str, dict[str, torch.Tensor]] = {"guider": {}, "learner": {}}
        for _ in range(rule.epochs):
            for idx in minibatch_indices(batch.shape[0], rule.minibatches, target.device):
                minibatch = batch[idx]
                action, old_log_prob, advantage = minibatch.get(ACTION), minibatch.get(LOG_PROB), minibatch.get(ADVANTAGE)
                guider_dist, value = self.network(minibatch, None if start_state is None else start_state[idx])
                log_prob = guider_dist.log_prob(action)
                learner_dist = learner_log_prob = None
                if learner is not None:
                    learner_dist = learner.actor(minibatch)
                    learner_log_prob = learner_dist.log_prob(action)
                loss, guider_metrics = rule.loss(guider_dist, log_prob, old_log_prob, advantage, learner_dist, learner_log_prob)
                if train_value:
                    old = None if old_value is None else old_value[idx]
                    v_loss = value_loss(value, target[idx], self.value_loss, self.huber_delta, old, self.clip_value).mean()
                    loss = loss + self.vf_coef * v_loss
                    guider_metrics["value_loss"] = v_loss.detach()
                if learner is not None:
                    learner_eval = Evaluation(learner_log_prob, learner_dist.entropy(), learner_dist, detach_distribution(guider_dist))
                    learner_loss, learner_metrics = imitation.loss(learner_eval, old_log_prob, advantage)
                step(loss, rule.max_grad_norm)
                if learner is not None:
                    learner_step(learner_loss, imitation.max_grad_norm)
                    _accumulate(sums["learner"], learner_metrics)
                _accumulate(sums["guider"], guider_metrics)
        n = rule.epochs * rule.minibatches
        return {role: {k: v / n for k, v in values.items()} for role, values in sums.items() if values}

    def update_alone(
        self, batch: TensorDictBase, step: GradientStep, learner: Learner | None = None, start_state: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The constraint moves the guider's policy alone over the whole batch, each sample anchored at the (constant)
        learner's distribution; the value head is left to the critic role (e.g. ``GuidedTrustRegion``)."""
        anchor = None
        if learner is not None:
            with torch.no_grad():
                anchor = learner.actor(batch)
        old_log_prob, advantage, action = batch.get(LOG_PROB), batch.get(ADVANTAGE), batch.get(ACTION)
        batch = batch.select(*self.network.in_keys, ACTION, strict=False)  # what evaluate indexes (actions: teacher forcing)

        def evaluate(idx: torch.Tensor) -> Evaluation:
            dist, _ = self.network(batch[idx], None if start_state is None else start_state[idx])
            return evaluate_actions(dist, action[idx], None if anchor is None else index_distribution(anchor, idx))

        return self.constraint.update(evaluate, old_log_prob, advantage, None, step)

    @torch.no_grad()
    def distribution(self, batch: TensorDictBase, start_state: torch.Tensor | None = None) -> torch.distributions.Distribution:
        """mu(a_i | o, a_<i) at every sample of a batch ``[E, T]``, teacher-forced on the taken actions, flattened to
        ``[E * T, N]`` in ``batch.reshape(-1)``'s order: the target a learner with its own loop imitates."""
        if self.recurrent:
            dist, _ = self.network(batch, start_state)
            return map_distribution(dist, lambda t: t.reshape(-1, *t.shape[2:]))
        return self.network(batch.reshape(-1))[0]


def _accumulate(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + value
