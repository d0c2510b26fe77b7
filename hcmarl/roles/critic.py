"""The critic role: a value network trained on lambda-returns (ALGORITHMS.md section 1, "Critic loss")."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.advantages import ValueLoss, ValueNorm
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import check_init_args
from hcmarl.keys import VALUE_TARGET
from hcmarl.nn.critics import InstructionCritic, ValueNetwork
from hcmarl.optim import GradientStep, run_minibatches
from hcmarl.value_fit import ValueFit


class Critic(nn.Module):
    """Trains ``network`` (V(s) or V(o_i)) towards ``("agents", "value_target")``.

    Args:
        network: the value block, ``hcmarl.nn.CentralValue`` or ``hcmarl.nn.AgentValue``; with a conductor (HCPO),
            ``hcmarl.nn.CentralValue`` (the paper's V(s)) or ``hcmarl.nn.InstructionCritic`` (Q(s, .), K heads).
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
        check_init_args(
            Critic,
            {
                "lr": lr,
                "epochs": epochs,
                "minibatches": minibatches,
                "huber_delta": huber_delta,
                "clip_value": clip_value,
                "max_grad_norm": max_grad_norm,
            },
            {"lr": "> 0", "epochs": ">= 1", "minibatches": ">= 1", "huber_delta": "> 0", "clip_value": "> 0", "max_grad_norm": ">= 0"},
            key="model.critic.init_args",
            clip_value={"optional": True},
            max_grad_norm={"optional": True},
        )
        self.network = network
        self.lr = lr
        self.epochs = epochs
        self.minibatches = minibatches
        self.loss = loss
        self.huber_delta = huber_delta
        self.clip_value = clip_value
        self.value_norm: ValueNorm | None = ValueNorm() if value_norm else None
        self.max_grad_norm = max_grad_norm

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the network; ``n_instructions = K > 0`` when a conductor is present (HCPO). An ``InstructionCritic``
        then gets K heads Q(s, .); a ``CentralValue`` (the paper's V(s)) ignores K (``hcmarl.iteration.plan_iteration``
        has checked the pairing)."""
        if isinstance(self.network, InstructionCritic):
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
        if not isinstance(self.network, InstructionCritic):
            raise TypeError(f"instruction_values needs an InstructionCritic network, not {type(self.network).__name__}")
        q = self.network.heads(td)
        return q if self.value_norm is None else self.value_norm.denormalize(q)

    @property
    def value_fit(self) -> ValueFit:
        """The regression this critic fits its network by (shared with the guider's value head)."""
        return ValueFit(self.loss, self.huber_delta, self.clip_value, self.value_norm)

    def update(self, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        """Fit the flat batch's value targets over ``epochs`` x ``minibatches``; returns the mean loss and explained variance."""
        returns = batch.get(VALUE_TARGET)
        batch = batch.select(*self.network.in_keys, strict=False)  # minibatches index only what the network reads
        fit = self.value_fit
        targets = fit.targets(returns, lambda: self.network(batch))

        def minibatch_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = fit.minibatch_loss(self.network(batch[idx]), targets, idx)
            step(loss, self.max_grad_norm)
            return {"value_loss": loss.detach()}

        metrics = run_minibatches(batch.shape[0], self.epochs, self.minibatches, targets.target.device, minibatch_step)
        with torch.no_grad():
            residual = targets.target - self.network(batch)
            explained_variance = 1.0 - residual.var() / targets.target.var().clamp_min(1e-8)
        return metrics | {"explained_variance": explained_variance}
