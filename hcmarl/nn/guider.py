"""Guider networks: an autoregressive joint policy mu(a_i | o, a_<i) with a value per agent (ALGORITHMS.md section 4).

Agents are decoded in the fixed order 0..N-1. Training evaluates every agent's conditional in
one teacher-forced pass over the taken actions; acting decodes agent by agent. Two backbones:
MAT (attention over the agents of one step) and Sable (retention over agents and time, with a
memory carried across steps).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from tensordict import TensorDictBase
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, AGENT_INSTRUCTION, OBSERVATION
from hcmarl.nn.actors import observation_features
from hcmarl.nn.distributions import diagonal_gaussian, map_distribution, masked_categorical
from hcmarl.nn.layers import FLAX_NORM_EPS
from hcmarl.nn.transformer import DecoderBlock, EncoderBlock, FeedForward

Distribution = torch.distributions.Distribution


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


def flax_dense_init_(layer: nn.Module, gain: float) -> None:
    """Flax's ``Dense(kernel_init=orthogonal(gain))`` as Mava builds its layers: an orthogonal weight times ``gain``, a
    zero bias (if the layer has one)."""
    assert isinstance(layer, nn.Linear)
    nn.init.orthogonal_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def use_tanh_gelu(*stacks: nn.Sequential) -> None:
    """Replace every ``nn.GELU`` of ``stacks`` by its tanh approximation, Flax's ``nn.gelu`` (``approximate=True``)."""
    for stack in stacks:
        for i, layer in enumerate(stack):
            if isinstance(layer, nn.GELU):
                stack[i] = nn.GELU(approximate="tanh")


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

    def use_mava_embeddings_and_heads(self, observation_bias: bool) -> None:
        """Mava's embeddings and heads (its ``SableNetwork`` and MAT, liyheng/MAGPO d2ac38b ``mava/networks``; their
        norms stay as built): the observation embedding's linear layer with a bias (MAT) or without (Sable), the action
        embedding's with a bias for continuous actions only; the hidden layers orthogonal with gain sqrt(2), the value
        and action heads' output layers with gain 0.01, biases zero (``flax_dense_init_``); Flax's tanh GELU."""
        observation = self.observation_embedding[1]
        assert isinstance(observation, nn.Linear)
        self.observation_embedding[1] = nn.Linear(observation.in_features, self.embed_dim, bias=observation_bias)
        self.action_embedding[0] = nn.Linear(self.action_dim + 1, self.embed_dim, bias=not self.categorical)
        use_tanh_gelu(self.observation_embedding, self.action_embedding, self.value_head, self.action_head)
        root2 = math.sqrt(2.0)
        for layer in (self.observation_embedding[1], self.action_embedding[0], self.value_head[0], self.action_head[0]):
            flax_dense_init_(layer, root2)
        for layer in (self.value_head[3], self.action_head[3]):
            flax_dense_init_(layer, 0.01)

    _agent_order: torch.Tensor | None = None  # set by ``agent_order``: the order the tokens are read in (None: 0..N-1)

    @contextmanager
    def agent_order(self, order: torch.Tensor) -> Iterator[None]:
        """Inside the block, the agent tokens are read in ``order`` (a permutation of 0..N-1): token k is agent
        ``order[k]``, with its own observation, one-hot id, action and mask; outputs come in that order too
        (``permuted_forward`` puts them back). The official MAGPO code's ``agent_perm``."""
        previous, self._agent_order = self._agent_order, order
        try:
            yield
        finally:
            self._agent_order = previous

    def _in_order(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` ``[M, N, ...]`` with its agents in the current ``agent_order``."""
        return tensor if self._agent_order is None else tensor.index_select(1, self._agent_order)

    def embed_observations(self, td: TensorDictBase) -> torch.Tensor:
        """Observation tokens ``[M, N, E]`` (leading batch dimensions flattened into M), before the encoder blocks."""
        if not self.built:
            raise RuntimeError(f"{type(self).__name__}.build(env_info) must be called before use")
        obs = observation_features(td, self.agent_id, self._one_hot_instruction if self.n_instructions > 0 else None)
        return self.encoder_norm(self.observation_embedding(self._in_order(obs.reshape(-1, *obs.shape[-2:]))))

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
        action = action.reshape(-1, self.n_agents) if self.categorical else action.reshape(-1, self.n_agents, self.action_dim)
        return self._in_order(action)

    def flat_mask(self, td: TensorDictBase) -> torch.Tensor | None:
        """``td``'s action mask ``[M, N, A]``, or None."""
        mask = td.get(ACTION_MASK, None)
        return None if mask is None else self._in_order(mask.reshape(-1, self.n_agents, self.action_dim))

    def decode_agent_by_agent(
        self,
        batch: int,
        device: torch.device,
        mask: torch.Tensor | None,
        deterministic: bool,
        through_blocks: Callable[[int, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Acting's autoregressive decoding over agents 0..N-1 (ALGORITHMS.md section 4): agent i's action token (the
        start token for agent 0) is embedded, ``through_blocks(i, x)`` runs the decoder blocks on it (reusing what the
        earlier agents computed), and agent i's action is drawn (its mode if ``deterministic``) and becomes agent
        i + 1's token. Returns the actions ``[batch, N, ...]`` and their log-probs ``[batch, N]``."""
        tokens = torch.zeros(batch, self.n_agents, self.action_dim + 1, device=device)
        tokens[:, 0, 0] = 1.0
        actions, log_probs = [], []
        for i in range(self.n_agents):
            x = through_blocks(i, self.embed_actions(tokens[:, i : i + 1]))
            agent = self.distribution(x, None if mask is None else mask[:, i : i + 1])
            action = agent.mode if deterministic else agent.sample()
            actions.append(action)
            log_probs.append(agent.log_prob(action))
            if i + 1 < self.n_agents:
                self.write_token(tokens, i + 1, action[:, 0])
        return torch.cat(actions, dim=1), torch.cat(log_probs, dim=1)

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
    self-attention, then each agent's encoding querying the actions before it.

    Args:
        mava_details: the official MAGPO code's MAT (Mava's ``mava/networks/mat_network.py`` and ``attention.py``,
            liyheng/MAGPO d2ac38b): every attention projection (query, key, value, output) orthogonal with gain 0.01,
            the feed-forward's layers with gains sqrt(2) and 0.01, Mava's embeddings and heads
            (``use_mava_embeddings_and_heads``, the observation embedding with its bias), every bias zero, Flax's tanh
            GELU and LayerNorm eps 1e-6. False: PyTorch's initialisations, exact GELU, eps 1e-5.
        **kwargs: as ``AgentTokenGuider``.
    """

    def __init__(self, mava_details: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mava_details = mava_details

    def build_blocks(self) -> None:
        self.encoder = nn.ModuleList(EncoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))
        self.decoder = nn.ModuleList(DecoderBlock(self.embed_dim, self.n_heads) for _ in range(self.n_blocks))
        if self.mava_details:
            self.use_mava_layers()

    def use_mava_layers(self) -> None:
        """Mava's MAT initialisation and details (``mava_details``)."""
        self.use_mava_embeddings_and_heads(observation_bias=True)
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                for projection in module.in_proj_weight.chunk(3):  # W_q, W_k, W_v: each Mava's own Dense
                    nn.init.orthogonal_(projection, gain=0.01)
                flax_dense_init_(module.out_proj, 0.01)  # in_proj_bias starts at zero in PyTorch too
            elif isinstance(module, FeedForward):
                flax_dense_init_(module[0], math.sqrt(2.0))
                flax_dense_init_(module[2], 0.01)
                use_tanh_gelu(module)
            elif isinstance(module, nn.LayerNorm):
                module.eps = FLAX_NORM_EPS

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
        return reshape_distribution(dist, batch_shape), self.value_head(encodings).reshape(*batch_shape, self.n_agents)

    @torch.no_grad()
    def sample(self, td: TensorDictBase, deterministic: bool = False, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, None]:
        batch_shape = td.batch_size
        encodings = self.encode(td)
        mask = self.flat_mask(td)
        m = encodings.shape[0]
        caches = [block.new_cache(m, self.n_agents, encodings.device) for block in self.decoder_blocks]

        def through_blocks(i: int, x: torch.Tensor) -> torch.Tensor:
            # position i reads tokens and encodings 0..i only (DecoderBlock); those before i are in the caches
            for block, cache in zip(self.decoder_blocks, caches, strict=True):
                x = block.step(x, encodings[:, i : i + 1], cache, i)
            return x

        action, log_prob = self.decode_agent_by_agent(m, encodings.device, mask, deterministic, through_blocks)
        return action.reshape(*batch_shape, *action.shape[1:]), log_prob.reshape(*batch_shape, self.n_agents), None


def reshape_distribution(dist: Distribution, batch_shape: torch.Size) -> Distribution:
    """A ``[B, N]`` categorical or Gaussian reshaped to ``[*batch_shape, N]``."""
    return map_distribution(dist, lambda t: t.reshape(*batch_shape, *t.shape[1:]))


def permuted_forward(
    network: GuiderNetwork, td: TensorDictBase, state: torch.Tensor | None, order: torch.Tensor | None
) -> tuple[Distribution, torch.Tensor]:
    """The teacher-forced pass with the agents decoded in ``order`` (None: the fixed order 0..N-1, ``network(td, state)``):
    agent ``order[k]`` is the k-th token, conditioned on the actions of agents ``order[:k]``. The outputs are put back in
    the agents' own order, ``[..., N]`` (ALGORITHMS.md section 4, "Training order of the guider"; the code's ``agent_perm``)."""
    if order is None:
        return network(td, state)
    if not isinstance(network, AgentTokenGuider):
        raise ConfigError(
            f"model.guider.constraint.agent_order=random needs a guider network built on AgentTokenGuider (MATGuider, SableGuider), "
            f"not {type(network).__name__}; set agent_order: fixed"
        )
    with network.agent_order(order):
        dist, value = network(td, state)
    inverse = torch.argsort(order)
    return map_distribution(dist, lambda t: t.index_select(-2, inverse)), value.index_select(-1, inverse)
