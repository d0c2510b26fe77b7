"""Update schedules: which agents' actors a constraint moves, and in what order (ALGORITHMS.md section 1)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from tensordict import TensorDictBase

from hcmarl.constraints import Constraint
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB
from hcmarl.optim import GradientStep

Policy = Callable[[TensorDictBase], torch.distributions.Distribution]


class Schedule(ABC):
    """Runs a constraint over the agents of a flat batch ``[B]`` (group ``agents`` is ``[B, N]``)."""

    requires_separate_params: bool = False

    @abstractmethod
    def update(self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]: ...


class Simultaneous(Schedule):
    """All agents' actors updated together, factor 1 (MAPPO, IPPO, MAGPO's learner)."""

    def update(self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        def evaluate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            minibatch = batch[idx]
            dist = policy(minibatch)
            return dist.log_prob(minibatch.get(ACTION)), dist.entropy()

        return constraint.update(evaluate, batch.get(LOG_PROB), batch.get(ADVANTAGE), None, step)
