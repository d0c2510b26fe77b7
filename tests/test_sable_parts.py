"""The MAGPO paper's Sable (Mava's SableNetwork) as settings of SableGuider: each part against a hand-computed reference,
and the paper's guider's training (chunkwise) form against its acting (recurrent, agent by agent) form."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from test_retention import CHUNKED_STARTS, act_rollout, reference_retention
from torch import nn

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, IS_INIT, LOG_PROB, OBSERVATION
from hcmarl.nn import SableGuider
from hcmarl.nn.layers import RMSNorm, SwiGLU
from hcmarl.nn.retention import MultiScaleRetention, episode_timesteps, head_decays, retention_masks, timestep_encoding
from hcmarl.nn.transformer import FeedForward

DISCRETE = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="categorical", action_dim=4, max_steps=10, has_action_mask=True)
CONTINUOUS = EnvInfo(name="toy", n_agents=3, obs_dim=5, state_dim=15, action_kind="continuous", action_dim=2, max_steps=10)


def test_rms_norm_is_x_over_its_root_mean_square_times_the_gain() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(10)
    assert [name for name, _ in norm.named_parameters()] == ["weight"] and torch.equal(norm.weight, torch.ones(10))
    assert norm.eps == 1e-6  # Flax's nn.RMSNorm default, which Mava's Sable uses
    nn.init.normal_(norm.weight)
    x = torch.randn(4, 7, 10) * 3.0 + 1.0
    expected = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_swiglu_is_the_gated_product_without_biases() -> None:
    torch.manual_seed(1)
    ff = SwiGLU(6)
    assert {name: tuple(p.shape) for name, p in ff.named_parameters()} == {
        "gate.weight": (6, 6),  # hidden width = embed width (Mava: SwiGLU(embed_dim, embed_dim))
        "linear.weight": (6, 6),
        "out.weight": (6, 6),
    }
    wide = SwiGLU(6, hidden_dim=9)
    x = torch.randn(5, 2, 6)
    w_gate, w_linear, w_out = wide.gate.weight.T, wide.linear.weight.T, wide.out.weight.T  # [6, 9], [6, 9], [9, 6]
    z = x @ w_gate
    expected = ((z * torch.sigmoid(z)) * (x @ w_linear)) @ w_out
    assert torch.allclose(wide(x), expected, atol=1e-6)


def test_zero_matrices_make_a_swiglu_output_zero_with_zero_gradients() -> None:
    """Mava's initialisation, computed out: every matrix zero gives a zero output and a zero gradient for every matrix
    (why the paper's code's SwiGLU stays 0, and why ``zero_init`` may freeze it)."""
    ff = SwiGLU(6)
    with torch.no_grad():
        for p in ff.parameters():
            p.zero_()
    x = torch.randn(5, 6, requires_grad=True)
    out = ff(x)
    assert torch.equal(out, torch.zeros_like(out))
    (out.sum() + (out * x).sum()).backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ff.parameters())


def test_a_zero_initialised_swiglu_is_frozen_at_zero_and_refuses_trained_weights() -> None:
    """Its output and its matrices' gradients are zeros (as computed out above), no gradient reaches its input, and a
    state dict with non-zero matrices is refused."""
    ff = SwiGLU(6, zero_init=True)
    x = torch.randn(5, 6, requires_grad=True)
    out = ff(x)
    assert torch.equal(out, torch.zeros(5, 6))
    (x.sum() + (out * x).sum()).backward()
    assert all(torch.equal(p, torch.zeros_like(p)) and torch.equal(p.grad, torch.zeros_like(p)) for p in ff.parameters())
    assert torch.equal(x.grad, torch.ones(5, 6))
    blocks = nn.Sequential(ff)
    blocks.load_state_dict(blocks.state_dict())  # zeros load
    trained = {key: torch.randn_like(value) for key, value in blocks.state_dict().items()}
    with pytest.raises(ConfigError, match="feed_forward_init: default"):
        blocks.load_state_dict(trained)


def test_the_frozen_swiglu_trains_the_paper_guider_as_the_computed_one_bit_for_bit() -> None:
    """The paper's guider with its zero SwiGLUs frozen (``ZeroSwiGLU``), against the same guider computing them: the same
    log-probabilities, values and, after three fused-Adam steps with a gradient-norm clip that binds (the guider's
    update), the same parameters and Adam moments, exactly."""
    torch.manual_seed(6)
    frozen = SableGuider.paper(embed_dim=16, n_blocks=2, n_heads=2)
    frozen.build(DISCRETE)
    computed = copy.deepcopy(frozen)
    for module in computed.modules():
        if isinstance(module, SwiGLU):
            module.frozen_at_zero = False
    rollout, _ = act_rollout(frozen, DISCRETE, CHUNKED_STARTS, None)
    advantages = torch.randn(*CHUNKED_STARTS.shape, DISCRETE.n_agents)
    moments = []
    for guider in (frozen, computed):
        optimizer = torch.optim.Adam(guider.parameters(), lr=1e-2, eps=1e-5, fused=True)
        for _ in range(3):
            dist, values = guider(rollout, None)
            loss = -(dist.log_prob(rollout.get(ACTION)) * advantages).mean() + values.square().mean()
            optimizer.zero_grad()
            loss.backward()
            assert nn.utils.clip_grad_norm_(guider.parameters(), 0.05) > 0.05  # the clip binds
            optimizer.step()
        moments.append([(state["exp_avg"], state["exp_avg_sq"]) for state in optimizer.state_dict()["state"].values()])
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), computed.state_dict().values(), strict=True))
    assert len(moments[0]) == len(list(frozen.parameters()))
    assert all(torch.equal(a, b) for pair, other in zip(*moments, strict=True) for a, b in zip(pair, other, strict=True))
    dist, values = frozen(rollout, None)
    computed_dist, computed_values = computed(rollout, None)
    assert torch.equal(dist.logits, computed_dist.logits) and torch.equal(values, computed_values)


def test_timestep_encoding_values() -> None:
    """Channel 2i is sin(t / 10000^(2i/E)), channel 2i + 1 is cos(t / 10000^(2i/E)), written out for E = 6."""
    timesteps = torch.tensor([0, 1, 7, 100])
    encoding = timestep_encoding(timesteps, 6, torch.float64)
    assert encoding.shape == (4, 6)
    assert torch.equal(encoding[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64))  # t = 0
    for row, t in enumerate([0, 1, 7, 100]):
        expected = []
        for i in range(3):
            rate = 10000.0 ** (-2 * i / 6)
            expected += [math.sin(t * rate), math.cos(t * rate)]
        assert torch.allclose(encoding[row], torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_episode_timesteps_count_from_each_episode_start() -> None:
    """0 at an episode start, one more per step after it; before the rollout's first start, the carried count goes on."""
    start = torch.tensor([4, 0, 9, 2])
    expected = torch.tensor(
        [
            [4, 5, 0, 1, 2, 0, 1, 2],  # starts at 2 and 5
            [0, 0, 1, 2, 0, 1, 2, 0],  # starts at 1, 4 and 7
            [9, 10, 11, 12, 13, 14, 15, 16],  # no start: the episode goes on from 9
            [0, 1, 2, 0, 1, 2, 0, 1],  # starts at 0, 3 and 6: the carried 2 is never read
        ]
    )
    assert torch.equal(episode_timesteps(CHUNKED_STARTS, start), expected)


