"""Sable's encoder and decoder layers over ``hcmarl.nn.retention.MultiScaleRetention`` (ALGORITHMS.md section 4, "Guider").

Encoder: x <- Norm(x + Retention(x; full)); x <- Norm(x + FF(x)). Decoder (MAT's layer with retention): x <- Norm(x +
Retention(x; causal)); y <- Norm(enc + Retention(query=enc, key=value=x; causal)); y <- Norm(y + FF(y)). ``norm``
(``layer``: LayerNorm; ``rms``: RMSNorm) and ``feed_forward`` (``gelu``: Linear, GELU, Linear; ``swiglu``:
``hcmarl.nn.layers.SwiGLU``) are the settings Mava's Sable and the MAGPO paper's guider choose.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hcmarl.nn.layers import RMSNorm, SwiGLU
from hcmarl.nn.retention import GateInput, HeadNorm, MultiScaleRetention, RetentionMasks
from hcmarl.nn.transformer import FeedForward

Norm = Literal["layer", "rms"]
FeedForwardKind = Literal["gelu", "swiglu"]


def make_norm(kind: Norm, dim: int) -> nn.Module:
    """``nn.LayerNorm`` (``layer``) or ``RMSNorm`` (``rms``) over ``dim`` channels."""
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "rms":
        return RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}; choose layer or rms")


def make_feed_forward(kind: FeedForwardKind, dim: int, zero_init: bool = False) -> nn.Module:
    """A block's position-wise feed-forward: ``FeedForward`` (``gelu``) or ``SwiGLU`` with a hidden layer of ``dim``
    (``swiglu``, Mava's width; ``zero_init`` as ``SwiGLU``'s)."""
    if kind == "gelu":
        if zero_init:
            raise ValueError("zero_init applies to the swiglu feed-forward only")
        return FeedForward(dim)
    if kind == "swiglu":
        return SwiGLU(dim, dim, zero_init=zero_init)
    raise ValueError(f"unknown feed_forward {kind!r}; choose gelu or swiglu")


class RetentionEncoderBlock(nn.Module):
    """Sable's encoder layer: x <- Norm(x + Retention(x; full)); x <- Norm(x + FF(x)).

    ``norm``, ``feed_forward`` (``zero_feed_forward``: ``SwiGLU``'s ``zero_init``) and ``gate`` as the module docstring's,
    ``head_norm`` and ``scale_keys`` the retention's (``MultiScaleRetention``); the defaults are LayerNorm, GELU, the query
    and RetNet's per-head GroupNorm and key scale."""

    def __init__(
        self,
        embed_dim: int,
        n_heads: int,
        norm: Norm = "layer",
        feed_forward: FeedForwardKind = "gelu",
        gate: GateInput = "query",
        zero_feed_forward: bool = False,
        head_norm: HeadNorm = "per_head",
        scale_keys: bool = True,
    ) -> None:
        super().__init__()
        self.retention = MultiScaleRetention(embed_dim, n_heads, gate, head_norm, scale_keys)
        self.norm1 = make_norm(norm, embed_dim)
        self.feed_forward = make_feed_forward(feed_forward, embed_dim, zero_feed_forward)
        self.norm2 = make_norm(norm, embed_dim)

    def forward(
        self, x: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool = True, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``[B, L, E]`` and this block's state ``[B, H, d, d]`` -> outputs and the next state; ``position`` (the
        tokens' timestep encodings) is added to the retention's inputs, not to the residual stream."""
        mixed, next_state = self.retention(x, x, masks.full, masks, state, carry, position)
        x = self.norm1(x + mixed)
        return self.norm2(x + self.feed_forward(x)), next_state


class RetentionDecoderBlock(nn.Module):
    """Sable's decoder layer (MAT's, with retention): x <- Norm(x + Retention(x; causal));
    y <- Norm(enc + Retention(query=enc, key=value=x; causal)); y <- Norm(y + FF(y)).

    It carries two states: the self-retention's and the cross-retention's, ``[B, 2, H, d, d]``. Settings as
    ``RetentionEncoderBlock``'s.
    """

    def __init__(
        self,
        embed_dim: int,
        n_heads: int,
        norm: Norm = "layer",
        feed_forward: FeedForwardKind = "gelu",
        gate: GateInput = "query",
        zero_feed_forward: bool = False,
        head_norm: HeadNorm = "per_head",
        scale_keys: bool = True,
    ) -> None:
        super().__init__()
        self.self_retention = MultiScaleRetention(embed_dim, n_heads, gate, head_norm, scale_keys)
        self.norm1 = make_norm(norm, embed_dim)
        self.cross_retention = MultiScaleRetention(embed_dim, n_heads, gate, head_norm, scale_keys)
        self.norm2 = make_norm(norm, embed_dim)
        self.feed_forward = make_feed_forward(feed_forward, embed_dim, zero_feed_forward)
        self.norm3 = make_norm(norm, embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        enc: torch.Tensor,
        masks: RetentionMasks,
        state: torch.Tensor,
        carry: bool = True,
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Action-stream tokens ``x`` and encodings ``enc`` ``[B, L, E]``, the block's states ``[B, 2, H, d, d]`` -> outputs
        ``[B, L, E]`` and the next states (None if not ``carry``); ``position`` as ``RetentionEncoderBlock.forward``'s."""
        mixed, self_state = self.self_retention(x, x, masks.causal, masks, state[:, 0], carry, position)
        x = self.norm1(x + mixed)
        mixed, cross_state = self.cross_retention(enc, x, masks.causal, masks, state[:, 1], carry, position)
        y = self.norm2(enc + mixed)
        next_state = torch.stack([self_state, cross_state], dim=1) if carry else None
        return self.norm3(y + self.feed_forward(y)), next_state

    def step(
        self,
        x: torch.Tensor,
        enc: torch.Tensor,
        enc_query: tuple[torch.Tensor, torch.Tensor | None],
        memory: tuple[torch.Tensor, torch.Tensor],
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The layer on one agent's action token ``x`` and encoding ``enc`` ``[B, 1, E]`` after the earlier agents of the
        timestep, with the cross-retention's ``query_projection`` of ``enc`` (plus ``position``; ``enc_query``) and the
        self- and cross-retention's running sums ``memory`` (each ``[B, H, d, d]``, ``MultiScaleRetention.step``) -> the
        output and the new sums. ``position`` ``[B, 1, E]``: the timestep's encoding, or None."""
        mixed, self_memory = self.self_retention.step(x, x, memory[0], position=position)
        x = self.norm1(x + mixed)
        mixed, cross_memory = self.cross_retention.step(enc, x, memory[1], enc_query, position)
        y = self.norm2(enc + mixed)
        return self.norm3(y + self.feed_forward(y)), (self_memory, cross_memory)
