"""Multi-scale retention over agents and time, as Sable uses it (Mahjoub et al. 2025; ALGORITHMS.md section 4, "Guider").

Retention (Sun et al. 2023) with a decay per head replaces attention's softmax. A rollout of T
timesteps x N agents is one sequence of L = T * N tokens in (timestep, agent) order, cut into
chunks of C timesteps (C N tokens; the last chunk may be shorter). Inside a chunk, token n is at
timestep t_n of the chunk; the agents of one timestep share that position (Sable's timestep decay):

    o_n = sum_m D[n, m] (q_n . k_m) v_m  +  xi_n q_n S_c,
    D[n, m] = kappa^(t_n - t_m)  if m may be read by n and m, n are in the same episode, else 0,
    xi_n    = kappa^(t_n + 1)    if no episode starts in timesteps 0..t_n of the chunk, else 0,

the sum running over the tokens m of the same chunk, where S_c ``[d_k, d_v]`` is the state carried
into chunk c (S_0: the state before the rollout). "May be read" is ``t_m <= t_n`` for the encoder
(every agent of a timestep reads every other) and ``m <= n`` in the flat order for the decoder
(causal over agents within a timestep). The state after chunk c, of ``T_c`` timesteps, is

    S_{c+1} = sum_m kappa^(T_c - 1 - t_m) [m in the chunk's last episode] k_m^T v_m + kappa^T_c [no start in the chunk] S_c.

That is the whole-rollout parallel form with the sum over m < the chunk folded into S_c, so every
chunk length gives the same outputs; the cost is O(T N C N) instead of O(T^2 N^2). One chunk of
one timestep (T = 1) is the recurrent form used to act; chunks of ``SableGuider.chunk_steps``
timesteps are the chunkwise form used to train (``retention_masks(..., chunk_steps)`` gives the
weights D, xi and the carries of every chunk at once; ``MultiScaleRetention.forward`` runs the
chunks in parallel and carries S_c from chunk to chunk). Within one timestep, decoding agent by
agent, the decoder's o_n = q_n R_n with R_n = xi S_0 + sum_{m <= n} k_m^T v_m: a running sum
(``MultiScaleRetention.step``), and the state after the timestep is R_{N-1}. All forms agree
(tests/test_retention.py).

Sable's optional parts (Mava's ``SableNetwork``, the MAGPO paper's guider; docs/algorithms/magpo.md, "The paper's Sable")
are settings of the blocks (``hcmarl.nn.retention_blocks``): ``norm`` (``layer``: LayerNorm; ``rms``: RMSNorm), ``feed_forward`` (``gelu``: Linear, GELU,
Linear; ``swiglu``: ``hcmarl.nn.layers.SwiGLU``), the retention's ``gate`` input (``query``, or ``source``: the key/value
input, Mava's choice, which differs in the decoder's cross-retention only), and a ``position`` (``timestep_encoding`` of each
token's timestep in its episode) that every retention adds to its query and key/value inputs before projecting them.
A position is a function of the token alone, so every form above still agrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hcmarl.nn.layers import FLAX_NORM_EPS

GateInput = Literal["query", "source"]
HeadNorm = Literal["per_head", "mava"]


def timestep_encoding(timestep: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sable's sinusoidal timestep encoding ``[..., dim]`` of timesteps ``[...]``: channel 2i is sin(t w_i) and channel
    2i + 1 is cos(t w_i), with w_i = 10000^(-2i / dim) (the transformer's encoding, of the episode's timestep rather than
    of the token's index; ``dim`` even). Not learned."""
    if dim % 2:
        raise ValueError(f"the timestep encoding needs an even width, got {dim}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    rates = torch.exp(torch.arange(0, dim, 2, device=timestep.device, dtype=dtype) * (-math.log(10000.0) / dim))
    angle = timestep.to(dtype).unsqueeze(-1) * rates  # [..., dim / 2]
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)  # interleaved: sin, cos, sin, cos, ...


