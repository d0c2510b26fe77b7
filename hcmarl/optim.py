"""One gradient step, minibatch indices and rows, a per-agent Adam and a check of saved optimiser states: the plumbing every constraint shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from tensordict import TensorDictBase
from torch.optim import Optimizer

from hcmarl.errors import ConfigError


def _clip_grad_norm(optimizer: Optimizer, max_norm: float) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


@dataclass(frozen=True)
class GradientStep:
    """zero_grad -> backward -> clip -> step for one optimiser, moving every agent's parameters or one agent's.

    Inside Lightning, ``backward`` is ``LightningModule.manual_backward`` and ``clip`` its
    ``clip_gradients``, so precision plugins and DDP see every backward pass. ``agent`` is the
    agent whose slice of the stacked per-agent parameters this step moves (None: all of them);
    a sequential schedule makes one per agent with ``for_agent`` and hands it to the constraint.
    """

    optimizer: Optimizer
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    clip: Callable[[Optimizer, float], None] = field(default=_clip_grad_norm)
    agent: int | None = None

    def for_agent(self, agent: int) -> GradientStep:
        """The same step moving only ``agent``'s parameter slice (ALGORITHMS.md section 1, ``Sequential``); needs ``AgentAdam``."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # under Lightning: the wrapped optimiser
        if not isinstance(optimizer, AgentAdam):
            raise TypeError(f"updating one agent at a time needs AgentAdam, not {type(optimizer).__name__}")
        return replace(self, agent=agent)

    def __call__(self, loss: torch.Tensor, max_grad_norm: float | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if max_grad_norm is not None and max_grad_norm > 0:
            self.clip(self.optimizer, max_grad_norm)
        if self.agent is None:
            self.optimizer.step()
        else:
            step_one_agent: Callable[..., Any] = self.optimizer.step  # AgentAdam's (Lightning's wrapper passes keywords on)
            step_one_agent(agent=self.agent)


def minibatch_indices(batch_size: int, minibatches: int, device: torch.device, lanes: int = 1) -> Iterator[torch.Tensor]:
    """A random permutation of ``range(batch_size)`` cut into ``minibatches`` near-equal pieces.

    With ``lanes > 1`` the batch is ``lanes`` equal blocks one after another (the official MAGPO code's
    ``update_batch_size``): one permutation of a block's ``batch_size // lanes`` units is cut into pieces, and minibatch k
    holds piece k of every block, block by block (equal parts, as the code's lanes share their shuffling key).
    """
    if lanes > 1:
        if batch_size % lanes != 0:
            raise ValueError(f"a batch of {batch_size} does not split into {lanes} equal lanes")
        lane_size = batch_size // lanes
        if not 1 <= minibatches <= lane_size:
            raise ValueError(f"minibatches must be in [1, {lane_size}] for lanes of {lane_size}, got {minibatches}")
        offsets = torch.arange(lanes, device=device).unsqueeze(1) * lane_size
        for piece in torch.randperm(lane_size, device=device).tensor_split(minibatches):
            yield (piece.unsqueeze(0) + offsets).reshape(-1)
        return
    if not 1 <= minibatches <= batch_size:
        raise ValueError(f"minibatches must be in [1, {batch_size}] for a batch of {batch_size}, got {minibatches}")
    yield from torch.randperm(batch_size, device=device).tensor_split(minibatches)


Rows = TypeVar("Rows", torch.Tensor, TensorDictBase)


def take_rows(data: Rows, idx: torch.Tensor) -> Rows:
    """The rows ``idx`` (a 1-D index tensor) of a tensor or TensorDict along dimension 0: ``data[idx]``, by ``index_select``.

    The same values as ``data[idx]``; on CPU ``data[idx]`` takes the general advanced-indexing path (``aten::index``),
    2-3x slower for a minibatch of a rollout, and a minibatch loop gathers every epoch. Nested TensorDicts keep their
    own trailing batch dimensions.
    """
    if isinstance(data, torch.Tensor):
        return data.index_select(0, idx)
    return data.apply(lambda leaf: take_rows(leaf, idx), batch_size=[idx.numel(), *data.batch_size[1:]], call_on_nested=True)


def check_minibatches(key: str, minibatches: int, lanes: int, num_envs: int, frames_per_batch: int, sequences: bool) -> None:
    """A ConfigError naming ``key``'s settings if the envs do not split into ``lanes`` or ``minibatches`` exceeds one
    lane's units (``minibatch_indices`` would fail at the first update): whole env rollouts when ``sequences`` (a
    recurrent network replays each env's rollout), else frames."""
    if num_envs % lanes != 0:
        raise ConfigError(f"{key}.lanes={lanes} does not divide data.num_envs={num_envs}: set data.num_envs to lanes x the envs of one lane")
    units, unit = (num_envs, "data.num_envs") if sequences else (frames_per_batch, "frames per iteration")
    units //= lanes
    if minibatches > units:
        raise ConfigError(
            f"{key}.minibatches={minibatches} exceeds {unit}{' per lane' if lanes > 1 else ''} ({units})"
            + (" (a recurrent network's minibatches are whole env rollouts)" if sequences else "")
            + f"; lower minibatches or raise {unit}"
        )


def run_minibatches(
    batch_size: int,
    epochs: int,
    minibatches: int,
    device: torch.device,
    minibatch_step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    lanes: int = 1,
) -> dict[str, torch.Tensor]:
    """The one epoch x minibatch loop: ``minibatch_step(indices)`` on each of ``epochs`` random splits of the batch into
    ``minibatches`` (``minibatch_indices``, with ``lanes``); returns the mean of each detached metric the steps return."""
    sums: dict[str, torch.Tensor] = {}
    for _ in range(epochs):
        for idx in minibatch_indices(batch_size, minibatches, device, lanes):
            for key, value in minibatch_step(idx).items():
                sums[key] = sums.get(key, 0.0) + value
    return {key: value / (epochs * minibatches) for key, value in sums.items()}


class AgentAdam(Optimizer):
    """Adam for parameters that stack agents on dimension 0, able to step one agent alone.

    ``step(agent=i)`` changes only slice ``i`` of every parameter and of its moments, so the
    other agents' policies stay exactly as they are (ALGORITHMS.md section 1, ``Sequential``:
    agents update one after another). Step counts, and so bias corrections, are per agent.
    ``step()`` is plain Adam over all slices.
    """

    def __init__(self, params, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-5) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, agent: int | None = None) -> torch.Tensor | None:  # type: ignore[override]  # adds the agent keyword
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        part = slice(None) if agent is None else slice(agent, agent + 1)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], device=p.device, dtype=p.dtype)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad, exp_avg, exp_avg_sq, steps = p.grad[part], state["exp_avg"][part], state["exp_avg_sq"][part], state["step"][part]
                steps += 1
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = steps.reshape(-1, *([1] * (p.dim() - 1)))
                denom = (exp_avg_sq / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p[part] -= group["lr"] * (exp_avg / (1 - beta1**t)) / denom
        return loss


def optimizer_layout_problem(roles: list[str], saved_states: list[dict[str, Any]], optimizers: list[Optimizer]) -> str | None:
    """What stops a checkpoint's optimiser states from fitting ``optimizers``, parameter by parameter (None: nothing).

    The weights can match while the optimisers' parameter order does not (a checkpoint of an older hcmarl):
    Adam would then fail at its first step with a bare shape error, or pair moments with the wrong parameters.
    """
    if len(saved_states) != len(optimizers):
        return f"optimisers: {len(saved_states)} saved, {len(optimizers)} in this recipe ({', '.join(roles)})"
    for role, saved, optimizer in zip(roles, saved_states, optimizers, strict=True):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        indices = [i for group in saved["param_groups"] for i in group["params"]]
        if len(indices) != len(params):
            return f"the {role} optimiser holds {len(indices)} parameters, this recipe's has {len(params)}"
        for position, (index, param) in enumerate(zip(indices, params, strict=True)):
            moment = saved["state"].get(index, {}).get("exp_avg")
            if moment is not None and moment.shape != param.shape:
                return (
                    f"the {role} optimiser's parameter {position} has Adam moments of shape {tuple(moment.shape)}, "
                    f"this recipe's parameter there has shape {tuple(param.shape)}"
                )
    return None
