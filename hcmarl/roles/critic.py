"""The critic role: a value network trained on lambda-returns (ALGORITHMS.md section 1, "Critic loss")."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.envs import Transform

from hcmarl.advantages import ValueLoss, ValueNorm
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import check_init_args
from hcmarl.keys import VALUE_TARGET
from hcmarl.nn.critics import InstructionCritic, ValueNetwork
from hcmarl.nn.recurrent_critics import RecurrentValue
from hcmarl.optim import GradientStep, check_minibatches, run_minibatches, take_rows
from hcmarl.value_fit import ValueFit


class Critic(nn.Module):
    """Trains ``network`` (V(s) or V(o_i)) towards ``("agents", "value_target")``.

    The loss stepped is ``vf_coef * value_loss_scale * value_loss`` (``hcmarl.advantages.value_loss``), weighted before the
    gradient-norm clip: Mava's rec_mappo critic loss is ``vf_coef`` (0.5) x 0.5 x max((V - R)^2, (V_clip - R)^2) on its
    own Adam with its own clip (``vf_coef: 0.5``, ``value_loss_scale: 0.5``, ``loss: mse``, ``value_norm: false``).

    Args:
        network: the value block, ``hcmarl.nn.CentralValue`` or ``hcmarl.nn.AgentValue``, or their recurrent forms
            ``hcmarl.nn.RecurrentCentralValue`` and ``hcmarl.nn.RecurrentAgentValue`` (trained on whole env rollouts);
            with a conductor (HCPO), ``hcmarl.nn.CentralValue`` (the paper's V(s)) or ``hcmarl.nn.InstructionCritic``
            (Q(s, .), K heads).
        lr: Adam learning rate.
        epochs: passes over the batch per iteration.
        minibatches: minibatches per pass.
        loss: ``huber`` (delta ``huber_delta``) or ``mse``.
        clip_value: clip the new prediction to old +- this (None: no clipping).
        value_norm: predict normalised values with a running normaliser (HARL's ValueNorm).
        max_grad_norm: gradient-norm clip (None or 0: no clip).
        vf_coef: the weight of the value loss in the loss stepped (before the clip; the value loss logged is unweighted).
        value_loss_scale: a factor on the value loss itself (``hcmarl.value_fit.ValueFit.scale``; logged with it).
        lanes: the envs split into this many equal lanes, every minibatch an equal share of each
            (``hcmarl.optim.minibatch_indices``; the official MAGPO code's ``update_batch_size``, as ``ClipPPO``'s).
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
        vf_coef: float = 1.0,
        value_loss_scale: float = 1.0,
        lanes: int = 1,
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
                "vf_coef": vf_coef,
                "value_loss_scale": value_loss_scale,
                "lanes": lanes,
            },
            {
                "lr": "> 0",
                "epochs": ">= 1",
                "minibatches": ">= 1",
                "huber_delta": "> 0",
                "clip_value": "> 0",
                "max_grad_norm": ">= 0",
                "vf_coef": "> 0",
                "value_loss_scale": "> 0",
                "lanes": ">= 1",
            },
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
        self.vf_coef = vf_coef
        self.value_loss_scale = value_loss_scale
        self.lanes = lanes

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the network; ``n_instructions = K > 0`` when a conductor is present (HCPO). An ``InstructionCritic``
        then gets K heads Q(s, .); a ``CentralValue`` (the paper's V(s)) ignores K (``hcmarl.iteration.plan_iteration``
        has checked the pairing)."""
        if isinstance(self.network, InstructionCritic):
            self.network.build(info, n_instructions)
        else:
            self.network.build(info)

    @property
    def recurrent(self) -> bool:
        """Whether the network carries a hidden state through each env's rollout (its minibatches are then whole rollouts)."""
        return self.network.recurrent

    def env_transforms(self) -> list[Transform]:
        """What the envs need for a recurrent network (its state primer, episode-start flags); nothing otherwise."""
        return self.network.env_transforms() if isinstance(self.network, RecurrentValue) else []

    @torch.no_grad()
    def advance(self, td: TensorDictBase) -> None:
        """One rollout step of a recurrent network: it writes its next hidden state (``RecurrentValue.step``; its value is
        recomputed by ``rollout_values``, not kept). Nothing for a feed-forward one."""
        if isinstance(self.network, RecurrentValue):
            self.network.step(td)

    def check_batch(self, num_envs: int, frames_per_batch: int) -> None:
        """A ConfigError if the envs do not split into ``lanes`` or ``minibatches`` exceeds a lane's units: whole env
        rollouts for a recurrent network, else frames (``hcmarl.optim.check_minibatches``)."""
        check_minibatches("model.critic.init_args", self.minibatches, self.lanes, num_envs, frames_per_batch, self.recurrent)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the value network (and nothing else)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, eps=1e-5, fused=True)

    def value(self, td: TensorDictBase) -> torch.Tensor:
        """Value in return units, ``[..., N]``."""
        return self._return_units(self.network(td))

    def rollout_values(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Value of every step of a rollout ``[E, T]`` and of its next observation, in return units, ``[E, T, N]`` each.

        A recurrent network replays each env's rollout (``RecurrentValue.rollout_values``); a feed-forward one reads
        each step and its ``"next"`` alone.
        """
        if isinstance(self.network, RecurrentValue):
            value, next_value = self.network.rollout_values(batch)
            return self._return_units(value), self._return_units(next_value)
        return self.value(batch), self.value(batch.get("next"))

    def _return_units(self, v: torch.Tensor) -> torch.Tensor:
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
        return ValueFit(self.loss, self.huber_delta, self.clip_value, self.value_norm, self.value_loss_scale)

    def update(self, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        """Fit the batch's value targets over ``epochs`` x ``minibatches``; returns the mean loss and explained variance.

        The batch is flat ``[B]`` for a feed-forward network and the rollout ``[envs, time]`` for a recurrent one
        (minibatches are then drawn over envs, and each env's rollout is replayed whole from its stored first state).
        """
        returns = batch.get(VALUE_TARGET)
        batch = batch.select(*self.network.in_keys, strict=False)  # minibatches index only what the network reads
        fit = self.value_fit
        targets = fit.targets(returns, lambda: self.network(batch))

        def minibatch_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = fit.minibatch_loss(self.network(take_rows(batch, idx)), targets, idx)
            step(loss if self.vf_coef == 1.0 else self.vf_coef * loss, self.max_grad_norm)
            return {"value_loss": loss.detach()}

        metrics = run_minibatches(batch.shape[0], self.epochs, self.minibatches, targets.target.device, minibatch_step, self.lanes)
        with torch.no_grad():
            residual = targets.target - self.network(batch)
            explained_variance = 1.0 - residual.var() / targets.target.var().clamp_min(1e-8)
        return metrics | {"explained_variance": explained_variance}