@pytest.mark.parametrize("n_heads", [1, 2, 3, 5])
@pytest.mark.parametrize("decay_scaling", [1.0, 0.8])
def test_head_decays_are_mavas(n_heads: int, decay_scaling: float) -> None:
    """Mava: kappa = decay_scaling * (1 - exp(linspace(log 1/32, log 1/512, H))); one head is kappa = decay_scaling * 31/32."""
    if n_heads == 1:
        exponents = [5.0]
    else:
        exponents = [5.0 + 4.0 * h / (n_heads - 1) for h in range(n_heads)]
    expected = torch.tensor([decay_scaling * (1.0 - 2.0**-e) for e in exponents], dtype=torch.float64)
    assert torch.allclose(head_decays(n_heads, decay_scaling).double(), expected, atol=1e-7)
    mava = decay_scaling * (1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), n_heads, dtype=torch.float64)))
    assert torch.allclose(head_decays(n_heads, decay_scaling).double(), mava, atol=1e-7)


def test_the_paper_guider_has_the_papers_parts() -> None:
    guider = SableGuider.paper()
    guider.build(DISCRETE)
    assert (guider.embed_dim, guider.n_blocks, guider.n_heads, guider.decay_scaling) == (64, 1, 1, 0.8)
    assert torch.allclose(guider.kappa, torch.tensor([0.8 * 31 / 32]))  # 0.775
    modules = list(guider.modules())
    assert not any(isinstance(m, nn.LayerNorm) for m in modules)
    assert sum(isinstance(m, RMSNorm) for m in modules) == 5 + 2 + 3  # embeddings and heads, encoder block, decoder block
    assert not any(isinstance(m, FeedForward) for m in modules) and sum(isinstance(m, SwiGLU) for m in modules) == 2
    assert all(torch.equal(p, torch.zeros_like(p)) for m in modules if isinstance(m, SwiGLU) for p in m.parameters())
    assert all(m.gate_input == "source" and m.head_norm == "mava" for m in modules if isinstance(m, MultiScaleRetention))
    assert guider.positional_encoding == "timestep"
    assert guider.initial_state(2, torch.device("cpu")).shape == (2, 1 * 3 * 1 * 64 * 64 + 1)  # retention states, then the timestep
    assert SableGuider.paper(n_heads=2).n_heads == 2  # any setting can be overridden


