"""Sable, the MAGPO paper's default guider: MAT's encoder-decoder with retention and a memory across timesteps.

Mahjoub et al. 2025; ALGORITHMS.md section 4. Training passes are chunkwise (``hcmarl.nn.retention``): parallel
inside a chunk, the retention state carried between chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION_MASK, IS_INIT, OBSERVATION
from hcmarl.nn.guider import AgentTokenGuider, reshape_distribution, shifted_action_tokens
from hcmarl.nn.retention import (
    RetentionDecoderBlock,
    RetentionEncoderBlock,
    RetentionMasks,
    head_decays,
    retention_masks,
    with_next_observations,
)

Distribution = torch.distributions.Distribution

# SableGuider's chunks with ``chunk_steps: auto``, in tokens (timesteps x agents; a value pass's chunks also hold the next
# observations): about the fastest training and value passes measured at the MAGPO recipes' sizes, 3 and 8 agents
# (docs/algorithms/magpo.md, "The retention guider").
CHUNK_TOKENS = 48


class SableGuider(AgentTokenGuider):
    """Sable: MAT's encoder-decoder with retention in place of attention, and a memory across timesteps
    (Mahjoub et al. 2025, the MAGPO paper's default guider; ALGORITHMS.md section 4).

    Tokens are (timestep, agent) pairs. The encoder's retention reads every agent of the same and
    earlier timesteps of the episode; the decoder's reads the action stream causally (earlier
    timesteps whole, the current one up to the agent). Older timesteps fade by each head's kappa
    (``hcmarl.nn.retention``). Acting is recurrent, one timestep at a time, with a state
    ``[M, n_blocks, 3, H, d, d]`` (encoder, decoder self-retention, decoder cross-retention);
    training replays each env's rollout from the state at its first step in the chunkwise form:
    parallel within chunks of ``chunk(N)`` timesteps, the state carried from chunk to chunk.
    Episode starts (``is_init``) cut the memory.

    Args:
        decay_scaling: Sable's "retention heads scaling parameter": the heads' decays are
            ``decay_scaling * (1 - 2^-e)``, e evenly spaced over [5, 9].
        chunk_steps: timesteps per chunk of the training and value passes (None: the whole rollout in one chunk;
            ``auto``: chunks of about ``CHUNK_TOKENS`` tokens, i.e. ``CHUNK_TOKENS // N`` timesteps for training and half
            that for values, whose chunks also hold the next observations). Every value gives the same result; it
            trades the chunks' [C N, C N] weights against the carry between them.
        **kwargs: ``embed_dim``, ``n_blocks``, ``n_heads``, ``agent_id``, ``log_std_init`` of ``AgentTokenGuider``.
    """

    recurrent = True
    in_keys = [OBSERVATION, ACTION_MASK, IS_INIT]

    kappa: torch.Tensor  # each head's decay [H], a buffer (build_blocks)

    def __init__(self, decay_scaling: float = 1.0, chunk_steps: int | Literal["auto"] | None = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < decay_scaling <= 1.0:
            raise ConfigError(f"model.guider.network.decay_scaling must be in (0, 1], got {decay_scaling}")
        if chunk_steps != "auto" and chunk_steps is not None and not (isinstance(chunk_steps, int) and chunk_steps >= 1):
            raise ConfigError(f"model.guider.network.chunk_steps must be a positive number of timesteps, auto or null, got {chunk_steps}")
        self.decay_scaling = decay_scaling
        self.chunk_steps = chunk_steps
        self.head_dim = self.embed_dim // self.n_heads

    def build_blocks(self) -> None:
        self.encoder = nn.ModuleList(RetentionEncoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))
        self.decoder = nn.ModuleList(RetentionDecoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))
        self.register_buffer("kappa", head_decays(self.n_heads, self.decay_scaling))

    @property
    def decoder_blocks(self) -> Sequence[RetentionDecoderBlock]:
        """``decoder`` with its blocks' type, which iterating an ``nn.ModuleList`` does not give a type checker."""
        return cast("Sequence[RetentionDecoderBlock]", self.decoder)

    def chunk(self, tokens_per_step: int) -> int | None:
        """Timesteps per chunk of a pass with ``tokens_per_step`` tokens per timestep (N to train, 2 N for values)."""
        return max(1, CHUNK_TOKENS // tokens_per_step) if self.chunk_steps == "auto" else self.chunk_steps

    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_blocks, 3, self.n_heads, self.head_dim, self.head_dim, device=device)

    def encode(self, x: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder blocks on observation tokens ``[M, L, E]`` with their states ``[M, n_blocks, H, d, d]``."""
        states = []
        for j, block in enumerate(self.encoder):
            x, next_state = block(x, masks, state[:, j], carry)
            states.append(next_state)
        return x, torch.stack(states, dim=1) if carry else None

    def decode(
        self, tokens: torch.Tensor, encodings: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder blocks on the action stream ``[M, L, A + 1]`` with states ``[M, n_blocks, 2, H, d, d]``; outputs ``[M, L, E]``."""
        x = self.embed_actions(tokens)
        states = []
        for j, block in enumerate(self.decoder):
            x, next_state = block(x, encodings, masks, state[:, j], carry)
            states.append(next_state)
        return x, torch.stack(states, dim=1) if carry else None

    def _rollout_state(self, td: TensorDictBase, state: torch.Tensor | None) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        if td.batch_dims != 2:
            raise ValueError(f"SableGuider reads rollouts [envs, time]; got a TensorDict of batch size {tuple(td.batch_size)}")
        b, t = td.batch_size
        is_init = td.get(IS_INIT).reshape(b, t)
        return b, t, is_init, self.initial_state(b, is_init.device) if state is None else state

    def forward(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor]:
        """Chunkwise form over rollouts ``[B, T]``: every step's conditionals ``[B, T, N]`` and values."""
        b, t, is_init, state = self._rollout_state(td, state)
        n = self.n_agents
        masks = retention_masks(is_init, n, self.kappa, self.chunk(n))
        encodings, _ = self.encode(self.embed_observations(td).reshape(b, t * n, -1), masks, state[:, :, 0], carry=False)
        tokens = shifted_action_tokens(self.flat_actions(td), self.action_dim, self.categorical).reshape(b, t * n, -1)
        out, _ = self.decode(tokens, encodings, masks, state[:, :, 1:], carry=False)
        mask = self.flat_mask(td)
        dist = self.distribution(out.reshape(b * t, n, -1), mask)
        return reshape_distribution(dist, td.batch_size), self.value_head(encodings).reshape(b, t, n)

    @torch.no_grad()
    def sample(
        self, td: TensorDictBase, deterministic: bool = False, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Recurrent form, one timestep ``[...]``: decode agent by agent from ``state``; the state is cut where ``is_init``.

        The decoder keeps, per retention, the running sum R = xi S_0 + sum_{m <= i} k_m^T v_m over the agents decoded so
        far (``RetentionDecoderBlock.step``), so agent i costs one token's work; after agent N-1, R is the next state.
        """
        batch_shape = td.batch_size
        x = self.embed_observations(td)
        m = x.shape[0]
        state = self.initial_state(m, x.device) if state is None else state
        masks = retention_masks(td.get(IS_INIT).reshape(m, 1), self.n_agents, self.kappa)
        encodings, encoder_state = self.encode(x, masks, state[:, :, 0], carry=True)
        assert encoder_state is not None  # encode returns its state when it carries it
        xi_state = masks.state_carry[:, None, None, :, :, None] * state[:, :, 1:]  # xi S_0, [M, n_blocks, 2, H, d, d]
        memory = [(xi_state[:, j, 0], xi_state[:, j, 1]) for j in range(self.n_blocks)]
        mask = self.flat_mask(td)
        tokens = torch.zeros(m, self.n_agents, self.action_dim + 1, device=x.device)
        tokens[:, 0, 0] = 1.0
        # every agent's encoding is known before decoding: each cross-retention's q and gate input for all agents at once
        enc_queries = [block.cross_retention.query_projection(encodings) for block in self.decoder_blocks]
        actions, log_probs = [], []
        for i in range(self.n_agents):
            out = self.embed_actions(tokens[:, i : i + 1])
            for j, block in enumerate(self.decoder_blocks):
                query, gate = enc_queries[j]
                enc_query = (query[:, i : i + 1], gate[:, i : i + 1])
                out, memory[j] = block.step(out, encodings[:, i : i + 1], enc_query, memory[j])
            agent = self.distribution(out, None if mask is None else mask[:, i : i + 1])
            action = agent.mode if deterministic else agent.sample()
            actions.append(action)
            log_probs.append(agent.log_prob(action))
            if i + 1 < self.n_agents:
                self.write_token(tokens, i + 1, action[:, 0])
        action = torch.cat(actions, dim=1)
        next_state = torch.stack([torch.stack([encoder_state[:, j], *memory[j]], dim=1) for j in range(self.n_blocks)], dim=1)
        return action.reshape(*batch_shape, *action.shape[1:]), torch.cat(log_probs, dim=1).reshape(*batch_shape, self.n_agents), next_state

    @torch.no_grad()
    def rollout_values(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """V of each step's observation of rollouts ``[B, T]``, and of its next observation read with the state after the
        step (the terminal observation where an episode ended), ``[B, T, N]`` each, in the chunkwise form: each chunk of
        ``chunk(2 N)`` timesteps is followed by its steps' next observations (``with_next_observations``), the chunks
        run in parallel from the states carried into them, as the training pass does. Equal to replaying the rollout
        one step at a time (tests/test_guider_cache.py)."""
        b, t, is_init, state = self._rollout_state(td, state)
        n = self.n_agents
        masks = retention_masks(is_init, n, self.kappa, self.chunk(2 * n))
        k, c = masks.full.shape[2], masks.full.shape[-1] // n
        tokens = torch.stack([self.embed_observations(td), self.embed_observations(td.get("next"))], dim=1)  # [B T, 2, N, E]
        tokens = nn.functional.pad(tokens.reshape(b, t, 2, n, -1), (0, 0, 0, 0, 0, 0, 0, k * c - t))  # [B, K C, 2, N, E]
        tokens = tokens.view(b, k, c, 2, n, -1).transpose(2, 3).reshape(b, k * 2 * c * n, -1)  # per chunk: own, then next
        encodings, _ = self.encode(tokens, with_next_observations(masks, n, self.kappa), state[:, :, 0], carry=False)
        values = self.value_head(encodings).view(b, k, 2, c * n).transpose(1, 2).reshape(b, 2, k * c, n)[:, :, :t]
        return values[:, 0], values[:, 1]
