"""One gradient step and minibatch indices: the plumbing every constraint shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.optim import Optimizer


def _clip_grad_norm(optimizer: Optimizer, max_norm: float) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


@dataclass
class GradientStep:
    """zero_grad -> backward -> clip -> step for one optimiser.

    Inside Lightning, ``backward`` is ``LightningModule.manual_backward`` and ``clip`` its
    ``clip_gradients``, so precision plugins and DDP see every backward pass.
    """

    optimizer: Optimizer
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    clip: Callable[[Optimizer, float], None] = field(default=_clip_grad_norm)

    def __call__(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if max_grad_norm is not None and max_grad_norm > 0:
            self.clip(self.optimizer, max_grad_norm)
        self.optimizer.step()


def minibatch_indices(batch_size: int, minibatches: int, device: torch.device) -> Iterator[torch.Tensor]:
    """A random permutation of ``range(batch_size)`` cut into ``minibatches`` near-equal pieces."""
    if not 1 <= minibatches <= batch_size:
        raise ValueError(f"minibatches must be in [1, {batch_size}] for a batch of {batch_size}, got {minibatches}")
    yield from torch.randperm(batch_size, device=device).tensor_split(minibatches)
