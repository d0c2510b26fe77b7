"""Multi-scale retention over agents and time, as Sable uses it (Mahjoub et al. 2025; ALGORITHMS.md section 4, "Guider").

Retention (Sun et al. 2023) with a decay per head replaces attention's softmax. A rollout chunk of
T timesteps x N agents is one sequence of L = T * N tokens in (timestep, agent) order. Token n
is at timestep t_n; the agents of one timestep share that position (Sable's timestep decay):

    o_n = sum_m D[n, m] (q_n . k_m) v_m  +  xi_n q_n S_0,
    D[n, m] = kappa^(t_n - t_m)  if m may be read by n and m, n are in the same episode, else 0,
    xi_n    = kappa^(t_n + 1)    if no episode starts in timesteps 0..t_n of the chunk, else 0,

where S_0 ``[d_k, d_v]`` is the state carried in from before the chunk. "May be read" is
``t_m <= t_n`` for the encoder (every agent of a timestep reads every other) and ``m <= n`` in
the flat order for the decoder (causal over agents within a timestep). The state after the
chunk is

    S_T = sum_m kappa^(t_last - t_m) [m in the last episode] k_m^T v_m + kappa^T [no start in the chunk] S_0.

One timestep (T = 1) is the recurrent form used to act; a whole rollout is the parallel form used
to train. Both are this one computation, so they agree exactly (tests/test_retention.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hcmarl.nn.transformer import FeedForward


def head_decays(n_heads: int, decay_scaling: float = 1.0) -> torch.Tensor:
    """Each head's kappa ``[H]``: ``decay_scaling * (1 - 2^-e)`` with e evenly spaced over [5, 9] (RetNet's multi-scale decays;
    Sable's "retention heads scaling parameter" is ``decay_scaling``)."""
    exponents = torch.linspace(5.0, 9.0, n_heads) if n_heads > 1 else torch.tensor([5.0])
    return decay_scaling * (1.0 - 2.0 ** -exponents)


@dataclass
class RetentionMasks:
    """The decay weights of one chunk, shared by every retention layer of a network.

    Attributes:
        full: ``D`` for the encoder, ``[B, H, L, L]``.
        causal: ``D`` for the decoder, ``[B, H, L, L]``.
        state_decay: ``xi`` ``[B, H, L]``, how much of the carried state each token reads.
        token_carry: ``[B, H, L]``, each token's weight in the state after the chunk.
        state_carry: ``[B, H]``, the carried state's weight in the state after the chunk.
    """

    full: torch.Tensor
    causal: torch.Tensor
    state_decay: torch.Tensor
    token_carry: torch.Tensor
    state_carry: torch.Tensor


def retention_masks(is_init: torch.Tensor, n_agents: int, kappa: torch.Tensor) -> RetentionMasks:
    """The masks of a chunk whose timestep t starts an episode where ``is_init[:, t]`` (``[B, T]`` bool).

    ``n_agents`` tokens per timestep; ``kappa`` ``[H]`` the heads' decays (see the module docstring).
    """
    b, t_len = is_init.shape
    device = is_init.device
    timestep = torch.arange(t_len, device=device).repeat_interleave(n_agents)  # t_n, [L]
    episode = is_init.long().cumsum(dim=1).repeat_interleave(n_agents, dim=1)  # [B, L]: episodes begun so far in the chunk
    same_episode = episode.unsqueeze(-1) == episode.unsqueeze(-2)  # [B, L, L]
    gap = timestep.unsqueeze(-1) - timestep.unsqueeze(-2)  # t_n - t_m
    log_kappa = kappa.to(device).log().view(1, -1, 1, 1)
    decay = torch.exp(gap.clamp(min=0) * log_kappa)  # [1, H, L, L]; the clamp keeps masked entries finite
    full = torch.where((same_episode & (gap >= 0)).unsqueeze(1), decay, 0.0)
    order = torch.arange(t_len * n_agents, device=device)
    causal = full * (order.unsqueeze(-1) >= order.unsqueeze(-2))
    kappa_powers = torch.exp((timestep + 1) * log_kappa.view(1, -1, 1))  # kappa^(t_n + 1), [1, H, L]
    state_decay = kappa_powers * (episode == 0).unsqueeze(1)
    last = episode[:, -1:]
    token_carry = torch.exp((t_len - 1 - timestep) * log_kappa.view(1, -1, 1)) * (episode == last).unsqueeze(1)
    state_carry = state_decay[:, :, -1]
    return RetentionMasks(full, causal, state_decay, token_carry.expand(b, -1, -1), state_carry.expand(b, -1))


