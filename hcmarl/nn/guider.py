"""Guider networks: an autoregressive joint policy mu(a_i | o, a_<i) with a value per agent (ALGORITHMS.md section 4).

Agents are decoded in the fixed order 0..N-1. Training evaluates every agent's conditional in
one teacher-forced pass over the taken actions; acting decodes agent by agent. Two backbones:
MAT (attention over the agents of one step) and Sable (retention over agents and time, with a
memory carried across steps).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, AGENT_INSTRUCTION, IS_INIT, OBSERVATION
from hcmarl.nn.actors import observation_features
from hcmarl.nn.distributions import diagonal_gaussian, map_distribution, masked_categorical
from hcmarl.nn.retention import (
    RetentionDecoderBlock,
    RetentionEncoderBlock,
    RetentionMasks,
    head_decays,
    retention_masks,
    with_next_observations,
)
from hcmarl.nn.transformer import DecoderBlock, EncoderBlock

Distribution = torch.distributions.Distribution

# SableGuider's chunks with ``chunk_steps: auto``, in tokens (timesteps x agents; a value pass's chunks also hold the next
# observations): about the fastest training and value passes measured at the MAGPO recipes' sizes, 3 and 8 agents
# (docs/algorithms/magpo.md, "The retention guider").
CHUNK_TOKENS = 48


class GuiderNetwork(nn.Module, ABC):
    """What the guider role asks of a network: ``build(info)``, a teacher-forced pass, autoregressive sampling, values.

    Every method takes a TensorDict whose group ``agents`` is ``[..., N]``. A recurrent network
    (``recurrent = True``) also carries a hidden ``state`` from step to step: it reads its
    TensorDicts as rollouts ``[B, T]`` in ``forward`` and ``rollout_values``, and ``state`` is the
    state before their first step (None: zeros). A memoryless network ignores ``state`` and returns None for it.
    """

    recurrent: bool = False
    in_keys: list = [OBSERVATION, ACTION_MASK]

    @abstractmethod
    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the layers for the env described by ``info``; with ``n_instructions = K > 0`` every agent token also
        reads its conductor instruction ``("agents", "instruction")`` (a conductor-guided guider)."""

    @abstractmethod
    def forward(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor]:
        """Teacher-forced: the conditionals mu(. | o, a_<i) for every agent given ``td``'s actions, ``[..., N]``, and
        each agent's value (in the units the guider role trains it in)."""

    @abstractmethod
    def sample(
        self, td: TensorDictBase, deterministic: bool = False, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decode one step agent by agent: the joint action, each agent's log mu(a_i | o, a_<i) ``[..., N]``, and the next state."""

    @abstractmethod
    def rollout_values(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """V_i of every step's observation and of its ``("next", ...)`` observation, both ``[..., N]``: what GAE needs."""

    def initial_state(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The hidden state of ``batch_size`` fresh envs (None for a memoryless network)."""
        return None


def shifted_action_tokens(action: torch.Tensor, action_dim: int, categorical: bool) -> torch.Tensor:
    """Decoder inputs ``[B, N, A + 1]`` from actions ``[B, N]`` (or ``[B, N, A]``): a start token (channel 0), then
    agent i-1's action at position i. A categorical action is one-hot over channels 1..A, a continuous one is
    written there as is. Agent N-1's action is never an input."""
    features = nn.functional.one_hot(action, action_dim).to(torch.float32) if categorical else action
    tokens = torch.zeros(*features.shape[:-1], action_dim + 1, device=features.device, dtype=features.dtype)
    tokens[:, 0, 0] = 1.0
    tokens[:, 1:, 1:] = features[:, :-1]
    return tokens


class AgentTokenGuider(GuiderNetwork):
    """What MAT and Sable share: agent tokens in, an encoder and a decoder of ``n_blocks`` each, and the same heads.

    Observation (+ one-hot id) -> LayerNorm, Linear, GELU -> encoder -> value head per agent. Shifted
    actions -> Linear, GELU -> decoder (which also reads the encodings) -> action head: masked
    categorical logits, or a Gaussian mean with a state-independent log-std.

    Args:
        embed_dim: width of every token.
        n_blocks: encoder blocks and decoder blocks (as many of each).
        n_heads: attention or retention heads (must divide ``embed_dim``).
        agent_id: append a one-hot agent id to each observation.
        log_std_init: initial log-std of continuous actions.
    """

    def __init__(self, embed_dim: int = 64, n_blocks: int = 1, n_heads: int = 1, agent_id: bool = True, log_std_init: float = 0.0) -> None:
        super().__init__()
        if embed_dim % n_heads != 0:
            raise ConfigError(f"model.guider.network: embed_dim={embed_dim} must be a multiple of n_heads={n_heads}")
        self.embed_dim = embed_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.agent_id = agent_id
        self.log_std_init = log_std_init
        self.n_instructions = 0
        self.built = False

    def build(self, info: EnvInfo, n_instructions: int = 0) -> None:
        """Create the embeddings, heads and (``build_blocks``) the encoder and decoder for ``info``'s agents and actions.

        With ``n_instructions = K > 0`` each observation token also carries the agent's instruction, one-hot.
        """
        e = self.embed_dim
        self.n_instructions = n_instructions
        if n_instructions > 0:
            self.in_keys = [*type(self).in_keys, AGENT_INSTRUCTION]
        obs_dim = info.obs_dim + (info.n_agents if self.agent_id else 0) + n_instructions
        self.n_agents = info.n_agents
        self.categorical = info.categorical
        self.action_dim = info.action_dim
        self.observation_embedding = nn.Sequential(nn.LayerNorm(obs_dim), nn.Linear(obs_dim, e), nn.GELU())
        self.encoder_norm = nn.LayerNorm(e)
        self.value_head = nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.LayerNorm(e), nn.Linear(e, 1))
        self.action_embedding = nn.Sequential(nn.Linear(info.action_dim + 1, e, bias=False), nn.GELU())
        self.decoder_norm = nn.LayerNorm(e)
        hidden = nn.Linear(e, e)  # created before the output layer: the order the seed's draws follow
        action_out = nn.Linear(e, info.action_dim)
        self.action_head = nn.Sequential(hidden, nn.GELU(), nn.LayerNorm(e), action_out)
        nn.init.orthogonal_(action_out.weight, gain=0.01)
        nn.init.zeros_(action_out.bias)
        if not self.categorical:
            self.log_std = nn.Parameter(torch.full((1, info.action_dim), float(self.log_std_init)))
        self.build_blocks()
        self.built = True

    @abstractmethod
    def build_blocks(self) -> None:
        """Create ``self.encoder`` and ``self.decoder``."""

    def embed_observations(self, td: TensorDictBase) -> torch.Tensor:
        """Observation tokens ``[M, N, E]`` (leading batch dimensions flattened into M), before the encoder blocks."""
        if not self.built:
            raise RuntimeError(f"{type(self).__name__}.build(env_info) must be called before use")
        obs = observation_features(td, self.agent_id, self._one_hot_instruction if self.n_instructions > 0 else None)
        return self.encoder_norm(self.observation_embedding(obs.reshape(-1, *obs.shape[-2:])))

    def _one_hot_instruction(self, instruction: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(instruction, self.n_instructions).to(torch.float32)

    def embed_actions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Action-stream tokens ``[..., A + 1]`` -> ``[..., E]``, before the decoder blocks."""
        return self.decoder_norm(self.action_embedding(tokens))

    def distribution(self, out: torch.Tensor, action_mask: torch.Tensor | None) -> Distribution:
        """The action head on decoder outputs ``[..., E]``: masked categorical or diagonal Gaussian."""
        out = self.action_head(out)
        if self.categorical:
            return masked_categorical(out, action_mask)
        return diagonal_gaussian(out, self.log_std)

    def flat_actions(self, td: TensorDictBase) -> torch.Tensor:
        """``td``'s actions with the leading batch dimensions flattened: ``[M, N]`` (or ``[M, N, A]``)."""
        action = td.get(ACTION)
        return action.reshape(-1, self.n_agents) if self.categorical else action.reshape(-1, self.n_agents, self.action_dim)

    def flat_mask(self, td: TensorDictBase) -> torch.Tensor | None:
        """``td``'s action mask ``[M, N, A]``, or None."""
        mask = td.get(ACTION_MASK, None)
        return None if mask is None else mask.reshape(-1, self.n_agents, self.action_dim)

    def write_token(self, tokens: torch.Tensor, position: int, action: torch.Tensor) -> None:
        """Write one agent's sampled action ``[M]`` (or ``[M, A]``) into the action stream ``[M, N, A + 1]`` at ``position``."""
        if self.categorical:
            tokens[:, position, 1:] = nn.functional.one_hot(action, self.action_dim).to(tokens.dtype)
        else:
            tokens[:, position, 1:] = action


class MATGuider(AgentTokenGuider):
    """MAT's encoder-decoder transformer over agent tokens (Wen et al. 2022; ALGORITHMS.md section 4). Memoryless.

    Encoder: ``n_blocks`` of self-attention over all agents of a step. Decoder: ``n_blocks`` of
    ``DecoderBlock`` on the shifted action stream (a start token, then a_0 .. a_{N-2}): causal
    self-attention, then each agent's encoding querying the actions before it. Arguments as
    ``AgentTokenGuider``.
    """

    def build_blocks(self) -> None:
        self.encoder = nn.ModuleList(EncoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))
        self.decoder = nn.ModuleList(DecoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))

    @property
    def decoder_blocks(self) -> Sequence[DecoderBlock]:
        """``decoder`` with its blocks' type, which iterating an ``nn.ModuleList`` does not give a type checker."""
        return cast("Sequence[DecoderBlock]", self.decoder)

    def encode(self, td: TensorDictBase) -> torch.Tensor:
        """The agents' encodings ``[M, N, E]`` (leading batch dimensions flattened into M)."""
        x = self.embed_observations(td)
        for block in self.encoder:
            x = block(x)
        return x

    def value(self, td: TensorDictBase) -> torch.Tensor:
        """Each agent's value ``[..., N]``."""
        return self.value_head(self.encode(td)).reshape(*td.batch_size, self.n_agents)

    def rollout_values(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.value(td), self.value(td.get("next"))

    def decode(self, tokens: torch.Tensor, encodings: torch.Tensor, action_mask: torch.Tensor | None) -> Distribution:
        """Every position's conditional ``[M, N]``: position i reads tokens 0..i (actions of agents < i) and the encodings."""
        x = self.embed_actions(tokens)
        for block in self.decoder:
            x = block(x, encodings)
        return self.distribution(x, action_mask)

    def forward(self, td: TensorDictBase, state: torch.Tensor | None = None) -> tuple[Distribution, torch.Tensor]:
        batch_shape = td.batch_size
        encodings = self.encode(td)
        tokens = shifted_action_tokens(self.flat_actions(td), self.action_dim, self.categorical)
        dist = self.decode(tokens, encodings, self.flat_mask(td))
        return _reshape_distribution(dist, batch_shape), self.value_head(encodings).reshape(*batch_shape, self.n_agents)

    @torch.no_grad()
    def sample(self, td: TensorDictBase, deterministic: bool = False, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, None]:
        batch_shape = td.batch_size
        encodings = self.encode(td)
        mask = self.flat_mask(td)
        m = encodings.shape[0]
        tokens = torch.zeros(m, self.n_agents, self.action_dim + 1, device=encodings.device)
        tokens[:, 0, 0] = 1.0
        caches = [block.new_cache(m, self.n_agents, encodings.device) for block in self.decoder_blocks]
        actions, log_probs = [], []
        for i in range(self.n_agents):
            # position i reads tokens and encodings 0..i only (DecoderBlock); those before i are in the caches
            x = self.embed_actions(tokens[:, i : i + 1])
            for block, cache in zip(self.decoder_blocks, caches, strict=True):
                x = block.step(x, encodings[:, i : i + 1], cache, i)
            agent = self.distribution(x, None if mask is None else mask[:, i : i + 1])
            action = agent.mode if deterministic else agent.sample()
            actions.append(action)
            log_probs.append(agent.log_prob(action))
            if i + 1 < self.n_agents:
                self.write_token(tokens, i + 1, action[:, 0])
        action = torch.cat(actions, dim=1)
        return action.reshape(*batch_shape, *action.shape[1:]), torch.cat(log_probs, dim=1).reshape(*batch_shape, self.n_agents), None


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
        return _reshape_distribution(dist, td.batch_size), self.value_head(encodings).reshape(b, t, n)

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


def _reshape_distribution(dist: Distribution, batch_shape: torch.Size) -> Distribution:
    """A ``[B, N]`` categorical or Gaussian reshaped to ``[*batch_shape, N]``."""
    return map_distribution(dist, lambda t: t.reshape(*batch_shape, *t.shape[1:]))