def episode_timesteps(is_init: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Each step's timestep in its episode ``[B, T]`` for steps ``[B, T]`` of which those with ``is_init`` start an episode:
    0 at a start, one more at each step after it; before the rollout's first start, ``start`` ``[B]`` (the timestep of
    the rollout's first step had it continued the episode) plus the step's index."""
    t_len = is_init.shape[1]
    index = torch.arange(t_len, device=is_init.device)
    last_start = torch.where(is_init, index, -1).cummax(dim=1).values  # the latest start at or before each step, or -1
    return torch.where(last_start >= 0, index - last_start, start.unsqueeze(-1).to(index.dtype) + index)


def head_decays(n_heads: int, decay_scaling: float = 1.0) -> torch.Tensor:
    """Each head's kappa ``[H]``: ``decay_scaling * (1 - 2^-e)`` with e evenly spaced over [5, 9] (RetNet's multi-scale decays;
    Sable's "retention heads scaling parameter" is ``decay_scaling``). Mava's ``1 - exp(linspace(log 1/32, log 1/512, H))``
    is the same; one head has e = 5 (a linspace of one point is its start): kappa = decay_scaling * 31/32."""
    exponents = torch.linspace(5.0, 9.0, n_heads) if n_heads > 1 else torch.tensor([5.0])
    return decay_scaling * (1.0 - 2.0**-exponents)


@dataclass
class RetentionMasks:
    """The decay weights of a sequence cut into K chunks of C timesteps, shared by every retention layer of a network.

    Attributes:
        full: ``D`` for the encoder, ``[B, H, K, C N, C N]``.
        causal: ``D`` for the decoder, ``[B, H, K, C N, C N]`` (None in ``with_next_observations``' masks, which only an
            encoder reads).
        state_decay: ``xi`` ``[B, H, K, C N]``, how much of the state carried into its chunk each token reads.
        token_carry: ``[B, H, K, C N]``, each token's weight in the state after its chunk.
        state_carry: ``[B, H, K]``, the weight of the state carried into a chunk in the state after it.
        carry_weights: ``W`` ``[B, H, K + 1, K + 1]``, the recursion S_{c+1} = state_carry_c S_c + U_c unrolled:
            S_c = W[c, 0] S_0 + sum_{c'} W[c, 1 + c'] U_{c'} for c = 0..K (S_K: the state after the last chunk), with
            W[c, j] = prod_{j <= i < c} state_carry_i for j <= c and 0 for j > c.
    """

    full: torch.Tensor
    causal: torch.Tensor | None
    state_decay: torch.Tensor
    token_carry: torch.Tensor
    state_carry: torch.Tensor
    carry_weights: torch.Tensor


def retention_masks(is_init: torch.Tensor, n_agents: int, kappa: torch.Tensor, chunk_steps: int | None = None) -> RetentionMasks:
    """D, xi and the carries (module docstring) of a sequence whose timestep t starts an episode where ``is_init[:, t]``
    (``[B, T]`` bool), cut into chunks of ``chunk_steps`` timesteps (None: one chunk).

    ``n_agents`` tokens per timestep; ``kappa`` ``[H]`` the heads' decays. When ``chunk_steps`` does not divide T the
    last chunk is padded to C timesteps: its padding is never read, weighs 0 in the carried state, and the carries
    count the chunk's real length T_c.
    """
    b, t_len = is_init.shape
    device = is_init.device
    c = t_len if chunk_steps is None else max(1, min(chunk_steps, t_len))
    k = -(-t_len // c)
    is_init = nn.functional.pad(is_init, (0, k * c - t_len)).view(b, k, c)
    lengths = torch.full((k,), c, device=device)
    lengths[-1] = t_len - (k - 1) * c  # T_c
    timestep = torch.arange(c, device=device).repeat_interleave(n_agents)  # t_n, [C N]
    valid = timestep < lengths.unsqueeze(-1)  # [K, C N]: not padding
    episode = is_init.long().cumsum(dim=-1).repeat_interleave(n_agents, dim=-1)  # [B, K, C N]: episodes begun so far in the chunk
    same_episode = episode.unsqueeze(-1) == episode.unsqueeze(-2)  # [B, K, C N, C N]
    gap = timestep.unsqueeze(-1) - timestep.unsqueeze(-2)  # t_n - t_m
    log_kappa = kappa.to(device).log().view(1, -1, 1, 1)  # [1, H, 1, 1]
    decay = torch.exp(gap.clamp(min=0) * log_kappa).unsqueeze(2)  # [1, H, 1, C N, C N]; the clamp keeps masked entries finite
    full = torch.where((same_episode & (gap >= 0)).unsqueeze(1), decay, 0.0)
    causal = full.tril()
    state_decay = torch.exp((timestep + 1) * log_kappa) * (episode == 0).unsqueeze(1)  # [B, H, K, C N]
    last_episode = episode.gather(-1, ((lengths - 1) * n_agents).expand(b, -1).unsqueeze(-1))  # [B, K, 1]: at t = T_c - 1
    age = (lengths.unsqueeze(-1) - 1 - timestep).clamp(min=0)  # T_c - 1 - t_m, [K, C N]; the clamp keeps padding finite
    token_carry = torch.exp(age * log_kappa) * (valid & (episode == last_episode)).unsqueeze(1)
    state_carry = torch.exp(lengths * log_kappa.view(1, -1, 1)) * (last_episode.squeeze(-1) == 0).unsqueeze(1)  # [B, H, K]
    return RetentionMasks(full, causal, state_decay, token_carry, state_carry, carry_weights(state_carry))


def carry_weights(state_carry: torch.Tensor) -> torch.Tensor:
    """``RetentionMasks.carry_weights`` from ``state_carry`` ``[B, H, K]``: W[c, j] = prod_{j <= i < c} state_carry_i (j <= c),
    as a cumulative product down each column of G[c, j] = state_carry_{c-1} for c > j and 1 otherwise, then zeroed above
    the diagonal (products, not a division of cumulative products: a carry of 0, an episode start, stays exact)."""
    k = state_carry.shape[-1]
    previous = nn.functional.pad(state_carry, (1, 0), value=1.0).unsqueeze(-1)  # state_carry_{c-1}, [B, H, K + 1, 1]
    row = torch.arange(k + 1, device=state_carry.device)
    below = row.unsqueeze(-1) > row  # c > j
    return torch.where(below, previous, 1.0).cumprod(dim=-2).tril()


def with_next_observations(masks: RetentionMasks, n_agents: int, kappa: torch.Tensor) -> RetentionMasks:
    """Encoder masks for chunks of C timesteps each followed by the C next observations of those timesteps (``[B, K, 2 C N]``
    tokens: the chunk's own C N, then C N next-observation tokens in the same (timestep, agent) order), such that the
    encoder output of the next observation of step t is what the recurrent form gives when it reads that observation,
    as a step continuing the episode, with the state after step t.

    That recurrent read is o_n = sum_{m in the next observation of t} (q_n . k_m) v_m + kappa q_n S(t), and
    S(t) = sum_{m <= t, same episode} kappa^(t - t_m) k_m^T v_m + kappa^(t + 1) [no start in 0..t] S_c (module docstring,
    chunk-relative t): so the next-observation token n of step t_n reads the chunk's tokens with D' = kappa D[n, .] (D of
    a token of step t_n), the next-observation tokens of its own step with weight 1, no other next-observation token,
    and the carried state with xi' = kappa xi_n. The chunk's own tokens read no next-observation token, and those add
    nothing to the carried states. The chunks may be run in parallel (``carry=False``) as ``masks``' own.
    """
    b, h, k, cn, _ = masks.full.shape
    kappa = kappa.to(masks.full.device).view(1, -1, 1, 1, 1)
    own_step = torch.block_diag(*[torch.ones(n_agents, n_agents, device=masks.full.device)] * (cn // n_agents))
    upper = torch.cat([masks.full, torch.zeros_like(masks.full)], dim=-1)
    lower = torch.cat([kappa * masks.full, own_step.expand(b, h, k, cn, cn)], dim=-1)
    return RetentionMasks(
        full=torch.cat([upper, lower], dim=-2),
        causal=None,
        state_decay=torch.cat([masks.state_decay, kappa[..., 0] * masks.state_decay], dim=-1),
        token_carry=torch.cat([masks.token_carry, torch.zeros_like(masks.token_carry)], dim=-1),
        state_carry=masks.state_carry,
        carry_weights=masks.carry_weights,
    )


class MultiScaleRetention(nn.Module):
    """Gated multi-scale retention (RetNet's MSR): ``(swish(g W_g) * GroupNorm(heads)) W_o``.

    Keys are scaled by ``d_k^-1/2`` (RetNet's; ``scale_keys=False``: unscaled, as Mava's); each head has its own decay
    (``head_decays``), carried in the masks. The query and key/value inputs may differ (the decoder's cross-retention). The norm of the heads'
    outputs (``head_norm``) is RetNet's GroupNorm over heads (``per_head``: each head's d channels normalised, a
    per-channel affine ``[E]``, eps 1e-5), computed as a LayerNorm over each head's d channels followed by the affine;
    or Mava's (``mava``, the MAGPO paper's code): each head's d outputs as one row, split into H groups of d / H
    channels, each group normalised, an affine ``[d]`` shared by the heads, eps 1e-6 (``GroupNorm(H, d)`` on rows of
    d). With one head the two differ only in eps.
    The gate's input ``g`` is the query input (``gate="query"``) or the key/value input (``gate="source"``, as Mava's
    Sable, whose gate reads its ``key``). A ``position`` ``[B, L, E]`` (or ``[B, 1, E]`` for every token), if given, is
    added to the query and key/value inputs before anything reads them (Mava's timestep encoding).
    """

    def __init__(self, embed_dim: int, n_heads: int, gate: GateInput = "query", head_norm: HeadNorm = "per_head", scale_keys: bool = True) -> None:
        super().__init__()
        if gate not in ("query", "source"):
            raise ValueError(f"unknown retention gate input {gate!r}; choose query or source")
        if head_norm not in ("per_head", "mava"):
            raise ValueError(f"unknown retention head_norm {head_norm!r}; choose per_head or mava")
        self.n_heads = n_heads
        self.head_dim = embed_dim // n_heads
        if head_norm == "mava" and self.head_dim % n_heads:
            raise ValueError(
                f"head_norm mava splits each head's {self.head_dim} channels into {n_heads} groups: choose n_heads dividing embed_dim / n_heads"
            )
        self.gate_input = gate
        self.head_norm = head_norm
        self.scale_keys = scale_keys
        self.query = nn.Linear(embed_dim, embed_dim, bias=False)
        self.key = nn.Linear(embed_dim, embed_dim, bias=False)
        self.value = nn.Linear(embed_dim, embed_dim, bias=False)
        self.gate = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out = nn.Linear(embed_dim, embed_dim, bias=False)
        if head_norm == "per_head":
            self.group_norm = nn.GroupNorm(n_heads, embed_dim)
        else:
            self.group_norm = nn.GroupNorm(n_heads, self.head_dim, eps=FLAX_NORM_EPS)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # [B, H, L, d]

    @staticmethod
    def with_position(query: torch.Tensor, source: torch.Tensor, position: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` and ``source`` with ``position`` added (both unchanged if it is None)."""
        if position is None:
            return query, source
        shared = source is query
        query = query + position
        return query, query if shared else source + position

    def query_projection(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(query W_q, query W_g)``, ``[B, L, E]`` each; the second is None when the gate reads the source."""
        return self.query(query), self.gate(query) if self.gate_input == "query" else None

    def source_projection(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d_k^-1/2 source W_k, source W_v)``, ``[B, L, E]`` each (the scale folded into W_k, a ``[E, E]`` product;
        without ``scale_keys``, Mava's, the keys are not scaled).

        (One product of the concatenated weights, here and in ``query_projection``, measured slower to train: its
        outputs are strided views.)"""
        keys = nn.functional.linear(source, self.key.weight * self.head_dim**-0.5) if self.scale_keys else self.key(source)
        return keys, self.value(source)

    def initialise_as_mava(self) -> None:
        """Mava's initialisation (``SimpleRetention`` and ``MultiScaleRetention``): every projection, W_q, W_k, W_v, W_g
        and W_o, drawn from N(0, 1 / E^2)."""
        for projection in (self.query, self.key, self.value, self.gate, self.out):
            nn.init.normal_(projection.weight, std=1.0 / projection.in_features)

    def projections(self, query: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v ``[B, H, L, d]`` (k scaled by d_k^-1/2 if ``scale_keys``) and the gate input's ``g W_g`` ``[B, L, E]``."""
        (q, gate), (k, v) = self.query_projection(query), self.source_projection(source)
        if gate is None:
            gate = self.gate(source)
        return self._heads(q), self._heads(k), self._heads(v), gate

    def _output(self, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(swish(gate) * GroupNorm_heads(y)) W_o`` for the heads' outputs ``y`` ``[B, H, L, d]`` and the gate input
        ``gate = query W_g`` ``[B, L, E]``: GroupNorm_heads(y) as ``head_norm`` says (class docstring), computed as
        LayerNorms without affine over each group's channels (``per_head``: a head's d; ``mava``: d / H), then the
        affine (``per_head``: ``[E]``, each head its own part; ``mava``: ``[d]``, shared by the heads). With one head
        both are one LayerNorm over d with its affine. (Faster than ``nn.GroupNorm`` on CPU but for groups of 2 channels:
        docs/algorithms/magpo.md, "The paper's Sable".)"""
        norm = self.group_norm
        y = y.transpose(1, 2)  # [B, L, H, d]
        if self.head_norm == "mava" and self.n_heads > 1:  # H groups of d / H within each head (as fast as one layer_norm)
            y = nn.functional.layer_norm(y.unflatten(-1, (self.n_heads, -1)), (self.head_dim // self.n_heads,), None, None, norm.eps)
            y = torch.addcmul(norm.bias, y.flatten(-2), norm.weight)
        elif self.n_heads == 1:
            y = nn.functional.layer_norm(y, (self.head_dim,), norm.weight, norm.bias, norm.eps)
        else:
            y = nn.functional.layer_norm(y, (self.head_dim,), None, None, norm.eps)
            y = torch.addcmul(norm.bias.view(self.n_heads, -1), y, norm.weight.view(self.n_heads, -1))
        return self.out(nn.functional.silu(gate) * y.flatten(-2))

    def forward(
        self,
        query: torch.Tensor,
        source: torch.Tensor,
        decay: torch.Tensor,
        masks: RetentionMasks,
        state: torch.Tensor,
        carry: bool = True,
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunkwise form (module docstring): outputs ``[B, L, E]`` for ``query`` reading ``source`` (both ``[B, L, E]``)
        under ``decay`` (``masks.full`` or ``masks.causal``), with ``state`` ``[B, H, d, d]`` carried into the first chunk;
        and the state after the last chunk (None if not ``carry``). ``position``: the class docstring's.

        Each chunk's own part, sum_m D[n, m] (q_n . k_m) v_m, and its tokens' part of the next state,
        U_c = sum_m token_carry_m k_m^T v_m, are computed for all chunks at once; then the carried states
        S_{c+1} = state_carry_c S_c + U_c, unrolled as S_c = W[c, 0] S_0 + sum_c' W[c, 1 + c'] U_c'
        (``masks.carry_weights``), are one product over the chunks, and every token adds xi_n q_n S_c.
        """
        length = query.shape[1]
        k_chunks, chunk_len = decay.shape[2], decay.shape[-1]
        q, k, v, gate = self.projections(*self.with_position(query, source, position))
        pad = k_chunks * chunk_len - length
        if pad:  # the last chunk's padding: zero keys and values add nothing to any output or state
            q, k, v = (nn.functional.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        q, k, v = (z.unflatten(2, (k_chunks, chunk_len)) for z in (q, k, v))  # [B, H, K, C N, d]
        y = ((q @ k.transpose(-1, -2)) * decay) @ v
        if k_chunks == 1 and not carry:
            carried_in, final = state.unsqueeze(2), None  # S_0, [B, H, 1, d, d]
        else:
            updates = (k * masks.token_carry.unsqueeze(-1)).transpose(-1, -2) @ v  # U_c, [B, H, K, d, d]
            weights = masks.carry_weights if carry else masks.carry_weights[:, :, :k_chunks]
            states = weights[..., :1, None] * state.unsqueeze(2) + (weights[..., 1:] @ updates.flatten(-2)).view(
                *weights.shape[:3], *state.shape[-2:]
            )  # S_0 .. S_K (or S_{K-1}), [B, H, K (+ 1), d, d]
            carried_in, final = states[:, :, :k_chunks], states[:, :, k_chunks] if carry else None
        y = y + masks.state_decay.unsqueeze(-1) * (q @ carried_in)
        return self._output(gate, y.flatten(2, 3)[:, :, :length]), final

    def step(
        self,
        query: torch.Tensor,
        source: torch.Tensor,
        memory: torch.Tensor,
        query_projection: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One more token of the current timestep, decoded after the ones before it: ``R <- R + k^T v``, ``o = q R``.

        ``query`` and ``source`` ``[B, 1, E]``; ``memory`` ``[B, H, d, d]`` is R before this token (xi S_0 plus the current
        timestep's earlier tokens, module docstring); ``query_projection``: ``query``'s (``query_projection``, of the query
        with ``position`` added) if already computed; ``position`` ``[B, 1, E]``: the class docstring's. Returns the
        output ``[B, 1, E]`` and the new R.
        """
        if query_projection is None:
            q, k, v, gate = self.projections(*self.with_position(query, source, position))
        else:
            source = source if position is None else source + position
            q, query_gate = self._heads(query_projection[0]), query_projection[1]
            k, v = (self._heads(z) for z in self.source_projection(source))
            gate = self.gate(source) if query_gate is None else query_gate
        memory = memory + k.transpose(-1, -2) @ v
        return self._output(gate, q @ memory), memory
