"""Evaluation episodes: a batch of envs stepped until each env's first episode has ended, and what is read from it.

An evaluation scores each env's *first* episode (its return, length, win and metrics). Stepping on after the
last of those episodes has ended would only draw episodes nobody reads, so :func:`rollout_first_episodes`
stops there: on SMAX 3s5z, whose battles end long before the 200 steps allowed, that is most of the steps.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from hcmarl.datamodules.protocols import Policy

EVALUATION_CHUNK = 8
"""Steps an evaluation takes between checks of whether every env's first episode has ended."""


def rollout_first_episodes(env: EnvBase, policy: Policy, max_steps: int, chunk: int = EVALUATION_CHUNK) -> TensorDictBase:
    """Reset ``env`` (a batch ``[E]`` of envs) and step it with ``policy`` until every env's first episode has
    ended, or for ``max_steps`` steps: the rollout ``[E, T]`` (time on dim 1, T <= ``max_steps``).

    It is TorchRL's ``env.rollout(max_steps, policy, break_when_any_done=False)`` taken ``chunk`` steps at a
    time (each chunk's last step left unreset, the next chunk resetting what ended, as one uncut rollout does),
    stopped after the chunk in which the last env's first episode ends. Every first episode in it is the
    uncut rollout's; when that happens only at ``max_steps`` (episodes of a fixed length), so is the whole
    rollout, and so is the env's state after it.
    """
    td = env.reset()
    time_dim = len(env.batch_size)
    ended = torch.zeros(env.batch_size, dtype=torch.bool, device=env.device)
    parts: list[TensorDictBase] = []
    taken = 0
    while taken < max_steps:
        part = env.rollout(min(chunk, max_steps - taken), policy, auto_reset=False, tensordict=td, break_when_any_done=False)
        parts.append(part)
        taken += part.shape[time_dim]
        ended |= part.get(("next", "done")).any(dim=time_dim).reshape(ended.shape)
        if ended.all():
            break
        td = step_mdp(part[(slice(None),) * time_dim + (-1,)])
    return torch.cat(parts, dim=time_dim)


def episode_returns(reward: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return and length of each env's first episode in a rollout ``[E, T, 1]`` (steps after its end are ignored)."""
    done = done.squeeze(-1)
    ended_before = (done.long().cumsum(dim=1) - done.long()) > 0
    live = (~ended_before).to(reward.dtype)
    return (reward.squeeze(-1) * live).sum(dim=1), live.sum(dim=1)


def first_episode_end(values: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Each env's ``values`` ``[E, T, 1]`` at the last step of its first episode in a rollout (the rollout's last
    step where no episode ended): an episode's outcome (``win``) or metric, not a later episode's."""
    done = done.squeeze(-1)
    last = torch.where(done.any(dim=1), done.to(torch.uint8).argmax(dim=1), done.shape[1] - 1)  # argmax: the first end
    return values.squeeze(-1).gather(1, last[:, None]).squeeze(1)
