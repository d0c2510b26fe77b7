"""The learner role: decentralised per-agent actors moved by a constraint under a schedule.

MAPPO/IPPO use ``ClipPPO`` with ``Simultaneous`` (ALGORITHMS.md section 2).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.constraints import Constraint
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError, check_init_args
from hcmarl.guided import GuidedImitation
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB, VALUE
from hcmarl.nn.actors import Actor
from hcmarl.optim import AgentAdam, GradientStep, check_minibatches
from hcmarl.schedules import NO_UPSTREAM, Schedule, Upstream


class Learner(nn.Module):
    """Decentralised actors: each agent acts on its own observation.

    Args:
        actor: the actor network block (``hcmarl.nn.MLPActor`` or ``hcmarl.nn.GRUActor``).
        constraint: how the actor's parameters move (e.g. ``hcmarl.constraints.ClipPPO``; with a guider,
            ``hcmarl.guided.GuidedImitation``, which the guider's update loop applies).
        schedule: which agents move when (e.g. ``hcmarl.schedules.Simultaneous``).
        lr: Adam learning rate of the actor.
    """

    def __init__(self, actor: Actor, constraint: Constraint | GuidedImitation, schedule: Schedule, lr: float = 5e-4) -> None:
        super().__init__()
        check_init_args(Learner, {"lr": lr}, {"lr": "> 0"}, key="model.learner.init_args")
        self.actor = actor
        self.constraint = constraint
        self.schedule = schedule
        self.lr = lr

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the actor; with ``n_instructions = K > 0`` it also reads each agent's instruction (HCPO)."""
        if self.schedule.requires_separate_params and self.actor.share_params:
            raise ConfigError(
                f"model.learner.schedule={type(self.schedule).__name__} updates agents one after another and needs "
                "one parameter set per agent; set model.learner.actor.init_args.share_params=false"
            )
        self.actor.build(info, n_instructions)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the actor; per-agent ``AgentAdam`` when the schedule moves one agent at a time."""
        if self.schedule.requires_separate_params:
            return AgentAdam(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=1e-5, fused=True)

    def check_batch(self, num_envs: int, frames_per_batch: int) -> None:
        """A ConfigError if the constraint asks for more minibatches than the batch has units (per lane), or if the envs
        do not split into its lanes.

        A recurrent actor's minibatches are whole env rollouts, a feed-forward actor's single frames.
        """
        minibatches = getattr(self.constraint, "minibatches", None) or 1  # None: a guider's loop sets the minibatches
        lanes = getattr(self.constraint, "lanes", 1)
        check_minibatches("model.learner.init_args.constraint.init_args", minibatches, lanes, num_envs, frames_per_batch, self.actor.recurrent)

    @torch.no_grad()
    def act(self, td: TensorDictBase, deterministic: bool = False) -> TensorDictBase:
        """Sample (or take the mode of) every agent's action; write the action and its log-probability."""
        dist = self.actor.step(td)
        action = dist.mode if deterministic else dist.sample()
        td.set(ACTION, action)
        td.set(LOG_PROB, dist.log_prob(action))
        return td

    def update(self, batch: TensorDictBase, step: GradientStep, upstream: Upstream = NO_UPSTREAM) -> dict[str, torch.Tensor]:
        """One policy update on a batch holding advantages; returns detached diagnostics.

        The batch is flat ``[B]`` for feed-forward actors and ``[envs, time]`` for recurrent ones
        (minibatches are then drawn over envs, and each env's rollout is replayed whole). ``upstream``: what earlier
        stages hand the update, over the same samples (``hcmarl.schedules.Upstream``: a guider to imitate, a
        conductor's factor and KL weights).
        """
        batch = batch.select(*self.actor.in_keys, ACTION, LOG_PROB, ADVANTAGE, VALUE, strict=False)  # minibatches index only these
        return self.schedule.update(self.actor, self.constraint, batch, step, upstream)
