"""Fitting a value head to lambda-returns (ALGORITHMS.md section 1, "Critic loss"): the one block the critic and the guider share.

Per iteration: the running normaliser (if any) first takes the batch's returns, which are then
normalised; with ``clip_value`` the head's predictions before the update are kept. Per minibatch:
the Huber (or MSE) loss of the new predictions, pessimistically clipped around the old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hcmarl.advantages import ValueLoss, ValueNorm, value_loss
from hcmarl.optim import take_rows


@dataclass(frozen=True)
class ValueTargets:
    """One iteration's regression targets (normalised when a ``ValueNorm`` is used) and, for clipping, the old predictions."""

    target: torch.Tensor
    old_prediction: torch.Tensor | None = None


@dataclass(frozen=True)
class ValueFit:
    """How a value head is fitted: ``loss`` (``huber`` with ``huber_delta``, or ``mse``), clipping around the old
    prediction (``clip_value``; None: none), an optional running ``value_norm`` (HARL's ValueNorm), and a ``scale`` of
    the loss (the official MAGPO code's 0.5 x clipped MSE: ``mse``, ``clip_value`` = its eps, no norm, ``scale`` 0.5)."""

    loss: ValueLoss = "huber"
    huber_delta: float = 10.0
    clip_value: float | None = None
    value_norm: ValueNorm | None = None
    scale: float = 1.0

    def targets(self, returns: torch.Tensor, predict_old: Callable[[], torch.Tensor]) -> ValueTargets:
        """Update the normaliser with ``returns``, normalise them, and keep ``predict_old()`` if values are clipped."""
        if self.value_norm is not None:
            self.value_norm.update(returns)
            returns = self.value_norm.normalize(returns)
        if self.clip_value is None:
            return ValueTargets(returns)
        with torch.no_grad():
            return ValueTargets(returns, predict_old())

    def minibatch_loss(self, prediction: torch.Tensor, targets: ValueTargets, idx: torch.Tensor) -> torch.Tensor:
        """The mean loss of ``prediction`` on the samples ``idx`` of ``targets``."""
        old = None if targets.old_prediction is None else take_rows(targets.old_prediction, idx)
        loss = value_loss(prediction, take_rows(targets.target, idx), self.loss, self.huber_delta, old, self.clip_value).mean()
        return loss if self.scale == 1.0 else self.scale * loss
