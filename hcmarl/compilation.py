"""Optional ``torch.compile`` of the networks an update evaluates, falling back to eager execution where it fails.

A network's ``forward`` is replaced by ``CompiledForward``: the compiled function while it works,
the original one from the first compilation failure on (with one log line naming the network and
the error). Networks a trust region moves are never compiled: its Fisher-vector products differentiate
twice, which compiled graphs do not support.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hcmarl.trust_region import TrustRegion

COMPILE_ERRORS: tuple[type[BaseException], ...] = (torch._dynamo.exc.TorchDynamoException,)  # BackendCompilerFailed, Unsupported, ...


class CompiledForward:
    """``forward`` compiled by ``torch.compile``, or the eager ``forward`` once compiling it has failed."""

    def __init__(self, forward: Callable[..., Any], name: str, log: Callable[[str], None]) -> None:
        self.eager = forward
        self.compiled: Callable[..., Any] | None = torch.compile(forward, dynamic=False)
        self.name = name
        self.log = log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except COMPILE_ERRORS as error:
                self.log(f"hcmarl: torch.compile failed for {self.name} ({type(error).__name__}); it runs eagerly from now on")
                self.compiled = None
        return self.eager(*args, **kwargs)


def compile_network(network: nn.Module, name: str, log: Callable[[str], None] = print) -> int:
    """Compile the tensor-in, tensor-out parts of ``network`` (MLPs, GRU cells, transformer and retention blocks:
    the role's own forward reads TensorDicts, which ``torch.compile`` would break its graph on); returns how many.

    Each part's ``forward`` becomes a ``CompiledForward`` with an eager fallback.
    """
    from hcmarl.nn.layers import AgentMLP
    from hcmarl.nn.recurrent import AgentGRUCell
    from hcmarl.nn.retention_blocks import RetentionDecoderBlock, RetentionEncoderBlock
    from hcmarl.nn.transformer import DecoderBlock, EncoderBlock

    parts = (AgentMLP, AgentGRUCell, EncoderBlock, DecoderBlock, RetentionEncoderBlock, RetentionDecoderBlock)
    compiled = 0
    for part_name, part in network.named_modules():
        if isinstance(part, parts) and not isinstance(part.forward, CompiledForward):
            # an instance attribute shadowing the class's forward, which nn.Module.__call__ reads: mypy flags any such assignment
            part.forward = CompiledForward(part.forward, f"{name}.{part_name}" if part_name else name, log)  # type: ignore[method-assign]
            compiled += 1
    return compiled


# a role's networks (attribute) and the attribute naming the rule that moves each (Learner, Critic, Guider, Conductor)
NETWORK_RULES = {"actor": "constraint", "network": "constraint", "local": "distill"}


def compile_roles(log: Callable[[str], None] = print, **roles: nn.Module | None) -> None:
    """``compile_network`` on every network of the named roles (``learner=..., critic=...``; None: absent) except
    those a ``TrustRegion`` moves, which stay eager with one log line."""
    for role_name, role in roles.items():
        for attribute, rule in NETWORK_RULES.items():
            network = None if role is None else getattr(role, attribute, None)
            if network is None:
                continue
            name = f"{role_name}.{attribute}"
            if isinstance(getattr(role, rule, None), TrustRegion):
                log(f"hcmarl: model.compile leaves {name} eager: its trust region differentiates twice, which compiled graphs do not support")
                continue
            compile_network(network, name, log)
