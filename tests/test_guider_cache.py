"""Agent-by-agent decoding that reuses the earlier agents' work (MAT's key/value cache, Sable's running retention sums)
samples what re-running the decoder over the whole prefix samples: the same actions, log-probabilities and next state.
Sable's chunkwise rollout values equal the step-by-step replay."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ACTION, ACTION_MASK, IS_INIT, OBSERVATION
from hcmarl.nn import MATGuider, SableGuider
from hcmarl.nn.distributions import select_agents
from hcmarl.nn.guider import AgentTokenGuider
from hcmarl.nn.retention import retention_masks

DISCRETE = EnvInfo(name="toy", n_agents=5, obs_dim=6, state_dim=30, action_kind="categorical", action_dim=4, max_steps=10, has_action_mask=True)
CONTINUOUS = EnvInfo(name="toy", n_agents=4, obs_dim=6, state_dim=24, action_kind="continuous", action_dim=2, max_steps=10)


def start_tokens(guider: AgentTokenGuider, m: int) -> torch.Tensor:
    tokens = torch.zeros(m, guider.n_agents, guider.action_dim + 1)
    tokens[:, 0, 0] = 1.0
    return tokens


def reference_mat_sample(guider: MATGuider, td: TensorDict, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MAT's acting before the cache: for agent i, the decoder re-runs over the prefix 0..i."""
    encodings = guider.encode(td)
    mask = guider.flat_mask(td)
    tokens = start_tokens(guider, encodings.shape[0])
    actions, log_probs = [], []
    for i in range(guider.n_agents):
        prefix = slice(0, i + 1)
        prefix_mask = None if mask is None else mask[:, prefix]
        agent = select_agents(guider.decode(tokens[:, prefix], encodings[:, prefix], prefix_mask), slice(i, i + 1))
        action = agent.mode if deterministic else agent.sample()
        actions.append(action)
        log_probs.append(agent.log_prob(action))
        if i + 1 < guider.n_agents:
            guider.write_token(tokens, i + 1, action[:, 0])
    return torch.cat(actions, dim=1), torch.cat(log_probs, dim=1)


