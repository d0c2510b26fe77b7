"""The critic role: a value network trained on lambda-returns (ALGORITHMS.md section 1, "Critic loss")."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.advantages import ValueLoss, ValueNorm, value_loss
from hcmarl.envs.base import EnvInfo
from hcmarl.keys import VALUE_TARGET
from hcmarl.errors import ConfigError
from hcmarl.nn.critics import InstructionCritic, ValueNetwork
from hcmarl.optim import GradientStep, minibatch_indices

OLD_VALUE = ("agents", "old_value_normalized")


class Critic(nn.Module):
    """Trains ``network`` (V(s) or V(o_i)) towards ``("agents", "value_target")``.

    Args:
        network: the value block, ``hcmarl.nn.CentralValue`` or ``hcmarl.nn.AgentValue``.
        lr: Adam learning rate.
        epochs: passes over the batch per iteration.
        minibatches: minibatches per pass.
        loss: ``huber`` (delta ``huber_delta``) or ``mse``.
        clip_value: clip the new prediction to old +- this (None: no clipping).
        value_norm: predict normalised values with a running normaliser (HARL's ValueNorm).
        max_grad_norm: gradient-norm clip (None or 0: no clip).
    """

    def __init__(
        self,
        network: ValueNetwork,
        lr: float = 5e-4,
        epochs: int = 5,
        minibatches: int = 1,
        loss: ValueLoss = "huber",
        huber_delta: float = 10.0,
        clip_value: float | None = None,
        value_norm: bool = True,
        max_grad_norm: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.lr = lr
        self.epochs = epochs
        self.minibatches = minibatches
        self.loss = loss
        self.huber_delta = huber_delta
        self.clip_value = clip_value
        self.value_norm = ValueNorm() if value_norm else None
        self.max_grad_norm = max_grad_norm

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the network; ``n_instructions = K > 0`` when a conductor is present (HCPO's Q(s, .) has K heads)."""
        is_instruction_critic = isinstance(self.network, InstructionCritic)
        if n_instructions > 0 and not is_instruction_critic:
            raise ConfigError(
                "model.conductor is set, and HCPO's critic must be Q(s, .) with one head per instruction: set "
                "model.critic.init_args.network.class_path=hcmarl.nn.InstructionCritic"
            )
        if is_instruction_critic and n_instructions == 0:
            raise ConfigError(
                "model.critic.init_args.network is hcmarl.nn.InstructionCritic, whose heads are a conductor's "
                "instructions, but the recipe has no model.conductor; add one (see recipes/hcpo/) or use hcmarl.nn.CentralValue"
            )
        if is_instruction_critic:
            self.network.build(info, n_instructions)
        else:
            self.network.build(info)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the value network (and nothing else)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=1e-5, fused=True)

    def value(self, td: TensorDictBase) -> torch.Tensor:
        """Value in return units, ``[..., N]``."""
        v = self.network(td)
        return v if self.value_norm is None else self.value_norm.denormalize(v)

    def instruction_values(self, td: TensorDictBase) -> torch.Tensor:
        """HCPO's Q(s, M) for every instruction M in return units, ``[..., K]`` (needs an ``InstructionCritic``)."""
        q = self.network.heads(td)
        return q if self.value_norm is None else self.value_norm.denormalize(q)

    def update(self, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        """Fit the flat batch's value targets; returns the mean loss and explained variance."""
        target = batch.get(VALUE_TARGET)
        batch = batch.select(*self.network.in_keys, strict=False)  # minibatches index only what the network reads
        if self.value_norm is not None:
            self.value_norm.update(target)
            target = self.value_norm.normalize(target)
        if self.clip_value is not None:
            with torch.no_grad():
                batch.set(OLD_VALUE, self.network(batch))
        total = torch.zeros((), device=target.device)
        for _ in range(self.epochs):
            for idx in minibatch_indices(target.shape[0], self.minibatches, target.device):
                minibatch = batch[idx]
                old = None if self.clip_value is None else minibatch.get(OLD_VALUE)
                loss = value_loss(self.network(minibatch), target[idx], self.loss, self.huber_delta, old, self.clip_value).mean()
                step(loss, self.max_grad_norm)
                total += loss.detach()
        with torch.no_grad():
            residual = target - self.network(batch)
            explained_variance = 1.0 - residual.var() / target.var().clamp_min(1e-8)
        return {"value_loss": total / (self.epochs * self.minibatches), "explained_variance": explained_variance}
