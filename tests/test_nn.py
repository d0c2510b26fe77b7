"""Tests of the vectorised per-agent layers, action distributions, actors and critics
(ALGORITHMS.md section 1, "Policies"), against per-agent loops and hand-written formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from hcmarl.envs.base import STATE, EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.nn import AgentLinear, AgentMLP, AgentValue, CentralValue, MLPActor
from hcmarl.nn.distributions import diagonal_gaussian, masked_categorical

N_AGENTS = 3


def _info(kind: str, action_dim: int = 5, obs_dim: int = 6, mask: bool = False) -> EnvInfo:
    return EnvInfo(
        name=f"test/{kind}",
        n_agents=N_AGENTS,
        obs_dim=obs_dim,
        state_dim=N_AGENTS * obs_dim,
        action_kind=kind,
        action_dim=action_dim,
        max_steps=10,
        has_action_mask=mask,
    )


def _td(B: int, info: EnvInfo, mask: torch.Tensor | None = None, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, info.n_agents, info.obs_dim, generator=g)
    agents = {"observation": obs}
    if mask is not None:
        agents["action_mask"] = mask
    return TensorDict({"agents": TensorDict(agents, [B, info.n_agents]), STATE: torch.randn(B, info.state_dim, generator=g)}, [B])


# ---------------------------------------------------------------- layers


def test_agent_linear_per_agent_matches_loop() -> None:
    torch.manual_seed(0)
    layer = AgentLinear(4, 3, n_groups=N_AGENTS)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 5, N_AGENTS, 4)
    y = layer(x)
    assert y.shape == (2, 5, N_AGENTS, 3)
    for i in range(N_AGENTS):
        expected = x[..., i, :] @ layer.weight[i] + layer.bias[i]
        torch.testing.assert_close(y[..., i, :], expected, atol=1e-6, rtol=1e-6)
    # the agents really have different weights
    assert not torch.allclose(layer.weight[0], layer.weight[1])


def test_agent_linear_shared_weights() -> None:
    torch.manual_seed(1)
    layer = AgentLinear(4, 3, n_groups=1)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(7, N_AGENTS, 4)
    y = layer(x)
    assert y.shape == (7, N_AGENTS, 3)
    for i in range(N_AGENTS):
        torch.testing.assert_close(y[:, i], x[:, i] @ layer.weight[0] + layer.bias[0], atol=1e-6, rtol=1e-6)
    # identical inputs on two agents give identical outputs
    x[:, 1] = x[:, 0]
    y = layer(x)
    torch.testing.assert_close(y[:, 1], y[:, 0])


@pytest.mark.parametrize("n_groups", [1, 3])
def test_agent_linear_init_is_orthogonal(n_groups: int) -> None:
    torch.manual_seed(2)
    gain = 0.5
    layer = AgentLinear(6, 4, n_groups=n_groups, gain=gain)
    for g in range(n_groups):
        w = layer.weight[g].detach()  # [in, out], columns orthogonal with norm gain
        torch.testing.assert_close(w.T @ w, gain**2 * torch.eye(4), atol=1e-5, rtol=1e-5)
    assert torch.all(layer.bias == 0)


def test_agent_mlp_equals_each_agent_alone_in_value_and_gradient() -> None:
    """All agents at once (agent-major activations) give each agent's own MLP on its own input, ``agent=i``, and the
    same parameter gradients, for inputs with two leading dimensions."""
    torch.manual_seed(5)
    mlp = AgentMLP(4, [8, 6], 3, n_groups=N_AGENTS, activation="relu")
    with torch.no_grad():
        for module in mlp.modules():
            if isinstance(module, AgentLinear):
                module.bias.normal_()
    x = torch.randn(2, 5, N_AGENTS, 4)
    together = mlp(x)
    assert together.shape == (2, 5, N_AGENTS, 3)
    together.square().sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    alone = torch.stack([mlp(x[..., i : i + 1, :], agent=i).squeeze(-2) for i in range(N_AGENTS)], dim=-2)
    alone.square().sum().backward()
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-6)
    for got, expected in zip(grads, [p.grad for p in mlp.parameters()], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_agent_mlp_per_agent_parameters_are_independent() -> None:
    torch.manual_seed(3)
    mlp = AgentMLP(4, [8, 8], 2, n_groups=N_AGENTS)
    x = torch.randn(5, N_AGENTS, 4)
    before = mlp(x).detach()
    with torch.no_grad():
        for module in mlp.modules():
            if isinstance(module, AgentLinear):
                module.weight[0].add_(torch.randn_like(module.weight[0]))
                module.bias[0].add_(1.0)
    after = mlp(x).detach()
    assert not torch.allclose(after[:, 0], before[:, 0])
    torch.testing.assert_close(after[:, 1:], before[:, 1:], atol=0, rtol=0)


def test_agent_mlp_gradient_reaches_only_own_agent() -> None:
    torch.manual_seed(4)
    mlp = AgentMLP(4, [8], 2, n_groups=N_AGENTS)
    out = mlp(torch.randn(5, N_AGENTS, 4))
    out[:, 1].sum().backward()
    for module in mlp.modules():
        if isinstance(module, AgentLinear):
            assert torch.all(module.weight.grad[0] == 0) and torch.all(module.weight.grad[2] == 0)
            assert module.weight.grad[1].abs().sum() > 0


# ---------------------------------------------------------------- distributions


def _mask_and_logits(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, N_AGENTS, 6, generator=g) * 3
    mask = torch.rand(4, N_AGENTS, 6, generator=g) > 0.5
    mask[..., 2] = True  # at least one action available everywhere
    mask[0, 0] = False
    mask[0, 0, 4] = True  # a single available action
    return logits, mask


def test_masked_categorical_masked_probability_exactly_zero() -> None:
    logits, mask = _mask_and_logits()
    for dtype in (torch.float32, torch.float64):
        dist = masked_categorical(logits.to(dtype), mask)
        assert dist.batch_shape == (4, N_AGENTS)
        assert torch.all(dist.probs[~mask] == 0.0)
        assert torch.all(dist.probs[mask] > 0.0)
        assert dist.probs[0, 0, 4].item() == 1.0


def test_masked_categorical_never_samples_masked_actions() -> None:
    torch.manual_seed(6)
    logits, mask = _mask_and_logits()
    logits[~mask] += 20.0  # masked actions would dominate if the mask were ignored
    dist = masked_categorical(logits, mask)
    samples = dist.sample((10_000,))  # [S, 4, N]
    taken = mask.unsqueeze(0).expand(10_000, -1, -1, -1).gather(-1, samples.unsqueeze(-1)).squeeze(-1)
    assert taken.all()


def test_masked_categorical_log_prob_and_entropy_over_available_actions() -> None:
    logits, mask = _mask_and_logits()
    dist = masked_categorical(logits, mask)
    B, N, K = logits.shape
    actions = torch.zeros(B, N, dtype=torch.long)
    expected_lp = torch.zeros(B, N)
    expected_ent = torch.zeros(B, N)
    g = torch.Generator().manual_seed(7)
    for b in range(B):
        for i in range(N):
            avail = [k for k in range(K) if mask[b, i, k]]
            z = [float(logits[b, i, k]) for k in avail]
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            p = [math.exp(v - lse) for v in z]
            j = int(torch.randint(len(avail), (1,), generator=g))
            actions[b, i] = avail[j]
            expected_lp[b, i] = z[j] - lse
            expected_ent[b, i] = -sum(pk * (v - lse) for pk, v in zip(p, z, strict=False))
    torch.testing.assert_close(dist.log_prob(actions), expected_lp, atol=1e-5, rtol=1e-5)
    entropy = dist.entropy()
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, expected_ent, atol=1e-5, rtol=1e-5)
    assert entropy[0, 0].item() == pytest.approx(0.0, abs=1e-6)


def test_masked_categorical_without_mask_is_plain_softmax() -> None:
    logits, _ = _mask_and_logits()
    dist = masked_categorical(logits)
    torch.testing.assert_close(dist.probs, torch.softmax(logits, -1))


def test_diagonal_gaussian_log_prob_matches_hand_formula() -> None:
    g = torch.Generator().manual_seed(8)
    B, N, A = 5, N_AGENTS, 2
    mean = torch.randn(B, N, A, generator=g)
    log_std = torch.randn(N, A, generator=g) * 0.5
    dist = diagonal_gaussian(mean, log_std)
    assert dist.batch_shape == (B, N) and dist.event_shape == (A,)
    x = torch.randn(B, N, A, generator=g)
    std = log_std.exp()
    per_dim = -((x - mean) ** 2) / (2 * std**2) - log_std - 0.5 * math.log(2 * math.pi)
    lp = dist.log_prob(x)
    assert lp.shape == (B, N)
    torch.testing.assert_close(lp, per_dim.sum(-1), atol=1e-5, rtol=1e-5)
    entropy = (0.5 * math.log(2 * math.pi * math.e) + log_std).sum(-1).expand(B, N)
    torch.testing.assert_close(dist.entropy(), entropy, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- actors


@pytest.mark.parametrize("share_params", [True, False])
def test_mlp_actor_categorical(share_params: bool) -> None:
    torch.manual_seed(9)
    info = _info("categorical", action_dim=5, mask=True)
    actor = MLPActor(hidden_sizes=(16,), share_params=share_params)
    actor.build(info)
    B = 4
    mask = torch.ones(B, N_AGENTS, 5, dtype=torch.bool)
    mask[:, 1, 3:] = False
    dist = actor(_td(B, info, mask))
    assert isinstance(dist, torch.distributions.Categorical)
    assert dist.batch_shape == (B, N_AGENTS)
    assert torch.all(dist.probs[:, 1, 3:] == 0)
    actions = dist.sample()
    assert actions.shape == (B, N_AGENTS)
    assert dist.log_prob(actions).shape == (B, N_AGENTS)
    # without a mask in the TensorDict every action is available
    dist = actor(_td(B, info))
    assert torch.all(dist.probs > 0)


@pytest.mark.parametrize("share_params", [True, False])
def test_mlp_actor_continuous(share_params: bool) -> None:
    torch.manual_seed(10)
    info = _info("continuous", action_dim=2)
    actor = MLPActor(hidden_sizes=(16,), share_params=share_params, log_std_init=-0.5)
    actor.build(info)
    B = 4
    dist = actor(_td(B, info))
    assert dist.batch_shape == (B, N_AGENTS) and dist.event_shape == (2,)
    torch.testing.assert_close(dist.stddev, torch.full((B, N_AGENTS, 2), math.exp(-0.5)))
    a = dist.sample()
    assert a.shape == (B, N_AGENTS, 2)
    assert dist.log_prob(a).shape == (B, N_AGENTS)
    assert dist.entropy().shape == (B, N_AGENTS)
    # the log-std is a trained parameter
    assert any(p is actor.log_std for p in actor.parameters())


def test_mlp_actor_categorical_on_continuous_env_is_config_error() -> None:
    actor = MLPActor(distribution="categorical")
    with pytest.raises(ConfigError, match="distribution"):
        actor.build(_info("continuous"))
    actor = MLPActor(distribution="gaussian")
    with pytest.raises(ConfigError, match="distribution"):
        actor.build(_info("categorical"))


def test_mlp_actor_agent_id_adds_n_inputs() -> None:
    info = _info("categorical", obs_dim=6)
    plain, with_id = MLPActor(hidden_sizes=(8,)), MLPActor(hidden_sizes=(8,), agent_id=True)
    plain.build(info)
    with_id.build(info)
    in_plain = plain.net[0].weight.shape[1]
    in_id = with_id.net[0].weight.shape[1]
    assert in_plain == info.obs_dim
    assert in_id == in_plain + info.n_agents
    # with a shared actor and identical observations, the agent id makes the agents' outputs differ
    td = _td(2, info)
    td["agents", "observation"] = td["agents", "observation"][:, :1].expand(-1, N_AGENTS, -1).clone()
    with torch.no_grad():
        with_id.net[-1].weight.normal_()
        probs_id = with_id(td).probs
        probs_plain = plain(td).probs
    torch.testing.assert_close(probs_plain[:, 1], probs_plain[:, 0])
    assert not torch.allclose(probs_id[:, 1], probs_id[:, 0])


def test_mlp_actor_requires_build() -> None:
    with pytest.raises(RuntimeError, match="build"):
        MLPActor()(_td(1, _info("categorical")))


# ---------------------------------------------------------------- critics


def test_central_value_from_state() -> None:
    torch.manual_seed(11)
    info = _info("categorical")
    critic = CentralValue(hidden_sizes=(16,))
    critic.build(info)
    B = 5
    td = _td(B, info)
    v = critic(td)
    assert v.shape == (B, N_AGENTS)
    torch.testing.assert_close(v, v[:, :1].expand(B, N_AGENTS), atol=0, rtol=0)
    assert not torch.allclose(v[0, 0], v[1, 0])
    # reads the state, not the observations
    td2 = td.clone()
    td2["agents", "observation"] = torch.randn_like(td["agents", "observation"])
    torch.testing.assert_close(critic(td2), v)
    td2[STATE] = torch.randn_like(td[STATE])
    assert not torch.allclose(critic(td2), v)


@pytest.mark.parametrize("share_params", [True, False])
def test_agent_value_from_observations(share_params: bool) -> None:
    torch.manual_seed(12)
    info = _info("categorical")
    critic = AgentValue(hidden_sizes=(16,), share_params=share_params)
    critic.build(info)
    B = 5
    td = _td(B, info)
    v = critic(td)
    assert v.shape == (B, N_AGENTS)
    # agent i's value depends only on o_i
    td2 = td.clone()
    td2["agents", "observation"][:, 1] += 1.0
    v2 = critic(td2)
    torch.testing.assert_close(v2[:, [0, 2]], v[:, [0, 2]])
    assert not torch.allclose(v2[:, 1], v[:, 1])
    # shared parameters: the same observation gives the same value on every agent
    td3 = td.clone()
    td3["agents", "observation"] = td["agents", "observation"][:, :1].expand(-1, N_AGENTS, -1).clone()
    v3 = critic(td3)
    if share_params:
        torch.testing.assert_close(v3[:, 1], v3[:, 0])
    else:
        assert not torch.allclose(v3[:, 1], v3[:, 0])
