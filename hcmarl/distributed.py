"""All-reduce helpers for the statistics DDP does not synchronise (DESIGN.md, "Scale")."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place, and returned); a no-op in one process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (in place, and returned); a no-op in one process."""
    return all_reduce_sum(tensor).div_(world_size())


def world_size() -> int:
    """Number of ranks (1 outside DDP)."""
    return dist.get_world_size() if is_distributed() else 1
