"""Wraps a role's ``act`` as a TensorDict module, so a TorchRL collector can hold it.

The wrapper holds the role itself, not a copy: the collector acts with the parameters
being trained (DESIGN.md, "One iteration", step 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase


class ActingPolicy(TensorDictModuleBase):
    """Calls ``act(td) -> td`` under ``torch.no_grad``; ``in_keys``/``out_keys`` tell TorchRL what it reads and writes.

    ``begin_rollout``, if given, is called by the datamodule before each training rollout (a recurrent
    guider remembers the state the rollout starts from).
    """

    def __init__(
        self,
        act: Callable[[TensorDictBase], TensorDictBase],
        in_keys: Sequence,
        out_keys: Sequence,
        begin_rollout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._act = act
        self._begin_rollout = begin_rollout
        self.in_keys = list(in_keys)
        self.out_keys = list(out_keys)

    def begin_rollout(self) -> None:
        """Tell the policy a new training rollout starts."""
        if self._begin_rollout is not None:
            self._begin_rollout()

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._act(tensordict)
