"""Tests of GAE, advantage normalisation and ValueNorm (ALGORITHMS.md section 1).

References are written independently here: GAE as a scalar Python loop over floats, the
normalisations with ``torch.mean`` / ``torch.std(unbiased=False)`` computed directly.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from hcmarl.advantages import ValueNorm, generalized_advantage_estimate, normalize_advantage
from hcmarl.keys import ADVANTAGE
from hcmarl.value_sources import Advantages


def reference_gae(reward, value, next_value, terminated, done, gamma, lam):
    """GAE with Python floats: one env, one agent, backwards over time.

    ``reward``, ``terminated``, ``done`` are ``[E, T, 1]``; ``value`` and ``next_value`` are
    ``[E, T, N]``. A termination stops bootstrapping; every done (termination or
    truncation) stops the recursion; a truncation bootstraps from ``next_value``.
    """
    E, T, N = value.shape
    out = [[[0.0] * N for _ in range(T)] for _ in range(E)]
    for e in range(E):
        for i in range(N):
            running = 0.0
            for t in reversed(range(T)):
                r = float(reward[e, t, 0])
                v = float(value[e, t, i])
                nv = float(next_value[e, t, i])
                if bool(terminated[e, t, 0]):
                    target = r
                else:
                    target = r + gamma * nv
                delta = target - v
                if bool(done[e, t, 0]):
                    running = delta
                else:
                    running = delta + gamma * lam * running
                out[e][t][i] = running
    return torch.tensor(out, dtype=torch.float64)


def _random_batch(seed: int = 0, E: int = 3, T: int = 17, N: int = 2):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(E, T, 1, generator=g)
    value = torch.randn(E, T, N, generator=g)
    next_value = torch.randn(E, T, N, generator=g)
    terminated = torch.zeros(E, T, 1, dtype=torch.bool)
    truncated = torch.zeros(E, T, 1, dtype=torch.bool)
    # env 0: a termination mid-episode, then a truncation at the last step
    terminated[0, 5] = True
    truncated[0, T - 1] = True
    # env 1: consecutive dones (termination then truncation then termination), termination at the end
    terminated[1, 3] = True
    truncated[1, 4] = True
    terminated[1, 5] = True
    terminated[1, T - 1] = True
    # env 2: truncations only, two in a row, none at the end
    truncated[2, 8] = True
    truncated[2, 9] = True
    done = terminated | truncated
    return reward, value, next_value, terminated, done


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.5), (0.97, 1.0)])
def test_gae_matches_scalar_loop(gamma: float, lam: float) -> None:
    reward, value, next_value, terminated, done = _random_batch()
    assert (done & ~terminated).any() and terminated.any()  # both kinds of done present
    got = generalized_advantage_estimate(reward, value, next_value, terminated, done, gamma, lam)
    expected = reference_gae(reward, value, next_value, terminated, done, gamma, lam)
    assert got.shape == value.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_gae_truncation_bootstraps_and_termination_does_not() -> None:
    E, T, N = 1, 4, 1
    reward = torch.zeros(E, T, 1)
    value = torch.zeros(E, T, N)
    next_value = torch.full((E, T, N), 10.0)
    done = torch.zeros(E, T, 1, dtype=torch.bool)
    done[0, -1] = True
    terminated = torch.zeros_like(done)
    truncated_adv = generalized_advantage_estimate(reward, value, next_value, terminated, done, 0.5, 1.0)
    terminated_adv = generalized_advantage_estimate(reward, value, next_value, done.clone(), done, 0.5, 1.0)
    assert truncated_adv[0, -1, 0].item() == pytest.approx(5.0)  # 0 + 0.5 * 10 - 0
    assert terminated_adv[0, -1, 0].item() == pytest.approx(0.0)


@pytest.mark.parametrize("truncation", ["bootstrap", "terminal"])
def test_advantages_read_time_limits_as_their_truncation_setting(truncation: str) -> None:
    """``Advantages(truncation=...)`` on a rollout with terminations and truncations: ``bootstrap`` is the reference loop
    with the env's terminations, ``terminal`` the reference loop with every done a termination (the MAGPO code's GAE)."""
    reward, value, next_value, terminated, done = _random_batch()
    batch = TensorDict({("next", "reward"): reward, ("next", "terminated"): terminated, ("next", "done"): done}, batch_size=[3, 17])
    Advantages(lambda _: (value, next_value), 0.99, 0.95, "none", truncation=truncation)(batch)  # type: ignore[arg-type]
    ends = terminated if truncation == "bootstrap" else done
    torch.testing.assert_close(batch.get(ADVANTAGE).double(), reference_gae(reward, value, next_value, ends, done, 0.99, 0.95), atol=1e-5, rtol=1e-5)


def test_gae_lambda_one_is_monte_carlo_return_minus_value() -> None:
    gamma, T = 0.99, 12
    g = torch.Generator().manual_seed(1)
    reward = torch.randn(1, T, 1, generator=g)
    value = torch.randn(1, T, 1, generator=g)
    next_value = torch.cat([value[:, 1:], torch.randn(1, 1, 1, generator=g)], dim=1)  # last one must be ignored
    terminated = torch.zeros(1, T, 1, dtype=torch.bool)
    terminated[0, -1] = True
    done = terminated.clone()
    got = generalized_advantage_estimate(reward, value, next_value, terminated, done, gamma, 1.0)
    rewards = reward.flatten().tolist()
    returns = [sum(gamma**k * rewards[t + k] for k in range(T - t)) for t in range(T)]
    expected = torch.tensor(returns) - value.flatten()
    torch.testing.assert_close(got.flatten(), expected, atol=1e-5, rtol=1e-5)


def test_normalize_advantage_batch() -> None:
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(40, 3, generator=g) * torch.tensor([1.0, 5.0, 0.2]) + torch.tensor([3.0, -2.0, 0.5])
    got = normalize_advantage(adv, per_agent=False)
    expected = (adv - adv.mean()) / adv.std(unbiased=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert got.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    # the columns are NOT each standardised in batch mode (they had different scales)
    assert got.std(dim=0, unbiased=False).sub(1.0).abs().max().item() > 0.1


@pytest.mark.parametrize("shape", [(40, 3), (4, 10, 3)])
def test_normalize_advantage_per_agent(shape) -> None:
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor([1.0, 5.0, 0.2])
    shift = torch.tensor([3.0, -2.0, 0.5])
    adv = torch.randn(*shape, generator=g) * scale + shift
    got = normalize_advantage(adv, per_agent=True)
    flat = adv.reshape(-1, shape[-1])
    expected = (adv - flat.mean(dim=0)) / flat.std(dim=0, unbiased=False)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got_flat = got.reshape(-1, shape[-1])
    torch.testing.assert_close(got_flat.mean(dim=0), torch.zeros(shape[-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_flat.std(dim=0, unbiased=False), torch.ones(shape[-1]), atol=1e-5, rtol=0)


def _stats(vn: ValueNorm) -> tuple[float, float]:
    """(mean, std) of a ValueNorm through its public maps: denormalize(0) = mean, denormalize(1) = mean + std."""
    zero, one = vn.denormalize(torch.tensor(0.0)), vn.denormalize(torch.tensor(1.0))
    return zero.item(), (one - zero).item()


@pytest.mark.parametrize("beta", [0.99999, 0.99])
def test_value_norm_tracks_stream(beta: float) -> None:
    g = torch.Generator().manual_seed(4)
    vn = ValueNorm(beta=beta)
    for _ in range(300):
        vn.update(3.0 + 2.0 * torch.randn(256, generator=g))
    mean, std = _stats(vn)
    assert mean == pytest.approx(3.0, abs=0.05)
    assert std**2 == pytest.approx(4.0, rel=0.05)


def test_value_norm_normalize_denormalize_inverse() -> None:
    g = torch.Generator().manual_seed(5)
    vn = ValueNorm()
    for _ in range(5):
        vn.update(-1.0 + 4.0 * torch.randn(64, generator=g))
    x = torch.randn(7, 3, generator=g) * 10
    torch.testing.assert_close(vn.denormalize(vn.normalize(x)), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vn.normalize(vn.denormalize(x)), x, atol=1e-5, rtol=1e-5)
    # and it is not the identity
    assert not torch.allclose(vn.normalize(x), x, atol=1e-2)


def test_value_norm_beta_zero_standardises_last_batch() -> None:
    g = torch.Generator().manual_seed(6)
    vn = ValueNorm(beta=0.0)
    vn.update(torch.randn(500, generator=g) * 10 + 100)  # stats are replaced by the next update
    x = 5.0 + 3.0 * torch.randn(1000, generator=g)
    vn.update(x)
    y = vn.normalize(x)
    assert y.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert y.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_value_norm_variance_clamp() -> None:
    vn = ValueNorm(beta=0.0)
    x = torch.tensor([1.0, 1.02, 0.98, 1.0])  # var 2e-4 < 1e-2
    vn.update(x)
    mean, std = _stats(vn)
    assert mean == pytest.approx(1.0, abs=1e-5)
    assert std == pytest.approx(0.1, rel=1e-4)  # sqrt(1e-2)
