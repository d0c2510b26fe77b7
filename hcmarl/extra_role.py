"""A role beyond the four built in (learner, critic, conductor, guider), plugged into a recipe with ``model.extra_roles``.

An extra role is a module with its own networks and optimiser that is also its own stage: the plan runs it
after the built-in stages, on the same ``IterationContext``, and it steps ``context.steps[name]``. A new
paradigm (an auxiliary model, a teacher, a learned reward) then needs no edit to the iteration or to
``MARLModule`` (docs/extending.md, "A new role").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.stages import IterationContext, Metrics


class ExtraRole(nn.Module, ABC):
    """Subclass with ``name`` (its optimiser's name, and the prefix of its metrics), ``build``, ``make_optimizer``
    and ``run``."""

    name: str

    @abstractmethod
    def build(self, info: EnvInfo) -> None:
        """Create the networks for the env described by ``info`` (after the built-in roles')."""

    @abstractmethod
    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser ``run`` steps as ``context.steps[self.name]``."""

    @abstractmethod
    def run(self, context: IterationContext) -> Metrics:
        """One iteration's update of this role after the built-in stages; its metrics, named ``<name>/...`` (a
        ``<name>/loss`` that is not finite stops training, as the built-in roles' losses do)."""