def test_defaults_keep_the_first_sable() -> None:
    guider = SableGuider()
    guider.build(DISCRETE)
    modules = list(guider.modules())
    assert not any(isinstance(m, (RMSNorm, SwiGLU)) for m in modules)
    assert all(m.gate_input == "query" and m.head_norm == "per_head" for m in modules if isinstance(m, MultiScaleRetention))
    assert guider.initial_state(2, torch.device("cpu")).shape == (2, 1, 3, 1, 64, 64)


def test_settings_are_checked() -> None:
    for key, value in [("norm", "batch"), ("feed_forward", "relu"), ("positional_encoding", "rope"), ("retention_gate", "key")]:
        with pytest.raises(Exception, match=f"model.guider.network.{key}"):
            SableGuider(**{key: value})
    with pytest.raises(Exception, match="feed_forward_init"):
        SableGuider(feed_forward_init="zeros")  # a GELU feed-forward: zeros are the SwiGLU's (Mava's) only
    with pytest.raises(Exception, match="even embed_dim"):
        SableGuider(embed_dim=5, n_heads=1, positional_encoding="timestep")
    with pytest.raises(Exception, match="model.guider.network.retention_head_norm"):
        SableGuider(retention_head_norm="layer")
    with pytest.raises(Exception, match="retention_head_norm: mava splits each head.s 6 channels into n_heads=4 groups"):
        SableGuider(embed_dim=24, n_heads=4, retention_head_norm="mava")


