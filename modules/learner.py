"""The learner role: decentralised per-agent actors moved by a constraint under a schedule.

MAPPO/IPPO use ``ClipPPO`` with ``Simultaneous`` (ALGORITHMS.md section 2).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.constraints import Constraint
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, LOG_PROB, OBSERVATION
from hcmarl.nn.actors import MLPActor
from hcmarl.optim import GradientStep
from hcmarl.schedules import Schedule


class Learner(nn.Module):
    """Decentralised actors: each agent acts on its own observation.

    Args:
        actor: the actor network block (e.g. ``hcmarl.nn.MLPActor``).
        constraint: how the actor's parameters move (e.g. ``hcmarl.constraints.ClipPPO``).
        schedule: which agents move when (e.g. ``hcmarl.schedules.Simultaneous``).
        lr: Adam learning rate of the actor.
    """

    def __init__(self, actor: MLPActor, constraint: Constraint, schedule: Schedule, lr: float = 5e-4) -> None:
        super().__init__()
        self.actor = actor
        self.constraint = constraint
        self.schedule = schedule
        self.lr = lr

    def build(self, info: EnvInfo) -> None:
        if self.schedule.requires_separate_params and getattr(self.actor, "share_params", False):
            raise ConfigError(
                f"model.learner.schedule={type(self.schedule).__name__} updates agents one after another and needs "
                "one parameter set per agent; set model.learner.actor.init_args.share_params=false"
            )
        self.actor.build(info)

    def in_keys(self) -> list:
        return [OBSERVATION, ACTION_MASK]

    @torch.no_grad()
    def act(self, td: TensorDictBase, deterministic: bool = False) -> TensorDictBase:
        """Sample (or take the mode of) every agent's action; write the action and its log-probability."""
        dist = self.actor(td)
        action = dist.mode if deterministic else dist.sample()
        td.set(ACTION, action)
        td.set(LOG_PROB, dist.log_prob(action))
        return td

    def update(self, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        """One policy update on a flat batch ``[B]`` holding advantages; returns detached diagnostics."""
        return self.schedule.update(self.actor, self.constraint, batch, step)
