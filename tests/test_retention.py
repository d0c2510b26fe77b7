"""Sable's retention and the retention guider: recurrent acting equals the parallel replay; resets cut the memory."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ACTION, ACTION_MASK, IS_INIT, LOG_PROB, OBSERVATION
from hcmarl.nn import SableGuider
from hcmarl.nn.retention import MultiScaleRetention, head_decays, retention_masks
from hcmarl.nn.retention_blocks import RetentionDecoderBlock, RetentionEncoderBlock

DISCRETE = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="categorical", action_dim=4, max_steps=10, has_action_mask=True)
CONTINUOUS = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="continuous", action_dim=2, max_steps=10)


def test_head_decays_follow_the_multi_scale_schedule() -> None:
    assert torch.allclose(head_decays(1), torch.tensor([1 - 2.0**-5]))
    assert torch.allclose(head_decays(3, 0.5), 0.5 * torch.tensor([1 - 2.0**-5, 1 - 2.0**-7, 1 - 2.0**-9]))


def reference_retention(
    layer: MultiScaleRetention,
    query: torch.Tensor,
    source: torch.Tensor,
    is_init: torch.Tensor,
    n_agents: int,
    kappa: torch.Tensor,
    state: torch.Tensor,
    causal: bool,
    position: torch.Tensor | None = None,
) -> torch.Tensor:
    """Retention token by token, straight from its definition (a loop over pairs n, m); ``position``, if given, added to
    both inputs first; the output gate reads the query or the source input as ``layer.gate_input`` says."""
    if position is not None:
        query, source = query + position, source + position
    b, length, _ = query.shape
    h, d = layer.n_heads, layer.head_dim
    q = layer.query(query).view(b, length, h, d)
    k = layer.key(source).view(b, length, h, d) * (d**-0.5 if layer.scale_keys else 1.0)  # Mava's keys are unscaled
    v = layer.value(source).view(b, length, h, d)
    out = torch.zeros(b, length, h, d, dtype=q.dtype)
    for e in range(b):
        starts = is_init[e].long().cumsum(0)
        for n in range(length):
            tn, episode_n = n // n_agents, starts[n // n_agents]
            for head in range(h):
                acc = torch.zeros(d, dtype=q.dtype)
                for m in range(length):
                    tm = m // n_agents
                    readable = (m <= n) if causal else (tm <= tn)
                    if readable and starts[tm] == episode_n:
                        acc += kappa[head] ** (tn - tm) * (q[e, n, head] @ k[e, m, head]) * v[e, m, head]
                if episode_n == 0:
                    acc += kappa[head] ** (tn + 1) * (q[e, n, head] @ state[e, head])
                out[e, n, head] = acc
    if layer.head_norm == "mava":  # GroupNorm(H, d) on each head's row of d channels (test_sable_parts checks it by hand)
        y = layer.group_norm(out.reshape(b * length * h, d)).view(b, length, h * d)
    else:  # GroupNorm(H, E) on each token's H x d channels
        y = layer.group_norm(out.reshape(b * length, h * d)).view(b, length, h * d)
    return layer.out(torch.nn.functional.silu(layer.gate(query if layer.gate_input == "query" else source)) * y)


@pytest.mark.parametrize("causal", [False, True])
def test_retention_equals_its_definition(causal: bool) -> None:
    torch.manual_seed(0)
    n_agents, steps, heads, embed = 2, 4, 2, 8
    layer = MultiScaleRetention(embed, heads)
    kappa = head_decays(heads, 0.8)
    is_init = torch.tensor([[False, False, True, False], [True, False, False, False]])
    x, source = torch.randn(2, steps * n_agents, embed), torch.randn(2, steps * n_agents, embed)
    state = torch.randn(2, heads, embed // heads, embed // heads)
    masks = retention_masks(is_init, n_agents, kappa)
    out, _ = layer(x, source, masks.causal if causal else masks.full, masks, state)
    expected = reference_retention(layer, x, source, is_init, n_agents, kappa, state, causal)
    assert torch.allclose(out, expected, atol=1e-5)


def test_chunk_state_equals_stepwise_states() -> None:
    """The state after a chunk equals the state after feeding its timesteps one by one (resets included)."""
    torch.manual_seed(1)
    n_agents, steps, heads, embed = 3, 5, 2, 8
    layer = MultiScaleRetention(embed, heads)
    kappa = head_decays(heads)
    is_init = torch.tensor([[False, True, False, False, True], [False, False, False, False, False]])
    x = torch.randn(2, steps * n_agents, embed)
    state = torch.randn(2, heads, embed // heads, embed // heads)
    masks = retention_masks(is_init, n_agents, kappa)
    _, chunk_state = layer(x, x, masks.full, masks, state)
    stepwise = state
    for t in range(steps):
        step_masks = retention_masks(is_init[:, t : t + 1], n_agents, kappa)
        tokens = x[:, t * n_agents : (t + 1) * n_agents]
        _, stepwise = layer(tokens, tokens, step_masks.full, step_masks, stepwise)
    assert torch.allclose(chunk_state, stepwise, atol=1e-5)


# 8 timesteps, episode starts inside chunks and on chunk boundaries (chunks of 2, 3 and 4 start at 0, 2, 3, 4, 6),
# an env with none, and one that starts at 0: every kind of cut in every chunking below
CHUNKED_STARTS = torch.tensor(
    [
        [False, False, True, False, False, True, False, False],
        [False, True, False, False, True, False, False, True],
        [False, False, False, False, False, False, False, False],
        [True, False, False, True, False, False, True, False],
    ]
)


@pytest.mark.parametrize("chunk_steps", [1, 2, 3, 5, 8])
def test_chunk_masks_cut_the_whole_rollout_masks(chunk_steps: int) -> None:
    """Chunk c's D is the whole-rollout D restricted to the chunk's tokens (pairs across chunks go through the carried
    state instead; the block tests below check that part)."""
    n_agents, kappa = 2, head_decays(2, 0.9).double()
    whole = retention_masks(CHUNKED_STARTS, n_agents, kappa)
    chunked = retention_masks(CHUNKED_STARTS, n_agents, kappa, chunk_steps)
    steps = CHUNKED_STARTS.shape[1]
    assert chunked.full.shape[2] == -(-steps // chunk_steps)
    for c in range(-(-steps // chunk_steps)):
        tokens = slice(c * chunk_steps * n_agents, min(steps, (c + 1) * chunk_steps) * n_agents)
        length = tokens.stop - tokens.start
        for name in ("full", "causal"):
            assert torch.equal(getattr(chunked, name)[:, :, c, :length, :length], getattr(whole, name)[:, :, 0, tokens, tokens])


def run_blocks(
    blocks: torch.nn.ModuleList,
    decoder: bool,
    x: torch.Tensor,
    enc: torch.Tensor,
    is_init: torch.Tensor,
    n_agents: int,
    kappa: torch.Tensor,
    state: torch.Tensor,
    chunk_steps: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks over a whole sequence at once, in chunks of ``chunk_steps`` timesteps, with the carry."""
    masks = retention_masks(is_init, n_agents, kappa, chunk_steps)
    states = []
    for j, block in enumerate(blocks):
        x, next_state = block(x, enc, masks, state[:, j]) if decoder else block(x, masks, state[:, j])
        states.append(next_state)
    return x, torch.stack(states, dim=1)