def mava_head_norm(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Mava's norm of the retention heads' outputs by hand: ``y`` ``[..., H, d]``; each head's d channels in H groups of
    d / H, each group minus its mean over its biased standard deviation (eps 1e-6), then the affine ``[d]`` shared by
    the heads (Mava: ``GroupNorm(num_groups=H)`` on ``y.reshape(-1, d)``)."""
    heads = y.shape[-2]
    groups = y.unflatten(-1, (heads, -1))  # [..., H, H groups, d / H]
    mean = groups.mean(-1, keepdim=True)
    variance = ((groups - mean) ** 2).mean(-1, keepdim=True)
    return ((groups - mean) / torch.sqrt(variance + 1e-6)).flatten(-2) * weight + bias


def test_mava_head_norm_normalises_groups_within_each_head_with_one_shared_affine(float64) -> None:
    torch.manual_seed(3)
    embed, heads = 16, 2
    layer = MultiScaleRetention(embed, heads, gate="source", head_norm="mava")
    assert {n: tuple(p.shape) for n, p in layer.group_norm.named_parameters()} == {"weight": (8,), "bias": (8,)}  # [d], shared
    with torch.no_grad():
        layer.group_norm.weight.normal_()
        layer.group_norm.bias.normal_()
    y = torch.randn(3, heads, 5, embed // heads) * 2.0 + 0.5  # [B, H, L, d]: the heads' outputs
    gate = torch.randn(3, 5, embed)
    normed = mava_head_norm(y.transpose(1, 2), layer.group_norm.weight, layer.group_norm.bias).flatten(-2)
    assert torch.allclose(layer._output(gate, y), layer.out(nn.functional.silu(gate) * normed), atol=1e-12)
    per_head = MultiScaleRetention(embed, heads, gate="source")
    per_head.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("group_norm")}, strict=False)
    assert not torch.allclose(per_head._output(gate, y), layer._output(gate, y), atol=1e-3)  # RetNet's per-head norm differs


@pytest.mark.parametrize("scale_keys", [True, False], ids=["scaled-keys", "mava-keys"])
@pytest.mark.parametrize("head_norm", ["per_head", "mava"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_source_gated_retention_with_positions_equals_its_definition(float64, causal: bool, head_norm: str, scale_keys: bool) -> None:
    """Cross-retention (query and source differ) with the gate on the source and a position added to both inputs, against
    the token-pair loop (keys scaled by d^-1/2 or, as Mava's, not); and the position and the gate's input each change the output."""
    torch.manual_seed(2)
    n_agents, steps, heads, embed = 2, 4, 2, 8
    layer = MultiScaleRetention(embed, heads, gate="source", head_norm=head_norm, scale_keys=scale_keys)
    kappa = head_decays(heads, 0.8)
    is_init = torch.tensor([[False, False, True, False], [True, False, False, False]])
    query, source = torch.randn(2, steps * n_agents, embed), torch.randn(2, steps * n_agents, embed)
    position = timestep_encoding(episode_timesteps(is_init, torch.tensor([3, 0])), embed).repeat_interleave(n_agents, dim=1)
    state = torch.randn(2, heads, embed // heads, embed // heads)
    masks = retention_masks(is_init, n_agents, kappa)
    decay = masks.causal if causal else masks.full
    out, _ = layer(query, source, decay, masks, state, position=position)
    expected = reference_retention(layer, query, source, is_init, n_agents, kappa, state, causal, position)
    assert torch.allclose(out, expected, atol=1e-12)
    assert not torch.allclose(out, layer(query, source, decay, masks, state)[0], atol=1e-3)
    layer.gate_input = "query"
    assert not torch.allclose(out, layer(query, source, decay, masks, state, position=position)[0], atol=1e-3)


@pytest.mark.parametrize("mava_details", [True, False])
def test_mava_details_normalise_every_encoder_blocks_input(float64, mava_details: bool) -> None:
    """Mava's encoder: x <- block(norm(x)) for every block, one input norm shared by the blocks (the first norm is the
    embedding's); without mava_details the blocks follow one another directly."""
    torch.manual_seed(5)
    guider = SableGuider.paper(embed_dim=16, n_blocks=3, n_heads=2, mava_details=mava_details, feed_forward_init="default")
    guider.build(DISCRETE)
    with torch.no_grad():
        for p in guider.parameters():
            p.add_(0.3 * torch.randn_like(p))
    is_init = torch.tensor([[True, False, False], [False, True, False]])
    x = torch.randn(2, 3 * DISCRETE.n_agents, 16)
    state = torch.randn(2, 3, 2, 8, 8)
    masks = retention_masks(is_init, DISCRETE.n_agents, guider.kappa)
    encoded, _ = guider.encode(x, masks, state, carry=False)
    expected = x
    for j, block in enumerate(guider.encoder):
        block_input = guider.encoder_norm(expected) if mava_details and j > 0 else expected
        expected, _ = block(block_input, masks, state[:, j], False)
    assert torch.allclose(encoded, expected, atol=1e-12)
    other = x
    for j, block in enumerate(guider.encoder):
        renormalise = j > 0 and not mava_details  # the other structure
        other, _ = block(guider.encoder_norm(other) if renormalise else other, masks, state[:, j], False)
    assert not torch.allclose(encoded, other, atol=1e-3)  # it gives other encodings


def paper_guider(info: EnvInfo, small: bool, **overrides) -> SableGuider:
    """The paper's guider (at its size, or 2 blocks x 2 heads x 16), every parameter perturbed so that every part shows:
    the SwiGLU trains (``feed_forward_init="default"``), the norms' gains are not ones, the action head's gain not 0.01."""
    sizes = {"embed_dim": 16, "n_blocks": 2, "n_heads": 2} if small else {}
    guider = SableGuider.paper(feed_forward_init="default", **sizes, **overrides)
    guider.build(info)
    with torch.no_grad():
        for p in guider.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return guider


def start_state(guider: SableGuider, envs: int) -> torch.Tensor:
    """A random retention state and a carried timestep per env."""
    state = torch.randn_like(guider.initial_state(envs, torch.device("cpu")))
    state[:, -1] = torch.arange(envs) * 5.0 + 3.0
    return state


@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
@pytest.mark.parametrize("chunk_steps", [None, 3], ids=["one-chunk", "chunks-of-3"])
@pytest.mark.parametrize("small", [False, True], ids=["paper-size", "2-blocks-2-heads"])
def test_paper_guider_training_form_equals_its_acting_form(float64, info: EnvInfo, chunk_steps: int | None, small: bool) -> None:
    """All paper parts on: acting one timestep at a time, agent by agent with the running sums, from a random state with a
    carried timestep, across episode starts inside the rollout, gives the log-probabilities the chunkwise training pass
    gives; the replayed values equal the training pass's; a next observation that continues the episode has the next
    step's value; the state after acting counts the episode's timestep. Float64, to 1e-10."""
    torch.manual_seed(3)
    guider = paper_guider(info, small, chunk_steps=chunk_steps)
    envs, steps = CHUNKED_STARTS.shape
    start = start_state(guider, envs)
    rollout, final = act_rollout(guider, info, CHUNKED_STARTS, start)
    dist, values = guider(rollout, start)
    assert torch.allclose(dist.log_prob(rollout.get(ACTION)), rollout.get(LOG_PROB), atol=1e-10, rtol=0)
    following = torch.randn(envs, 1, info.n_agents, info.obs_dim)
    rollout.set(("next", OBSERVATION), torch.cat([rollout.get(OBSERVATION)[:, 1:], following], dim=1))
    replayed, next_values = guider.rollout_values(rollout, start)
    assert torch.allclose(values, replayed, atol=1e-10, rtol=0)
    continues = ~CHUNKED_STARTS[:, 1:]
    assert torch.allclose(next_values[:, :-1][continues], values[:, 1:][continues], atol=1e-10, rtol=0)
    expected_timestep = episode_timesteps(CHUNKED_STARTS, start[:, -1].long())[:, -1] + 1
    assert torch.equal(guider.split_state(final)[1], expected_timestep.to(final.dtype))


def test_positional_encoding_restarts_at_each_episode_start() -> None:
    """The carried timestep changes every output before an env's first episode start and none after it; and without an
    episode start it does change them (the encoding is read)."""
    torch.manual_seed(4)
    guider = paper_guider(DISCRETE, small=True)
    is_init = torch.tensor([[False, False, True, False, False], [False, False, False, False, False]])
    rollout, _ = act_rollout(guider, DISCRETE, is_init, None)
    state = start_state(guider, 2)
    moved = state.clone()
    moved[:, -1] += 11.0  # the same retention state, another timestep
    dist, values = guider(rollout, state)
    moved_dist, moved_values = guider(rollout, moved)
    assert torch.allclose(moved_dist.logits[0, 2:], dist.logits[0, 2:], atol=1e-6)
    assert torch.allclose(moved_values[0, 2:], values[0, 2:], atol=1e-6)
    assert not torch.allclose(moved_values[0, :2], values[0, :2], atol=1e-4)
    assert not torch.allclose(moved_values[1], values[1], atol=1e-4)
    # acting from either state: the step at the start reads timestep 0 (the same action distribution), the one before it does not
    observation, starts = rollout.get(OBSERVATION)[:, 2], torch.ones(2, 1, dtype=torch.bool)
    td = TensorDict({OBSERVATION: observation, ACTION_MASK: torch.ones(2, 3, 4, dtype=torch.bool), IS_INIT: starts}, batch_size=[2])
    torch.manual_seed(5)
    _, log_prob, next_state = guider.sample(td, state=state)
    torch.manual_seed(5)
    _, moved_log_prob, moved_next_state = guider.sample(td, state=moved)
    assert torch.allclose(log_prob, moved_log_prob, atol=1e-6)
    assert torch.equal(guider.split_state(next_state)[1], torch.ones(2))
    assert torch.allclose(next_state, moved_next_state, atol=1e-6)


def test_the_counted_timestep_is_the_envs_step_count() -> None:
    """What Mava encodes is the env's step count (CoordSum's ``step_count``: 0 at reset, one more per step); the guider's
    own count, carried in its state, is the same through episode ends and auto-resets."""
    from torchrl.envs import InitTracker, TransformedEnv

    from hcmarl.envs import make_env

    env = TransformedEnv(make_env("coordsum/3x10", num_envs=2, seed=0, episode_length=4), InitTracker())
    guider = SableGuider.paper(embed_dim=8)
    guider.build(env.info)
    td, state = env.reset(), None
    for _ in range(10):
        action, _, state = guider.sample(td, state=state)
        read = guider.split_state(state)[1] - 1  # the timestep this step was encoded with
        assert torch.equal(read, td.get("step_count").flatten().to(read.dtype))
        td.set(ACTION, action)
        _, td = env.step_and_maybe_reset(td)