class MultiScaleRetention(nn.Module):
    """Gated multi-scale retention (RetNet's MSR): ``(swish(query W_g) * GroupNorm(heads)) W_o``.

    Keys are scaled by ``d_k^-1/2``; each head has its own decay (``head_decays``), carried in
    the masks. The query and key/value inputs may differ (the decoder's cross-retention).
    """

    def __init__(self, embed_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = embed_dim // n_heads
        self.query = nn.Linear(embed_dim, embed_dim, bias=False)
        self.key = nn.Linear(embed_dim, embed_dim, bias=False)
        self.value = nn.Linear(embed_dim, embed_dim, bias=False)
        self.gate = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out = nn.Linear(embed_dim, embed_dim, bias=False)
        self.group_norm = nn.GroupNorm(n_heads, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # [B, H, L, d]

    def forward(
        self, query: torch.Tensor, source: torch.Tensor, decay: torch.Tensor, masks: RetentionMasks, state: torch.Tensor,
        carry: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs ``[B, L, E]`` for ``query`` reading ``source`` (both ``[B, L, E]``) under ``decay`` (``masks.full`` or
        ``masks.causal``), with ``state`` ``[B, H, d, d]`` carried in; and the state after the chunk (None if not ``carry``)."""
        q = self._heads(self.query(query))
        k = self._heads(self.key(source)) * self.head_dim**-0.5
        v = self._heads(self.value(source))
        y = ((q @ k.transpose(-1, -2)) * decay) @ v + masks.state_decay.unsqueeze(-1) * (q @ state)
        y = self.group_norm(y.transpose(1, 2).flatten(0, 1).flatten(-2)).view_as(query)
        out = self.out(nn.functional.silu(self.gate(query)) * y)
        if not carry:
            return out, None
        next_state = (k * masks.token_carry.unsqueeze(-1)).transpose(-1, -2) @ v + masks.state_carry.view(*state.shape[:2], 1, 1) * state
        return out, next_state


class RetentionEncoderBlock(nn.Module):
    """Sable's encoder layer: x <- LN(x + Retention(x; full)); x <- LN(x + FF(x))."""

    def __init__(self, embed_dim: int, n_heads: int) -> None:
        super().__init__()
        self.retention = MultiScaleRetention(embed_dim, n_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``[B, L, E]`` and this block's state ``[B, H, d, d]`` -> outputs and the next state."""
        mixed, next_state = self.retention(x, x, masks.full, masks, state, carry)
        x = self.norm1(x + mixed)
        return self.norm2(x + self.feed_forward(x)), next_state


class RetentionDecoderBlock(nn.Module):
    """Sable's decoder layer (MAT's, with retention): x <- LN(x + Retention(x; causal));
    y <- LN(enc + Retention(query=enc, key=value=x; causal)); y <- LN(y + FF(y)).

    It carries two states: the self-retention's and the cross-retention's, ``[B, 2, H, d, d]``.
    """

    def __init__(self, embed_dim: int, n_heads: int) -> None:
        super().__init__()
        self.self_retention = MultiScaleRetention(embed_dim, n_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_retention = MultiScaleRetention(embed_dim, n_heads)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(
        self, x: torch.Tensor, enc: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed, self_state = self.self_retention(x, x, masks.causal, masks, state[:, 0], carry)
        x = self.norm1(x + mixed)
        mixed, cross_state = self.cross_retention(enc, x, masks.causal, masks, state[:, 1], carry)
        y = self.norm2(enc + mixed)
        next_state = torch.stack([self_state, cross_state], dim=1) if carry else None
        return self.norm3(y + self.feed_forward(y)), next_state
