"""MAGPO's guider role (ALGORITHMS.md section 4): the autoregressive joint policy that collects, and its update.

The guider alone acts in training rollouts. With ``GuidedClip`` it is updated in the minibatch loop
that MAGPO shares with the learner (``hcmarl.stages.JointGuidedStage``): on each minibatch both
networks are evaluated with their pre-update parameters, the guider's loss (``GuidedClip``, plus its
value loss, ``value_fit``) treats the learner as a constant and the learner's (``GuidedImitation``)
treats the guider as one, and both step, each with its own optimiser. Without a learner (MAT alone)
the same loop is PPO on the guider. Any other constraint (e.g. ``GuidedTrustRegion``) moves the
guider's policy alone (``Guider.update``), anchored at the learner; the learner then imitates the
updated guider by its own schedule, and a critic role gives the values.

A recurrent guider (Sable) keeps its hidden state in a ``GuiderMemory`` per stream of envs
(the collector's, or one evaluation's), not in the TensorDict: the state is ``[envs, blocks, 3,
H, d, d]``, far too large to store at every step. The collector's memory records the state at
the start of each rollout, which the update replays the rollout from.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import InitTracker, Transform

from hcmarl.advantages import ValueLoss, ValueNorm
from hcmarl.constraints import Constraint, Evaluation, SurrogateBatch, evaluate_actions, index_distribution
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import check_init_args
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB
from hcmarl.nn.distributions import map_distribution
from hcmarl.nn.guider import GuiderNetwork
from hcmarl.optim import GradientStep, check_minibatches, take_rows
from hcmarl.roles.learner import Learner
from hcmarl.schedules import Simultaneous
from hcmarl.value_fit import ValueFit


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
        value_loss_scale: a factor on the value loss. The official MAGPO code's value loss is
            0.5 * max((V - R)^2, (V_clip - R)^2) on unnormalised returns: ``value_loss: mse``, ``clip_value`` = the
            policy's eps (0.2), ``value_norm: false``, ``value_loss_scale: 0.5`` (ALGORITHMS.md section 4).
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
        value_loss_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_init_args(
            Guider,
            {"lr": lr, "vf_coef": vf_coef, "huber_delta": huber_delta, "clip_value": clip_value, "value_loss_scale": value_loss_scale},
            {"lr": "> 0", "vf_coef": ">= 0", "huber_delta": "> 0", "clip_value": "> 0", "value_loss_scale": "> 0"},
            key="model.guider.init_args",
            clip_value={"optional": True},
        )
        self.network = network
        self.constraint = constraint
        self.lr = lr
        self.vf_coef = vf_coef
        self.value_loss = value_loss
        self.huber_delta = huber_delta
        self.clip_value = clip_value
        self.value_loss_scale = value_loss_scale
        self.value_norm: ValueNorm | None = ValueNorm() if value_norm else None
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

    def learner_problem(self, learner: Learner) -> str | None:
        """What stops this guider from being paired with ``learner`` (MAGPO, CTDS), naming the key to change; None if nothing."""
        imitation = learner.constraint
        if not isinstance(imitation, GuidedImitation):
            return (
                "model.guider is set, so the learner imitates it: model.learner.constraint must be "
                f"hcmarl.guided.GuidedImitation (got {type(imitation).__name__})"
            )
        if imitation.lam < 0:
            return f"model.learner.constraint.lam must be >= 0, got {imitation.lam}"
        own_loop = imitation.epochs is not None or imitation.minibatches is not None
        if self.joint and own_loop:
            return (
                "model.guider.constraint is GuidedClip, whose loop steps the learner on the guider's minibatches: "
                "remove model.learner.constraint.init_args.epochs and minibatches"
            )
        if self.joint and not isinstance(learner.schedule, Simultaneous):
            return (
                "model.guider.constraint is GuidedClip, which steps all the learner's agents together on its minibatches: set "
                "model.learner.schedule to hcmarl.schedules.Simultaneous, or move the guider by another constraint "
                "(e.g. hcmarl.guided.GuidedTrustRegion) so that the learner runs its own schedule"
            )
        if not self.joint and (imitation.epochs is None or imitation.minibatches is None):
            return (
                f"model.guider.constraint is {type(self.constraint).__name__}, which moves the guider alone; the learner then "
                "runs its own loop: set model.learner.constraint.init_args.epochs and minibatches"
            )
        return None

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the guider (network and value normaliser buffers: parameters only)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=1e-5, fused=True)

    def check_batch(self, num_envs: int, frames_per_batch: int, recurrent_learner: bool = False) -> None:
        """A ConfigError if the constraint asks for more minibatches than the batch has units (frames, or env rollouts
        for a recurrent guider or learner), per lane, or if the envs do not split into its lanes."""
        sequences = self.recurrent or (recurrent_learner and self.joint)
        lanes, minibatches = getattr(self.constraint, "lanes", 1), getattr(self.constraint, "minibatches", 1)
        check_minibatches("model.guider.init_args.constraint.init_args", minibatches, lanes, num_envs, frames_per_batch, sequences)

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

    @property
    def value_fit(self) -> ValueFit:
        """The regression the value head is fitted by in MAGPO's joint loop (the critic role's block)."""
        return ValueFit(self.value_loss, self.huber_delta, self.clip_value, self.value_norm, self.value_loss_scale)

    def update(
        self, batch: TensorDictBase, step: GradientStep, learner: Learner | None = None, start_state: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """A constraint other than ``GuidedClip`` (e.g. ``GuidedTrustRegion``) moves the guider's policy alone over the
        whole batch (flat ``[B]``, or ``[E, T]`` replayed from ``start_state`` for a recurrent guider), each sample
        anchored at the (constant) learner's distribution; the value head is left to the critic role.
        MAGPO's joint loop (``GuidedClip``) is ``hcmarl.stages.JointGuidedStage``."""
        anchor = None
        if learner is not None:
            with torch.no_grad():
                anchor = learner.actor(batch)
        old_log_prob, advantage, action = batch.get(LOG_PROB), batch.get(ADVANTAGE), batch.get(ACTION)
        batch = batch.select(*self.network.in_keys, ACTION, strict=False)  # what evaluate indexes (actions: teacher forcing)

        def evaluate(idx: torch.Tensor) -> Evaluation:
            dist, _ = self.network(take_rows(batch, idx), None if start_state is None else take_rows(start_state, idx))
            return evaluate_actions(dist, take_rows(action, idx), None if anchor is None else index_distribution(anchor, idx))

        if isinstance(self.constraint, GuidedClip):
            raise TypeError("a GuidedClip guider is updated in MAGPO's joint loop (hcmarl.stages.JointGuidedStage), not alone")
        return self.constraint.update(evaluate, SurrogateBatch(old_log_prob, advantage), step)

    @torch.no_grad()
    def distribution(self, batch: TensorDictBase, start_state: torch.Tensor | None = None) -> torch.distributions.Distribution:
        """mu(a_i | o, a_<i) at every sample of a batch ``[E, T]``, teacher-forced on the taken actions, flattened to
        ``[E * T, N]`` in ``batch.reshape(-1)``'s order: the target a learner with its own loop imitates."""
        if self.recurrent:
            dist, _ = self.network(batch, start_state)
            return map_distribution(dist, lambda t: t.reshape(-1, *t.shape[2:]))
        return self.network(batch.reshape(-1))[0]
