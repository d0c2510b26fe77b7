"""What the JAX-backed env families (SMAX, RWARE, LBF, Connector) share: the jax device matching torch's, PRNG keys from
seeds, the record of a batch's packed state and its partial reset, and the jitted restart of the envs a step ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PackedEnvs:
    """The mutable state of a JAX-backed env batch: the jax PRNG key, the sub-envs' states packed (uint8 ``[E, B]``,
    ``hcmarl.envs.smax_batched.byte_packing``), and in torch the rows ``[E, W]`` the agents act on next and which
    sub-envs the last step restarted.

    A plain object rather than attributes of the env: ``EnvBase`` is an ``nn.Module``, whose
    ``__setattr__`` costs about 0.1 ms per call, several times per step.
    """

    key: Any
    packed: Any
    rows: torch.Tensor
    restarted: torch.Tensor

    def reset_where(self, mask: torch.Tensor, init: Callable, select: Callable, to_jax: Callable, to_torch: Callable) -> None:
        """New episodes in the envs of ``mask`` ``[E]`` (TorchRL's ``_reset``), unless the last step already restarted
        each of them: then only the flags are cleared. ``init``/``select`` are the batch's jitted reset and
        ``select(mask, fresh, old)``; ``to_jax``/``to_torch`` the DLPack hand-overs."""
        if bool((mask & ~self.restarted).any()):  # some env to reset was not restarted by the step
            self.key, fresh_packed, fresh_rows = init(self.key, mask.shape[0])
            self.packed = select(to_jax(mask), fresh_packed, self.packed)
            self.rows = torch.where(mask.unsqueeze(-1), to_torch(fresh_rows), self.rows)
        self.restarted &= ~mask


def select_where(mask: Any, fresh: Any, old: Any) -> Any:
    """``fresh`` where ``mask`` ``[E]``, else ``old`` (jax arrays ``[E, ...]``)."""
    import jax.numpy as jnp

    return jnp.where(mask.reshape(mask.shape + (1,) * (fresh.ndim - 1)), fresh, old)


def restart_ended(fresh_some: Callable, fresh_all: Callable, key: Any, done: Any, packed: Any, rows: Any) -> tuple[Any, Any]:
    """``packed`` and ``rows`` (jax, ``[E, ...]``) with new episodes where ``done`` ``[E]``, reset only as many as needed.

    An env's own auto-reset resets every env at every step and keeps the reset where the episode ended. Here no env
    is reset when none ended, ``slots`` (an eighth of the batch) are reset by ``fresh_some(key, index)`` and scattered
    to the ended ones when that many suffice, and the whole batch by ``fresh_all(key)`` only when more ended at once
    (as when episodes that started together reach the time limit together). Traced inside the batch's jitted step.
    """
    import jax
    import jax.numpy as jnp

    num_envs = done.shape[0]
    slots = max(1, num_envs // 8)

    def none_ended(_):
        return packed, rows

    def few_ended(_):
        index = jnp.nonzero(done, size=slots, fill_value=num_envs)[0]  # num_envs: unused slot, dropped below
        fresh_packed, fresh_rows = fresh_some(key, index)
        return packed.at[index].set(fresh_packed, mode="drop"), rows.at[index].set(fresh_rows, mode="drop")

    def many_ended(_):
        fresh_packed, fresh_rows = fresh_all(key)
        return select_where(done, fresh_packed, packed), select_where(done, fresh_rows, rows)

    ended = done.sum()
    branch = jnp.where(ended == 0, 0, jnp.where(ended <= slots, 1, 2))
    return jax.lax.switch(branch, (none_ended, few_ended, many_ended), None)


def jax_device(device: torch.device):
    """The jax device matching ``device``: its GPU when torch uses CUDA and jax has one, else the CPU."""
    import jax

    if device.type == "cuda":
        try:
            return jax.devices("gpu")[device.index or 0]
        except RuntimeError:  # jax without a GPU backend: simulate on the CPU
            pass
    return jax.devices("cpu")[0]


def seed_key(seed: int | None, device: Any):
    """A jax PRNG key from ``seed`` (``None`` draws one from torch's global RNG), on ``device``."""
    import jax

    if seed is None:
        seed = int(torch.empty((), dtype=torch.int64).random_())
    return jax.device_put(jax.random.PRNGKey(seed % 2**32), device)