def reference_sable_sample(guider: SableGuider, td: TensorDict, deterministic: bool, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sable's acting before the running sums: for agent i, the decoder re-runs over the prefix 0..i (retention masks of
    i + 1 tokens); the full stream (i = N - 1) gives the next state."""
    x = guider.embed_observations(td)
    m = x.shape[0]
    is_init = td.get(IS_INIT).reshape(m, 1)
    masks = retention_masks(is_init, guider.n_agents, guider.kappa)
    encodings, encoder_state = guider.encode(x, masks, state[:, :, 0], carry=True)
    mask = guider.flat_mask(td)
    tokens = start_tokens(guider, m)
    actions, log_probs = [], []
    for i in range(guider.n_agents):
        last = i + 1 == guider.n_agents
        prefix_masks = masks if last else retention_masks(is_init, i + 1, guider.kappa)
        out, decoder_state = guider.decode(tokens[:, : i + 1], encodings[:, : i + 1], prefix_masks, state[:, :, 1:], carry=last)
        agent = guider.distribution(out[:, i : i + 1], None if mask is None else mask[:, i : i + 1])
        action = agent.mode if deterministic else agent.sample()
        actions.append(action)
        log_probs.append(agent.log_prob(action))
        if not last:
            guider.write_token(tokens, i + 1, action[:, 0])
    next_state = torch.cat([encoder_state.unsqueeze(2), decoder_state], dim=2)
    return torch.cat(actions, dim=1), torch.cat(log_probs, dim=1), next_state


def one_step(info: EnvInfo, envs: int) -> TensorDict:
    td = TensorDict({OBSERVATION: torch.randn(envs, info.n_agents, info.obs_dim), IS_INIT: torch.rand(envs, 1) < 0.3}, batch_size=[envs])
    if info.categorical:
        mask = torch.rand(envs, info.n_agents, info.action_dim) > 0.4
        mask[..., 0] = True
        td.set(ACTION_MASK, mask)
    return td


def build(guider: AgentTokenGuider, info: EnvInfo) -> AgentTokenGuider:
    guider.build(info)
    torch.nn.init.normal_(guider.action_head[-1].weight)  # the initial head (gain 0.01) makes every action nearly uniform
    return guider.eval()


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "mode"])
@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_mat_cached_decoding_equals_prefix_decoding(info: EnvInfo, deterministic: bool) -> None:
    torch.manual_seed(0)
    guider = build(MATGuider(embed_dim=16, n_blocks=2, n_heads=2), info)
    td = one_step(info, 64)
    torch.manual_seed(1)
    action, log_prob, state = guider.sample(td, deterministic)
    torch.manual_seed(1)
    expected_action, expected_log_prob = reference_mat_sample(guider, td, deterministic)
    assert state is None
    assert torch.equal(action, expected_action) if info.categorical else torch.allclose(action, expected_action, atol=1e-5)
    assert torch.allclose(log_prob, expected_log_prob, atol=1e-5)
    # and the sampled actions' log-probabilities are the teacher-forced ones
    teacher_forced = td.clone()
    teacher_forced.set(ACTION, action)
    assert torch.allclose(guider(teacher_forced)[0].log_prob(action), log_prob, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "mode"])
@pytest.mark.parametrize("info", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_sable_running_sums_equal_prefix_decoding(info: EnvInfo, deterministic: bool) -> None:
    """The same actions, log-probabilities and next state, from a nonzero state, with some envs starting an episode."""
    torch.manual_seed(0)
    guider = build(SableGuider(embed_dim=16, n_blocks=2, n_heads=2, decay_scaling=0.9), info)
    td = one_step(info, 64)
    state = torch.randn_like(guider.initial_state(64, torch.device("cpu")))
    torch.manual_seed(1)
    action, log_prob, next_state = guider.sample(td, deterministic, state)
    torch.manual_seed(1)
    expected_action, expected_log_prob, expected_state = reference_sable_sample(guider, td, deterministic, state)
    assert torch.equal(action, expected_action) if info.categorical else torch.allclose(action, expected_action, atol=1e-5)
    assert torch.allclose(log_prob, expected_log_prob, atol=1e-5)
    assert torch.allclose(next_state, expected_state, atol=1e-5)


def reference_sable_rollout_values(guider: SableGuider, td: TensorDict, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sable's rollout values before the chunkwise form: replay the rollout one step at a time, two encoder passes per
    step: the step's observation (advancing the state), then its next observation read with the state after the step
    as a step that continues the episode (state kept)."""
    b, t = td.batch_size
    n = guider.n_agents
    is_init = td.get(IS_INIT).reshape(b, t)
    observations = guider.embed_observations(td).reshape(b, t, n, -1)
    next_observations = guider.embed_observations(td.get("next")).reshape(b, t, n, -1)
    continuing = retention_masks(torch.zeros_like(is_init[:, :1]), n, guider.kappa)
    encoder_state = state[:, :, 0]
    values, next_values = [], []
    for step in range(t):
        masks = retention_masks(is_init[:, step : step + 1], n, guider.kappa)
        encodings, encoder_state = guider.encode(observations[:, step], masks, encoder_state, carry=True)
        next_encodings, _ = guider.encode(next_observations[:, step], continuing, encoder_state, carry=False)
        values.append(guider.value_head(encodings))
        next_values.append(guider.value_head(next_encodings))
    return torch.stack(values, dim=1).reshape(b, t, n), torch.stack(next_values, dim=1).reshape(b, t, n)


@pytest.mark.parametrize("chunk_steps", [1, 3, 4, None])
def test_sable_chunkwise_rollout_values_equal_the_step_by_step_replay(chunk_steps: int | None) -> None:
    """Values of every observation and next observation from a nonzero state, with episode starts inside chunks, on their
    boundaries and at step 0, next observations unrelated to the following step's (terminal ones), and a last chunk
    shorter than the rest (chunks of 3 over 8 steps)."""
    torch.manual_seed(3)
    guider = build(SableGuider(embed_dim=16, n_blocks=2, n_heads=2, decay_scaling=0.9, chunk_steps=chunk_steps), DISCRETE)
    is_init = torch.tensor(
        [
            [False, False, True, False, False, True, False, False],
            [False, True, False, False, True, False, False, True],
            [False, False, False, False, False, False, False, False],
            [True, False, False, True, False, False, True, False],
        ]
    )
    b, t = is_init.shape
    td = TensorDict(
        {
            OBSERVATION: torch.randn(b, t, DISCRETE.n_agents, DISCRETE.obs_dim),
            IS_INIT: is_init.unsqueeze(-1),
            ("next", OBSERVATION): torch.randn(b, t, DISCRETE.n_agents, DISCRETE.obs_dim),
        },
        batch_size=[b, t],
    )
    state = torch.randn_like(guider.initial_state(b, torch.device("cpu")))
    values, next_values = guider.rollout_values(td, state)
    expected_values, expected_next_values = reference_sable_rollout_values(guider, td, state)
    assert torch.allclose(values, expected_values, atol=1e-5)
    assert torch.allclose(next_values, expected_next_values, atol=1e-5)