def run_blocks_recurrently(blocks, decoder, x, enc, is_init, n_agents, kappa, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrent (acting) form: one timestep at a time, the state carried from each to the next."""
    outputs = []
    for t in range(is_init.shape[1]):
        tokens = slice(t * n_agents, (t + 1) * n_agents)
        out, state = run_blocks(blocks, decoder, x[:, tokens], enc[:, tokens], is_init[:, t : t + 1], n_agents, kappa, state, None)
        outputs.append(out)
    return torch.cat(outputs, dim=1), state


@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("chunk_steps", [1, 2, 3, 4, 5, 8])
def test_chunked_blocks_equal_the_whole_rollout_and_the_recurrent_form(float64, decoder: bool, chunk_steps: int) -> None:
    """Two encoder (or decoder) blocks, two heads, a nonzero carried state: chunks of any length (dividing T or not) give
    the outputs and the final state of the whole-rollout parallel form and of the recurrent form, and match the
    token-pair definition in the first block."""
    torch.manual_seed(5)
    n_agents, heads, embed = 2, 2, 8
    kappa = head_decays(heads, 0.9)
    block = RetentionDecoderBlock if decoder else RetentionEncoderBlock
    blocks = torch.nn.ModuleList(block(embed, heads) for _ in range(2))
    b, steps = CHUNKED_STARTS.shape
    x, enc = torch.randn(b, steps * n_agents, embed), torch.randn(b, steps * n_agents, embed)
    state = torch.randn(b, 2, *((2,) if decoder else ()), heads, embed // heads, embed // heads)
    chunked, chunked_state = run_blocks(blocks, decoder, x, enc, CHUNKED_STARTS, n_agents, kappa, state, chunk_steps)
    whole, whole_state = run_blocks(blocks, decoder, x, enc, CHUNKED_STARTS, n_agents, kappa, state, None)
    recurrent, recurrent_state = run_blocks_recurrently(blocks, decoder, x, enc, CHUNKED_STARTS, n_agents, kappa, state)
    assert torch.allclose(chunked, whole, atol=1e-12) and torch.allclose(chunked_state, whole_state, atol=1e-12)
    assert torch.allclose(chunked, recurrent, atol=1e-12) and torch.allclose(chunked_state, recurrent_state, atol=1e-12)
    # the first block's retention against its definition, a loop over token pairs
    layer = blocks[0].self_retention if decoder else blocks[0].retention
    masks = retention_masks(CHUNKED_STARTS, n_agents, kappa, chunk_steps)
    out, _ = layer(x, x, masks.causal if decoder else masks.full, masks, state[:, 0, 0] if decoder else state[:, 0])
    expected = reference_retention(layer, x, x, CHUNKED_STARTS, n_agents, kappa, state[:, 0, 0] if decoder else state[:, 0], decoder)
    assert torch.allclose(out, expected, atol=1e-12)


def make_guider(info: EnvInfo, **kwargs) -> SableGuider:
    guider = SableGuider(embed_dim=16, n_blocks=2, n_heads=2, decay_scaling=0.9, **kwargs)
    guider.build(info)
    return guider


def act_rollout(guider: SableGuider, info: EnvInfo, is_init: torch.Tensor, state: torch.Tensor) -> tuple[TensorDict, torch.Tensor]:
    """Act step by step as the collector does; returns the rollout ``[E, T]`` and the final state."""
    envs, steps = is_init.shape
    obs = torch.randn(envs, steps, info.n_agents, info.obs_dim)
    mask = torch.rand(envs, steps, info.n_agents, info.action_dim) > 0.3
    mask[..., 0] = True
    frames = []
    for t in range(steps):
        td = TensorDict({OBSERVATION: obs[:, t], IS_INIT: is_init[:, t : t + 1]}, batch_size=[envs])
        if info.categorical:
            td.set(ACTION_MASK, mask[:, t])
        action, log_prob, state = guider.sample(td, state=state)
        td.set(ACTION, action)
        td.set(LOG_PROB, log_prob)
        frames.append(td)
    return torch.stack(frames, dim=1), state


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_recurrent_acting_equals_parallel_replay(info: EnvInfo) -> None:
    """The log mu(a_i | history, a_<i) of actions sampled one timestep at a time equals the parallel pass over the rollout,
    from a nonzero starting state and across episode starts."""
    torch.manual_seed(2)
    guider = make_guider(info)
    is_init = torch.zeros(4, 6, dtype=torch.bool)
    is_init[0, 3] = is_init[1, 0] = is_init[2, 2] = is_init[2, 4] = True
    start = torch.randn_like(guider.initial_state(4, torch.device("cpu")))
    rollout, _ = act_rollout(guider, info, is_init, start)
    dist, values = guider(rollout, start)
    assert dist.batch_shape == (4, 6, info.n_agents)
    assert torch.allclose(dist.log_prob(rollout.get(ACTION)), rollout.get(LOG_PROB), atol=1e-4)
    rollout.set(("next", OBSERVATION), torch.cat([rollout.get(OBSERVATION)[:, 1:], torch.randn(4, 1, info.n_agents, info.obs_dim)], dim=1))
    replayed, next_values = guider.rollout_values(rollout, start)
    assert torch.allclose(values, replayed, atol=1e-4)
    # where the next step continues the episode, its value is the next step's value
    continues = ~is_init[:, 1:]
    assert torch.allclose(next_values[:, :-1][continues], values[:, 1:][continues], atol=1e-4)


def guider_outputs(dist: torch.distributions.Distribution, values: torch.Tensor) -> list[torch.Tensor]:
    """The distribution's parameters (logits, or Gaussian mean and scale) and the values."""
    if isinstance(dist, torch.distributions.Categorical):
        return [dist.logits, values]
    return [dist.base_dist.loc, dist.base_dist.scale, values]


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
@pytest.mark.parametrize("chunk_steps", [1, 3, 4])
def test_chunked_guider_equals_the_whole_rollout_and_acting(info: EnvInfo, chunk_steps: int) -> None:
    """SableGuider's chunked training pass gives the distribution parameters and values of the whole-rollout pass, the
    log-probabilities of the actions sampled one timestep at a time, and the recurrently replayed values; episode starts
    inside chunks and on their boundaries, a nonzero start state. (Float32: the guider's action tokens are float32.)"""
    torch.manual_seed(6)
    guider = make_guider(info, chunk_steps=chunk_steps)
    torch.nn.init.normal_(guider.action_head[-1].weight)  # the initial head (gain 0.01) makes every difference tiny
    envs = CHUNKED_STARTS.shape[0]
    start = torch.randn_like(guider.initial_state(envs, torch.device("cpu")))
    rollout, _ = act_rollout(guider, info, CHUNKED_STARTS, start)
    chunked = guider_outputs(*guider(rollout, start))
    guider.chunk_steps = None
    whole = guider_outputs(*guider(rollout, start))
    for a, b in zip(chunked, whole, strict=False):
        assert torch.allclose(a, b, atol=1e-5)
    guider.chunk_steps = chunk_steps
    dist, _ = guider(rollout, start)
    assert torch.allclose(dist.log_prob(rollout.get(ACTION)), rollout.get(LOG_PROB), atol=1e-5)
    rollout.set(("next", OBSERVATION), torch.randn(*rollout.batch_size, info.n_agents, info.obs_dim))
    assert torch.allclose(guider.rollout_values(rollout, start)[0], chunked[-1], atol=1e-5)


def test_an_episode_start_cuts_the_memory() -> None:
    """Steps after an episode start do not depend on anything before it, nor on the carried state; steps before do."""
    torch.manual_seed(3)
    guider = make_guider(DISCRETE)
    is_init = torch.zeros(2, 5, dtype=torch.bool)
    is_init[:, 3] = True
    rollout, _ = act_rollout(guider, DISCRETE, is_init, None)
    dist, values = guider(rollout, None)
    changed = rollout.clone()
    changed.set(OBSERVATION, changed.get(OBSERVATION).clone())
    changed.get(OBSERVATION)[:, 1] += 5.0
    changed_dist, changed_values = guider(changed, torch.randn_like(guider.initial_state(2, torch.device("cpu"))))
    assert torch.allclose(changed_dist.logits[:, 3:], dist.logits[:, 3:], atol=1e-5)
    assert torch.allclose(changed_values[:, 3:], values[:, 3:], atol=1e-5)
    assert not torch.allclose(changed_values[:, :3], values[:, :3], atol=1e-3)


def test_decoder_is_causal_over_agents_within_a_timestep() -> None:
    """Agent i's conditional does not read the actions of agents i..N-1 at the same timestep, and does read earlier ones."""
    torch.manual_seed(4)
    guider = make_guider(DISCRETE)
    torch.nn.init.normal_(guider.action_head[-1].weight)  # the initial head (gain 0.01) makes every effect tiny
    rollout, _ = act_rollout(guider, DISCRETE, torch.zeros(2, 3, dtype=torch.bool), None)
    dist, _ = guider(rollout)
    changed = rollout.clone()
    action = changed.get(ACTION).clone()
    action[:, 2, 1] = (action[:, 2, 1] + 1) % DISCRETE.action_dim  # agent 1's action at the last timestep
    changed.set(ACTION, action)
    changed_dist, _ = guider(changed)
    assert torch.allclose(changed_dist.logits[:, :, :2], dist.logits[:, :, :2], atol=1e-6)  # agents 0, 1: unaffected
    assert not torch.allclose(changed_dist.logits[:, 2, 2], dist.logits[:, 2, 2], atol=1e-4)  # agent 2 reads it


def test_sable_reads_rollouts_only_and_checks_its_settings() -> None:
    guider = make_guider(DISCRETE)
    with pytest.raises(ValueError, match="rollouts"):
        guider(TensorDict({OBSERVATION: torch.zeros(4, 3, 5), IS_INIT: torch.zeros(4, 1, dtype=torch.bool)}, batch_size=[4]))
    with pytest.raises(Exception, match="decay_scaling"):
        SableGuider(decay_scaling=1.5)
    with pytest.raises(Exception, match="chunk_steps"):
        SableGuider(chunk_steps=0)
