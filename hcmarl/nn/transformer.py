"""Transformer blocks over agent tokens, as MAT uses them (ALGORITHMS.md section 4, "Guider").

Tokens are agents: ``[B, N, E]``. The encoder attends over all agents; the decoder runs a
causal self-attention over the shifted action stream, then lets each agent's encoding query
the action stream up to that agent (MAT's decoder: the query is agent i's encoding, so the
output at position i is agent i's, with no positional embedding needed). Decoding agent by agent,
``DecoderBlock.step`` keeps each attention's keys and values of the agents already decoded (a
key/value cache), so agent i costs one token's work, not a pass over the prefix 0..i.
"""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(n: int, device: torch.device) -> torch.Tensor:
    """``[n, n]`` bool, True where attention is forbidden: position i sees positions 0..i only."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def cached_attention(attention: nn.MultiheadAttention, query: torch.Tensor, source: torch.Tensor, cache: torch.Tensor, position: int) -> torch.Tensor:
    """``attention`` for one query token reading every cached token and one new ``source`` token: with
    (q, k, v) = (query W_q + b_q, source W_k + b_k, source W_v + b_v) per head, k and v are written into ``cache``
    ``[2, B, H, n, d]`` at ``position``, and the output is concat_h softmax(q K^T / sqrt(d)) V W_o + b_o with K, V the
    cache's positions 0..``position`` (``nn.MultiheadAttention``'s equation, its weights, no dropout).

    ``query`` and ``source`` ``[B, 1, E]``; returns ``[B, 1, E]``.
    """
    e, h = attention.embed_dim, attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q = nn.functional.linear(query, weight[:e], None if bias is None else bias[:e])
    kv = nn.functional.linear(source, weight[e:], None if bias is None else bias[e:])
    q, k, v = (z.unflatten(-1, (h, e // h)).transpose(1, 2) for z in (q, *kv.chunk(2, dim=-1)))  # [B, H, 1, d]
    cache[0, :, :, position : position + 1] = k
    cache[1, :, :, position : position + 1] = v
    y = nn.functional.scaled_dot_product_attention(q, cache[0, :, :, : position + 1], cache[1, :, :, : position + 1])
    return attention.out_proj(y.transpose(1, 2).flatten(-2))


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

    def new_cache(self, batch_size: int, n_tokens: int, device: torch.device) -> torch.Tensor:
        """An empty key/value cache for ``step``: ``[2 attentions, 2 (keys, values), B, H, n_tokens, d]``."""
        h = self.self_attention.num_heads
        return torch.zeros(2, 2, batch_size, h, n_tokens, self.self_attention.embed_dim // h, device=device)

    def step(self, x: torch.Tensor, enc: torch.Tensor, cache: torch.Tensor, position: int) -> torch.Tensor:
        """``forward``'s output at ``position`` from that position's action token ``x`` and encoding ``enc`` ``[B, 1, E]``,
        reading the earlier positions' keys and values from ``cache`` (``new_cache``), which it extends by this position."""
        x = self.norm1(x + cached_attention(self.self_attention, x, x, cache[0], position))
        y = self.norm2(enc + cached_attention(self.cross_attention, enc, x, cache[1], position))
        return self.norm3(y + self.feed_forward(y))
