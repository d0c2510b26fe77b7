"""Guider networks: an autoregressive joint policy mu(a_i | o, a_<i) with a value per agent (ALGORITHMS.md section 4).

Agents are decoded in the fixed order 0..N-1. Training evaluates every agent's conditional in
one teacher-forced pass over the taken actions; acting decodes agent by agent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, OBSERVATION
from hcmarl.nn.actors import agent_id_features
from hcmarl.nn.distributions import diagonal_gaussian, masked_categorical, select_agents
from hcmarl.nn.transformer import DecoderBlock, EncoderBlock

Distribution = torch.distributions.Distribution


class GuiderNetwork(nn.Module, ABC):
    """What the guider role asks of a network: ``build(info)``, values, a teacher-forced pass, autoregressive sampling.

    Every method takes a TensorDict of any batch shape ``[...]`` whose group ``agents`` is ``[..., N]``.
    """

    in_keys: list = [OBSERVATION, ACTION_MASK]

    @abstractmethod
    def build(self, info: EnvInfo) -> None:
        """Create the layers for the env described by ``info``."""

    @abstractmethod
    def value(self, td: TensorDictBase) -> torch.Tensor:
        """Each agent's value V_i(o), ``[..., N]`` (in the units the guider role trains it in)."""

    @abstractmethod
    def forward(self, td: TensorDictBase) -> tuple[Distribution, torch.Tensor]:
        """Teacher-forced: the conditionals mu(. | o, a_<i) for every agent given ``td``'s actions, ``[..., N]``, and the values."""

    @abstractmethod
    def sample(self, td: TensorDictBase, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode agent by agent: the joint action and each agent's log mu(a_i | o, a_<i) ``[..., N]``."""


class MATGuider(GuiderNetwork):
    """MAT's encoder-decoder transformer over agent tokens (Wen et al. 2022; ALGORITHMS.md section 4).

    Encoder: each agent's observation (+ one-hot id) -> embedding -> ``n_blocks`` of self-attention
    over all agents -> encodings, and a value head per agent. Decoder: the shifted action stream
    (a start token, then a_0 .. a_{N-2}) -> ``n_blocks`` of ``DecoderBlock`` (causal self-attention,
    then each agent's encoding querying the actions before it) -> per-agent action head: masked
    categorical logits, or a Gaussian mean with a state-independent log-std.

    Args:
        embed_dim: width of every token.
        n_blocks: encoder blocks and decoder blocks (as many of each).
        n_heads: attention heads (must divide ``embed_dim``).
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
        self.built = False

    def build(self, info: EnvInfo) -> None:
        """Create the encoder, decoder and heads for ``info``'s agents, observations and actions."""
        e = self.embed_dim
        obs_dim = info.obs_dim + (info.n_agents if self.agent_id else 0)
        self.n_agents = info.n_agents
        self.categorical = info.categorical
        self.action_dim = info.action_dim
        self.observation_embedding = nn.Sequential(nn.LayerNorm(obs_dim), nn.Linear(obs_dim, e), nn.GELU())
        self.encoder_norm = nn.LayerNorm(e)
        self.encoder = nn.ModuleList(EncoderBlock(e, self.n_heads) for _ in range(self.n_blocks))
        self.value_head = nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.LayerNorm(e), nn.Linear(e, 1))
        self.action_embedding = nn.Sequential(nn.Linear(info.action_dim + 1, e, bias=False), nn.GELU())
        self.decoder_norm = nn.LayerNorm(e)
        self.decoder = nn.ModuleList(DecoderBlock(e, self.n_heads) for _ in range(self.n_blocks))
        self.action_head = nn.Sequential(nn.Linear(e, e), nn.GELU(), nn.LayerNorm(e), nn.Linear(e, info.action_dim))
        nn.init.orthogonal_(self.action_head[-1].weight, gain=0.01)
        nn.init.zeros_(self.action_head[-1].bias)
        if not self.categorical:
            self.log_std = nn.Parameter(torch.full((1, info.action_dim), float(self.log_std_init)))
        self.built = True

    # ---- encoder --------------------------------------------------------------------------
    def encode(self, td: TensorDictBase) -> torch.Tensor:
        """The agents' encodings ``[B, N, E]`` (leading batch dimensions flattened into B)."""
        if not self.built:
            raise RuntimeError("MATGuider.build(env_info) must be called before use")
        obs = td.get(OBSERVATION)
        if self.agent_id:
            obs = agent_id_features(obs)
        x = self.encoder_norm(self.observation_embedding(obs.reshape(-1, *obs.shape[-2:])))
        for block in self.encoder:
            x = block(x)
        return x

    def _values(self, encodings: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        return self.value_head(encodings).reshape(*batch_shape, self.n_agents)

    def value(self, td: TensorDictBase) -> torch.Tensor:
        return self._values(self.encode(td), td.batch_size)

    # ---- decoder --------------------------------------------------------------------------
    def action_tokens(self, action: torch.Tensor) -> torch.Tensor:
        """Decoder inputs ``[B, N, A + 1]``: a start token (channel 0), then agent i-1's action at position i.

        A categorical action is one-hot over channels 1..A, a continuous one is written there as is.
        Agent N-1's action is never an input.
        """
        features = nn.functional.one_hot(action, self.action_dim).to(torch.float32) if self.categorical else action
        tokens = torch.zeros(*features.shape[:-1], self.action_dim + 1, device=features.device, dtype=features.dtype)
        tokens[:, 0, 0] = 1.0
        tokens[:, 1:, 1:] = features[:, :-1]
        return tokens

    def decode(self, tokens: torch.Tensor, encodings: torch.Tensor, action_mask: torch.Tensor | None) -> Distribution:
        """Every position's conditional ``[B, N]``: position i reads tokens 0..i (actions of agents < i) and the encodings."""
        x = self.decoder_norm(self.action_embedding(tokens))
        for block in self.decoder:
            x = block(x, encodings)
        out = self.action_head(x)
        if self.categorical:
            return masked_categorical(out, action_mask)
        return diagonal_gaussian(out, self.log_std)

    def forward(self, td: TensorDictBase) -> tuple[Distribution, torch.Tensor]:
        batch_shape = td.batch_size
        encodings = self.encode(td)
        action = td.get(ACTION)
        action = action.reshape(-1, self.n_agents) if self.categorical else action.reshape(-1, self.n_agents, self.action_dim)
        dist = self.decode(self.action_tokens(action), encodings, self._flat_mask(td))
        return _reshape_distribution(dist, batch_shape), self._values(encodings, batch_shape)

    @torch.no_grad()
    def sample(self, td: TensorDictBase, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = td.batch_size
        encodings = self.encode(td)
        mask = self._flat_mask(td)
        b = encodings.shape[0]
        tokens = torch.zeros(b, self.n_agents, self.action_dim + 1, device=encodings.device)
        tokens[:, 0, 0] = 1.0
        actions, log_probs = [], []
        for i in range(self.n_agents):
            # position i reads tokens and encodings 0..i only (DecoderBlock), so the prefix suffices
            prefix = slice(0, i + 1)
            prefix_mask = None if mask is None else mask[:, prefix]
            agent = select_agents(self.decode(tokens[:, prefix], encodings[:, prefix], prefix_mask), slice(i, i + 1))
            action = agent.mode if deterministic else agent.sample()
            actions.append(action)
            log_probs.append(agent.log_prob(action))
            if i + 1 < self.n_agents:
                if self.categorical:
                    tokens[:, i + 1, 1:] = nn.functional.one_hot(action[:, 0], self.action_dim).to(tokens.dtype)
                else:
                    tokens[:, i + 1, 1:] = action[:, 0]
        action = torch.cat(actions, dim=1)
        action = action.reshape(*batch_shape, self.n_agents, *action.shape[2:])
        return action, torch.cat(log_probs, dim=1).reshape(*batch_shape, self.n_agents)

    def _flat_mask(self, td: TensorDictBase) -> torch.Tensor | None:
        mask = td.get(ACTION_MASK, None)
        return None if mask is None else mask.reshape(-1, self.n_agents, self.action_dim)


def _reshape_distribution(dist: Distribution, batch_shape: torch.Size) -> Distribution:
    """A ``[B, N]`` categorical or Gaussian reshaped to ``[*batch_shape, N]``."""
    if isinstance(dist, torch.distributions.Categorical):
        return torch.distributions.Categorical(logits=dist.logits.reshape(*batch_shape, *dist.logits.shape[1:]))
    base = dist.base_dist
    loc, scale = base.loc.reshape(*batch_shape, *base.loc.shape[1:]), base.scale.reshape(*batch_shape, *base.scale.shape[1:])
    return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
