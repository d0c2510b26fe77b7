"""Transformer blocks over agent tokens, as MAT uses them (ALGORITHMS.md section 4, "Guider").

Tokens are agents: ``[B, N, E]``. The encoder attends over all agents; the decoder runs a
causal self-attention over the shifted action stream, then lets each agent's encoding query
the action stream up to that agent (MAT's decoder: the query is agent i's encoding, so the
output at position i is agent i's, with no positional embedding needed).
"""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(n: int, device: torch.device) -> torch.Tensor:
    """``[n, n]`` bool, True where attention is forbidden: position i sees positions 0..i only."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear, the position-wise block of a transformer layer."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))


class EncoderBlock(nn.Module):
    """x <- LN(x + SelfAttention(x)); x <- LN(x + FF(x)): every agent attends to every agent."""

    def __init__(self, embed_dim: int, n_heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.feed_forward(x))


class DecoderBlock(nn.Module):
    """MAT's decoder layer on the action stream ``x`` and the encodings ``enc``, both ``[B, N, E]``.

    x <- LN(x + CausalSelfAttention(x)); y <- LN(enc + CausalAttention(query=enc, key=value=x));
    y <- LN(y + FF(y)). Position i depends only on the action tokens 0..i (agents before i,
    after the shift) and the encodings 0..i, so decoding agent i needs only that prefix.
    """

    def __init__(self, embed_dim: int, n_heads: int) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attention = nn.MultiheadAttention(embed_dim, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        mask = causal_mask(x.shape[-2], x.device)
        x = self.norm1(x + self.self_attention(x, x, x, attn_mask=mask, need_weights=False)[0])
        y = self.norm2(enc + self.cross_attention(enc, x, x, attn_mask=mask, need_weights=False)[0])
        return self.norm3(y + self.feed_forward(y))
