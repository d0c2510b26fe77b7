"""Sable, the MAGPO paper's default guider: MAT's encoder-decoder with retention and a memory across timesteps.

Mahjoub et al. 2025; ALGORITHMS.md section 4. Training passes are chunkwise (``hcmarl.nn.retention``): parallel
inside a chunk, the retention state carried between chunks. ``SableGuider.paper`` builds the guider the MAGPO paper ran
(Mava's ``SableNetwork``); the defaults keep hcmarl's earlier Sable (docs/algorithms/magpo.md, "The paper's Sable").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION_MASK, IS_INIT, OBSERVATION
from hcmarl.nn.guider import AgentTokenGuider, reshape_distribution, shifted_action_tokens
from hcmarl.nn.layers import RMSNorm
from hcmarl.nn.retention import (
    GateInput,
    HeadNorm,
    MultiScaleRetention,
    RetentionMasks,
    episode_timesteps,
    head_decays,
    retention_masks,
    timestep_encoding,
    with_next_observations,
)
from hcmarl.nn.retention_blocks import FeedForwardKind, Norm, RetentionDecoderBlock, RetentionEncoderBlock

Distribution = torch.distributions.Distribution

# SableGuider's chunks with ``chunk_steps: auto``, in tokens (timesteps x agents; a value pass's chunks also hold the next
# observations): about the fastest training and value passes measured at the MAGPO recipes' sizes, 3 and 8 agents
# (docs/algorithms/magpo.md, "The retention guider").
CHUNK_TOKENS = 48

PositionalEncoding = Literal["none", "timestep"]
FeedForwardInit = Literal["default", "zeros"]

# The MAGPO paper's Sable (the official code's SableNetwork and its network config: 1 block, embed 64, 1 head, decay
# scaling 0.8, timestep positional encoding; RMSNorm and a zero-initialised SwiGLU in its blocks; the retention's gate
# reads its key/value input and its heads' outputs go through Mava's GroupNorm; Mava's initialisations, unscaled keys,
# bias-free observation embedding, tanh GELU and input norm before every encoder block). ``SableGuider.paper`` builds it;
# docs/algorithms/magpo.md, "The paper's Sable".
PAPER_SETTINGS: dict[str, Any] = {
    "embed_dim": 64,
    "n_blocks": 1,
    "n_heads": 1,
    "decay_scaling": 0.8,
    "norm": "rms",
    "feed_forward": "swiglu",
    "feed_forward_init": "zeros",
    "positional_encoding": "timestep",
    "retention_gate": "source",
    "retention_head_norm": "mava",
    "mava_details": True,
}


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

    The defaults are hcmarl's first Sable; ``SableGuider.paper()`` is the MAGPO paper's (``PAPER_SETTINGS``).

    Args:
        decay_scaling: Sable's "retention heads scaling parameter": the heads' decays are
            ``decay_scaling * (1 - 2^-e)``, e evenly spaced over [5, 9] (one head: e = 5).
        chunk_steps: timesteps per chunk of the training and value passes (None: the whole rollout in one chunk;
            ``auto``: chunks of about ``CHUNK_TOKENS`` tokens, i.e. ``CHUNK_TOKENS // N`` timesteps for training and half
            that for values, whose chunks also hold the next observations). Every value gives the same result; it
            trades the chunks' [C N, C N] weights against the carry between them.
        norm: ``layer`` (LayerNorm) or ``rms`` (RMSNorm, the paper's) for every normalisation of the guider: the
            blocks', the observation and action embeddings' and the value and action heads' (not the retention's
            GroupNorm over heads).
        feed_forward: the blocks' feed-forward: ``gelu`` (Linear, GELU, Linear) or ``swiglu`` (the paper's, no biases,
            hidden width ``embed_dim``; ``hcmarl.nn.layers.SwiGLU``).
        feed_forward_init: ``default``, or ``zeros`` (the paper's code: the SwiGLU's three matrices start at zero, and
            so stay, its gradients being zero; swiglu only).
        positional_encoding: ``none``, or ``timestep`` (the paper's): each token's timestep in its episode, encoded
            by ``timestep_encoding``, is added to every retention's query and key/value inputs. The timestep is 0 at an
            episode start (``is_init``) and counts the steps since; the network counts it itself and carries the count
            in its state, which is then ``[M, n_blocks * 3 * H * d * d + 1]`` (``split_state``).
        retention_gate: what the retention's output gate reads: ``query`` or ``source`` (the key/value input, the
            paper's code); they differ in the decoder's cross-retention, whose query is the encoding and whose
            key/value is the action stream.
        retention_head_norm: the norm of the retention heads' outputs: ``per_head`` (RetNet's GroupNorm over heads) or
            ``mava`` (the paper's code: each head's channels in H groups, an affine shared by the heads, eps 1e-6;
            ``hcmarl.nn.retention.MultiScaleRetention``). With one head they differ only in eps; with H heads ``mava``
            needs H to divide ``embed_dim / H``.
        mava_details: the official code's details outside the parts above (Mava's ``SableNetwork``, the paper's): every
            retention projection (W_q, W_k, W_v, W_g, W_o) drawn from N(0, 1 / E^2) and the keys not scaled by
            d_k^-1/2; the embeddings' and heads' hidden layers orthogonal with gain sqrt(2), the value head's output
            layer with gain 0.01, their biases zero; no bias in the observation embedding (nor in the action
            embedding for discrete actions); GELU's tanh approximation (Flax's ``nn.gelu``) in the embeddings and heads;
            and the encoder's input norm applied again before every encoder block (one norm shared by the blocks).
            False: PyTorch's initialisations, scaled keys, exact GELU, the input norm once (hcmarl's first Sable).
        **kwargs: ``embed_dim``, ``n_blocks``, ``n_heads``, ``agent_id``, ``log_std_init`` of ``AgentTokenGuider``.
    """

    recurrent = True
    in_keys = [OBSERVATION, ACTION_MASK, IS_INIT]

    kappa: torch.Tensor  # each head's decay [H], a buffer (build_blocks)

    def __init__(
        self,
        decay_scaling: float = 1.0,
        chunk_steps: int | Literal["auto"] | None = "auto",
        norm: Norm = "layer",
        feed_forward: FeedForwardKind = "gelu",
        feed_forward_init: FeedForwardInit = "default",
        positional_encoding: PositionalEncoding = "none",
        retention_gate: GateInput = "query",
        retention_head_norm: HeadNorm = "per_head",
        mava_details: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < decay_scaling <= 1.0:
            raise ConfigError(f"model.guider.network.decay_scaling must be in (0, 1], got {decay_scaling}")
        if chunk_steps != "auto" and chunk_steps is not None and not (isinstance(chunk_steps, int) and chunk_steps >= 1):
            raise ConfigError(f"model.guider.network.chunk_steps must be a positive number of timesteps, auto or null, got {chunk_steps}")
        for name, value, choices in (
            ("norm", norm, Norm),
            ("feed_forward", feed_forward, FeedForwardKind),
            ("feed_forward_init", feed_forward_init, FeedForwardInit),
            ("positional_encoding", positional_encoding, PositionalEncoding),
            ("retention_gate", retention_gate, GateInput),
            ("retention_head_norm", retention_head_norm, HeadNorm),
        ):
            if value not in get_args(choices):
                raise ConfigError(f"model.guider.network.{name} must be one of {', '.join(get_args(choices))}; got {value!r}")
        if feed_forward_init == "zeros" and feed_forward != "swiglu":
            raise ConfigError("model.guider.network.feed_forward_init: zeros applies to feed_forward: swiglu only")
        if retention_head_norm == "mava" and (self.embed_dim // self.n_heads) % self.n_heads:
            raise ConfigError(
                f"model.guider.network.retention_head_norm: mava splits each head's {self.embed_dim // self.n_heads} channels "
                f"into n_heads={self.n_heads} groups: choose n_heads dividing embed_dim / n_heads, or retention_head_norm: per_head"
            )
        if positional_encoding == "timestep" and self.embed_dim % 2:
            raise ConfigError(f"model.guider.network.positional_encoding: timestep needs an even embed_dim, got {self.embed_dim}")
        self.decay_scaling = decay_scaling
        self.chunk_steps = chunk_steps
        self.norm = norm
        self.feed_forward = feed_forward
        self.feed_forward_init = feed_forward_init
        self.positional_encoding = positional_encoding
        self.retention_gate = retention_gate
        self.retention_head_norm = retention_head_norm
        self.mava_details = mava_details
        self.head_dim = self.embed_dim // self.n_heads

    @classmethod
    def paper(cls, **overrides: Any) -> SableGuider:
        """The MAGPO paper's Sable: ``PAPER_SETTINGS`` (1 block, embed 64, 1 head, decay_scaling 0.8, RMSNorm, a
        zero-initialised SwiGLU, the timestep encoding, the gate on the key/value input, Mava's GroupNorm), with ``overrides`` (any
        argument of ``SableGuider``, e.g. ``feed_forward_init="default"`` for a SwiGLU that trains). ``chunk_steps``
        stays ``auto``: the paper's one chunk per rollout (``chunk_steps=None``) gives the same outputs, slower."""
        return cls(**{**PAPER_SETTINGS, **overrides})

    def build_blocks(self) -> None:
        settings: dict[str, Any] = {
            "norm": self.norm,
            "feed_forward": self.feed_forward,
            "gate": self.retention_gate,
            "zero_feed_forward": self.feed_forward_init == "zeros",
            "head_norm": self.retention_head_norm,
            "scale_keys": not self.mava_details,
        }
        self.encoder = nn.ModuleList(RetentionEncoderBlock(self.embed_dim, self.n_heads, **settings) for _ in range(self.n_blocks))
        self.decoder = nn.ModuleList(RetentionDecoderBlock(self.embed_dim, self.n_heads, **settings) for _ in range(self.n_blocks))
        self.register_buffer("kappa", head_decays(self.n_heads, self.decay_scaling))
        if self.norm == "rms":  # the embeddings' and heads' norms too (AgentTokenGuider.build made them LayerNorms)
            e = self.embed_dim
            first = self.observation_embedding[0]
            assert isinstance(first, nn.LayerNorm)
            self.observation_embedding[0] = RMSNorm(first.normalized_shape[0])
            self.value_head[2] = RMSNorm(e)
            self.action_head[2] = RMSNorm(e)
            self.add_module("encoder_norm", RMSNorm(e))
            self.add_module("decoder_norm", RMSNorm(e))
        if self.mava_details:
            self.use_mava_layers()

    def use_mava_layers(self) -> None:
        """Mava's Sable initialisation (``mava_details``; the norms stay as ``norm`` made them): Mava's embeddings and heads
        (``use_mava_embeddings_and_heads``, the observation embedding without a bias) and retention weights from
        N(0, 1 / E^2) (``MultiScaleRetention.initialise_as_mava``)."""
        self.use_mava_embeddings_and_heads(observation_bias=False)
        for module in self.modules():
            if isinstance(module, MultiScaleRetention):
                module.initialise_as_mava()

    @property
    def decoder_blocks(self) -> Sequence[RetentionDecoderBlock]:
        """``decoder`` with its blocks' type, which iterating an ``nn.ModuleList`` does not give a type checker."""
        return cast("Sequence[RetentionDecoderBlock]", self.decoder)

    def chunk(self, tokens_per_step: int) -> int | None:
        """Timesteps per chunk of a pass with ``tokens_per_step`` tokens per timestep (N to train, 2 N for values)."""
        return max(1, CHUNK_TOKENS // tokens_per_step) if self.chunk_steps == "auto" else self.chunk_steps

    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor:
        shape = (self.n_blocks, 3, self.n_heads, self.head_dim, self.head_dim)
        if self.positional_encoding == "none":
            return torch.zeros(batch_size, *shape, device=device)
        return torch.zeros(batch_size, math.prod(shape) + 1, device=device)

    def split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The retention states ``[M, n_blocks, 3, H, d, d]`` (encoder, decoder self-retention, decoder cross-retention)
        and, with the timestep encoding, the timestep ``[M]`` the next step has if it continues its episode (else None).
        With the encoding the state is flat, ``[M, n_blocks * 3 * H * d * d + 1]``: the retention states, then the
        timestep."""
        if self.positional_encoding == "none":
            return state, None
        retention = state[:, :-1].view(state.shape[0], self.n_blocks, 3, self.n_heads, self.head_dim, self.head_dim)
        return retention, state[:, -1]

    def join_state(self, retention: torch.Tensor, timestep: torch.Tensor | None) -> torch.Tensor:
        """``split_state``'s inverse."""
        if timestep is None:
            return retention
        return torch.cat([retention.flatten(1), timestep.to(retention.dtype).unsqueeze(-1)], dim=1)

    def encode(
        self, x: torch.Tensor, masks: RetentionMasks, state: torch.Tensor, carry: bool, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder blocks on observation tokens ``[M, L, E]`` with their states ``[M, n_blocks, H, d, d]`` and the tokens'
        timestep encodings ``position`` (None without the encoding)."""
        states = []
        for j, block in enumerate(self.encoder):
            if j > 0 and self.mava_details:  # Mava normalises every block's input with the encoder's input norm
                x = self.encoder_norm(x)
            x, next_state = block(x, masks, state[:, j], carry, position)
            states.append(next_state)
        return x, torch.stack(states, dim=1) if carry else None

    def decode(
        self,
        tokens: torch.Tensor,
        encodings: torch.Tensor,
        masks: RetentionMasks,
        state: torch.Tensor,
        carry: bool,
        position: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder blocks on the action stream ``[M, L, A + 1]`` with states ``[M, n_blocks, 2, H, d, d]`` (``position``
        as ``encode``'s); outputs ``[M, L, E]``."""
        x = self.embed_actions(tokens.to(encodings.dtype))  # one-hot action tokens are float32; exact in any dtype
        states = []
        for j, block in enumerate(self.decoder):
            x, next_state = block(x, encodings, masks, state[:, j], carry, position)
            states.append(next_state)
        return x, torch.stack(states, dim=1) if carry else None

    def _rollout_state(self, td: TensorDictBase, state: torch.Tensor | None) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``[B, T]``, the episode starts ``[B, T]``, the retention states before the rollout and, with the timestep
        encoding, each step's timestep in its episode ``[B, T]`` (else None)."""
        if td.batch_dims != 2:
            raise ValueError(f"SableGuider reads rollouts [envs, time]; got a TensorDict of batch size {tuple(td.batch_size)}")
        b, t = td.batch_size
        is_init = td.get(IS_INIT).reshape(b, t)
        retention, start = self.split_state(self.initial_state(b, is_init.device) if state is None else state)
        return b, t, is_init, retention, None if start is None else episode_timesteps(is_init, start)

    def token_positions(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The timestep encodings ``[B, T N, E]`` of the tokens of steps whose timesteps are ``[B, T]``."""
        b, t = timesteps.shape
        encoding = timestep_encoding(timesteps, self.embed_dim, dtype)  # [B, T, E]
        return encoding.unsqueeze(2).expand(b, t, self.n_agents, self.embed_dim).reshape(b, t * self.n_agents, self.embed_dim)

    def forward(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor]:
        """Chunkwise form over rollouts ``[B, T]``: every step's conditionals ``[B, T, N]`` and values."""
        b, t, is_init, state, timesteps = self._rollout_state(td, state)
        n = self.n_agents
        masks = retention_masks(is_init, n, self.kappa, self.chunk(n))
        x = self.embed_observations(td).reshape(b, t * n, -1)
        position = None if timesteps is None else self.token_positions(timesteps, x.dtype)
        encodings, _ = self.encode(x, masks, state[:, :, 0], carry=False, position=position)
        tokens = shifted_action_tokens(self.flat_actions(td), self.action_dim, self.categorical).reshape(b, t * n, -1)
        out, _ = self.decode(tokens, encodings, masks, state[:, :, 1:], carry=False, position=position)
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
        is_init = td.get(IS_INIT).reshape(m, 1)
        state, next_timestep = self.split_state(self.initial_state(m, x.device) if state is None else state)
        timestep, position = None, None
        if next_timestep is not None:
            timestep = torch.where(is_init[:, 0], 0.0, next_timestep)  # this step's timestep in its episode, [M]
            position = timestep_encoding(timestep, self.embed_dim, x.dtype).unsqueeze(1)  # [M, 1, E], every agent's
        masks = retention_masks(is_init, self.n_agents, self.kappa)
        encodings, encoder_state = self.encode(x, masks, state[:, :, 0], carry=True, position=position)
        assert encoder_state is not None  # encode returns its state when it carries it
        xi_state = masks.state_carry[:, None, None, :, :, None] * state[:, :, 1:]  # xi S_0, [M, n_blocks, 2, H, d, d]
        memory = [(xi_state[:, j, 0], xi_state[:, j, 1]) for j in range(self.n_blocks)]
        mask = self.flat_mask(td)
        # every agent's encoding is known before decoding: each cross-retention's q and gate input for all agents at once
        queries = encodings if position is None else encodings + position
        enc_queries = [block.cross_retention.query_projection(queries) for block in self.decoder_blocks]

        def through_blocks(i: int, out: torch.Tensor) -> torch.Tensor:
            # agent i's step of every decoder block, carrying each block's retention sums in memory
            for j, block in enumerate(self.decoder_blocks):
                query, gate = enc_queries[j]
                enc_query = (query[:, i : i + 1], None if gate is None else gate[:, i : i + 1])
                out, memory[j] = block.step(out, encodings[:, i : i + 1], enc_query, memory[j], position)
            return out

        action, log_prob = self.decode_agent_by_agent(m, x.device, mask, deterministic, through_blocks)
        next_state = torch.stack([torch.stack([encoder_state[:, j], *memory[j]], dim=1) for j in range(self.n_blocks)], dim=1)
        next_state = self.join_state(next_state, None if timestep is None else timestep + 1)
        return action.reshape(*batch_shape, *action.shape[1:]), log_prob.reshape(*batch_shape, self.n_agents), next_state

    @torch.no_grad()
    def rollout_values(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """V of each step's observation of rollouts ``[B, T]``, and of its next observation read with the state after the
        step (the terminal observation where an episode ended), ``[B, T, N]`` each, in the chunkwise form: each chunk of
        ``chunk(2 N)`` timesteps is followed by its steps' next observations (``with_next_observations``), the chunks
        run in parallel from the states carried into them, as the training pass does. Equal to replaying the rollout
        one step at a time (tests/test_guider_cache.py)."""
        b, t, is_init, state, timesteps = self._rollout_state(td, state)
        n = self.n_agents
        masks = retention_masks(is_init, n, self.kappa, self.chunk(2 * n))
        k, c = masks.full.shape[2], masks.full.shape[-1] // n

        def chunk_layout(pairs: torch.Tensor) -> torch.Tensor:
            """``[B, T, 2, N, E]`` (each step's own token, then its next observation's) -> ``[B, K 2 C N, E]``, per chunk its
            C steps' own tokens, then their next observations' (the last chunk padded)."""
            pairs = nn.functional.pad(pairs, (0, 0, 0, 0, 0, 0, 0, k * c - t))  # [B, K C, 2, N, E]
            return pairs.view(b, k, c, 2, n, -1).transpose(2, 3).reshape(b, k * 2 * c * n, -1)

        tokens = torch.stack([self.embed_observations(td), self.embed_observations(td.get("next"))], dim=1)  # [B T, 2, N, E]
        tokens = chunk_layout(tokens.reshape(b, t, 2, n, -1))
        position = None
        if timesteps is not None:  # a next observation is read as the episode's next step
            encoding = timestep_encoding(torch.stack([timesteps, timesteps + 1], dim=2), self.embed_dim, tokens.dtype)  # [B, T, 2, E]
            position = chunk_layout(encoding.unsqueeze(3).expand(b, t, 2, n, self.embed_dim))
        masks = with_next_observations(masks, n, self.kappa)
        encodings, _ = self.encode(tokens, masks, state[:, :, 0], carry=False, position=position)
        values = self.value_head(encodings).view(b, k, 2, c * n).transpose(1, 2).reshape(b, 2, k * c, n)[:, :, :t]
        return values[:, 0], values[:, 1]
