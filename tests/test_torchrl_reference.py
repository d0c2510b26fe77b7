"""Reference tests of hcmarl's GAE, ValueNorm and advantage normalisation against TorchRL 0.14 (issue 20).

What TorchRL 0.14 offers, and what is compared here:

- GAE: ``torchrl.objectives.value.MultiAgentGAE`` (a ``GAE`` subclass that broadcasts team
  reward / done / terminated ``[*B, T, 1]`` over the agent dim of per-agent values
  ``[*B, T, N, 1]``), ``torchrl.objectives.value.GAE``, and the functionals
  ``torchrl.objectives.value.functional.generalized_advantage_estimate`` (a Python loop) and
  ``vec_generalized_advantage_estimate`` (a convolution). All four are compared with
  ``hcmarl.advantages.generalized_advantage_estimate``, advantage and value target.
- Value normalisation: ``torchrl.modules.PopArtValueNorm`` is the debiased exponential running
  mean / mean-of-squares of HARL's and MAPPO's ValueNorm, the same update as hcmarl's
  ``ValueNorm``; compared buffer by buffer and through ``normalize`` / ``denormalize``.
  ``RunningValueNorm`` (Welford, no decay) and ``PercentileValueNorm`` (DreamerV3 quantiles)
  compute other statistics and are not compared; nor are the env transforms ``VecNorm`` /
  ``RewardScaling``, which normalise observations and rewards, not value targets.
  ValueNorm is also checked against an independent numpy float64 reference of the
  ALGORITHMS.md section 1 formulas.
- Advantage normalisation: ``GAE(average_gae=True)`` (whole batch) and
  ``MultiAgentGAE(average_gae=True)`` (per agent) against ``normalize_advantage``.

Layout: hcmarl takes ``[E, T, N]`` values with the team reward and flags ``[E, T, 1]``
(broadcast over agents); TorchRL's ``MultiAgentGAE`` wants a trailing feature dim on the
values, ``[E, T, N, 1]``, and a tensordict of batch ``[E, T]`` (time is the last batch dim).

Differences found, each pinned by a test below:

- Truncation bootstrap: both bootstrap a truncation from ``next_value`` by default. TorchRL's
  ``auto_reset_env=True`` instead bootstraps from V(s_t), the value of the last valid state;
  that equals hcmarl with ``next_value`` replaced by ``value`` at truncated steps.
- Precision: TorchRL keeps Python-float ``gamma`` / ``lmbda`` as float32 (module buffers, and
  ``int * float`` in the functionals), so with float64 data it agrees only to ~1e-6 unless
  ``gamma`` / ``lmbda`` are given as float64 tensors, which the exact comparisons do.
- ValueNorm variance floor: hcmarl clamps the variance at 1e-2 (HARL), PopArtValueNorm at
  ``epsilon`` (1e-5); they differ only when the running variance is below 1e-2.
- Advantage std: hcmarl divides by the population std + 1e-8, TorchRL by the Bessel-corrected
  std (clamped at 1e-4); equal after the factor sqrt(n / (n - 1)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import PopArtValueNorm
from torchrl.objectives.value import GAE, MultiAgentGAE
from torchrl.objectives.value.functional import (
    generalized_advantage_estimate as torchrl_gae_loop,
)
from torchrl.objectives.value.functional import (
    vec_generalized_advantage_estimate as torchrl_gae_vec,
)

from hcmarl.advantages import (
    ValueNorm,
    generalized_advantage_estimate,
    normalize_advantage,
)

F64 = torch.float64
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
SHAPES = [(1, 1, 1), (1, 9, 3), (3, 17, 4), (5, 40, 2), (2, 64, 7)]
GAMMA_LAMBDA = [(0.99, 0.95), (0.9, 0.5), (0.97, 1.0), (1.0, 0.9)]


def _rollout(E: int, T: int, N: int, seed: int, team_reward: bool = True) -> Batch:
    """Random float64 rollout in hcmarl's layout with terminations and truncations inside it.

    Returns ``(reward, value, next_value, terminated, truncated, done)``: reward ``[E, T, 1]``
    (team) or ``[E, T, N]`` (per agent), values ``[E, T, N]``, flags ``[E, T, 1]``.
    """
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(E, T, 1 if team_reward else N, generator=g, dtype=F64)
    value = torch.randn(E, T, N, generator=g, dtype=F64)
    next_value = torch.randn(E, T, N, generator=g, dtype=F64)
    u = torch.rand(E, T, 1, generator=g)
    terminated = u < 0.1
    truncated = (u >= 0.1) & (u < 0.2)
    if T >= 4:  # a termination and a truncation inside every env, and back-to-back dones
        terminated[:, T // 3] = True
        truncated[:, T // 3] = False
        truncated[:, T // 3 + 1] = True
        terminated[:, T // 3 + 1] = False
    done = terminated | truncated
    return reward, value, next_value, terminated, truncated, done


def _tensordict(reward, value, next_value, terminated, truncated, done) -> TensorDict:
    """TorchRL's layout: batch ``[E, T]``, values ``[E, T, N, 1]``, team signals ``[E, T, 1]`` (or per agent ``[E, T, N, 1]``)."""
    E, T, N = value.shape
    if reward.shape[-1] == N and N > 1:  # per-agent reward: give it the feature dim too
        reward = reward.unsqueeze(-1)
    return TensorDict(
        {
            "state_value": value.unsqueeze(-1),
            "next": {
                "state_value": next_value.unsqueeze(-1),
                "reward": reward,
                "done": done,
                "terminated": terminated,
                "truncated": truncated,
            },
        },
        batch_size=[E, T],
    )


def _per_agent_tensordict(reward, value, next_value, terminated, done) -> TensorDict:
    """Values ``[E, T, N]`` as plain features, with the team signals expanded to them (what TorchRL's plain ``GAE`` reads)."""
    E, T, N = value.shape
    return TensorDict(
        {
            "state_value": value,
            "next": {
                "state_value": next_value,
                "reward": reward.expand(E, T, N),
                "done": done.expand(E, T, N),
                "terminated": terminated.expand(E, T, N),
            },
        },
        batch_size=[E, T],
    )


def _multi_agent_gae(batch: Batch, gamma: float, lam: float, vectorized: bool, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchRL ``MultiAgentGAE`` on ``batch``; returns ``(advantage, value_target)`` as ``[E, T, N]``.

    ``gamma`` / ``lmbda`` go in as float64 tensors: as Python floats TorchRL stores them as float32.
    """
    estimator = MultiAgentGAE(
        gamma=torch.tensor(gamma, dtype=F64),
        lmbda=torch.tensor(lam, dtype=F64),
        value_network=None,
        vectorized=vectorized,
        **kwargs,
    )
    out = estimator(_tensordict(*batch))
    return out["advantage"].squeeze(-1), out["value_target"].squeeze(-1)


def _hcmarl_gae(batch: Batch, gamma: float, lam: float) -> torch.Tensor:
    reward, value, next_value, terminated, _, done = batch
    return generalized_advantage_estimate(reward, value, next_value, terminated, done, gamma, lam)


def _assert_differs(actual: torch.Tensor, expected: torch.Tensor, **tol: float) -> None:
    """The same ``assert_close`` comparison must fail on a deliberately wrong input."""
    with pytest.raises(AssertionError):
        torch.testing.assert_close(actual, expected, **tol)


# ---- GAE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vectorized", [True, False], ids=["vec", "loop"])
@pytest.mark.parametrize("gamma,lam", GAMMA_LAMBDA)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gae_matches_multi_agent_gae(shape: tuple[int, int, int], gamma: float, lam: float, vectorized: bool) -> None:
    """hcmarl GAE vs ``MultiAgentGAE`` (team reward broadcast over agents): advantage and value target."""
    batch = _rollout(*shape, seed=sum(shape))
    advantage = _hcmarl_gae(batch, gamma, lam)
    expected_advantage, expected_target = _multi_agent_gae(batch, gamma, lam, vectorized)
    assert advantage.shape == expected_advantage.shape == shape
    torch.testing.assert_close(advantage, expected_advantage)
    torch.testing.assert_close(advantage + batch[1], expected_target)  # hcmarl's lambda-return, VALUE_TARGET


@pytest.mark.parametrize("vectorized", [True, False], ids=["vec", "loop"])
def test_gae_per_agent_reward_matches_multi_agent_gae(vectorized: bool) -> None:
    """hcmarl GAE vs ``MultiAgentGAE`` with a per-agent reward ``[E, T, N]`` (passed through, not broadcast)."""
    batch = _rollout(4, 30, 3, seed=7, team_reward=False)
    advantage = _hcmarl_gae(batch, 0.99, 0.95)
    expected, _ = _multi_agent_gae(batch, 0.99, 0.95, vectorized)
    torch.testing.assert_close(advantage, expected)


@pytest.mark.parametrize("gamma,lam", GAMMA_LAMBDA)
def test_gae_matches_torchrl_functionals(gamma: float, lam: float) -> None:
    """hcmarl GAE vs TorchRL's functional GAE, loop and vectorised, on team signals expanded to ``[E, T, N, 1]``.

    The functionals need every input in one shape; time is dim 1, so ``time_dim=1`` (they move it to -2).
    """
    reward, value, next_value, terminated, _, done = batch = _rollout(3, 25, 4, seed=3)
    E, T, N = value.shape
    per_agent = [x.expand(E, T, N).unsqueeze(-1) for x in (value, next_value, reward, done, terminated)]
    v, nv, r, d, term = per_agent
    advantage = _hcmarl_gae(batch, gamma, lam)
    g, l = torch.tensor(gamma, dtype=F64), torch.tensor(lam, dtype=F64)
    for fn in (torchrl_gae_loop, torchrl_gae_vec):
        expected, target = fn(g, l, v, nv, r, d, term, time_dim=1)
        torch.testing.assert_close(advantage, expected.squeeze(-1))
        torch.testing.assert_close(advantage + value, target.squeeze(-1))


def test_gae_single_agent_gae_module() -> None:
    """hcmarl GAE vs TorchRL's plain ``GAE`` module with values ``[E, T, N]`` as features and signals expanded to them."""
    reward, value, next_value, terminated, _, done = batch = _rollout(3, 20, 2, seed=11)
    E, T, N = value.shape
    td = _per_agent_tensordict(reward, value, next_value, terminated, done)
    estimator = GAE(gamma=torch.tensor(0.99, dtype=F64), lmbda=torch.tensor(0.95, dtype=F64), value_network=None)
    torch.testing.assert_close(_hcmarl_gae(batch, 0.99, 0.95), estimator(td)["advantage"])


def test_gae_python_float_coefficients_are_float32_in_torchrl() -> None:
    """hcmarl GAE vs ``MultiAgentGAE`` given Python floats: TorchRL rounds gamma / lambda to float32, so ~1e-6 only."""
    batch = _rollout(3, 40, 4, seed=5)
    advantage = _hcmarl_gae(batch, 0.99, 0.95)
    out = MultiAgentGAE(gamma=0.99, lmbda=0.95, value_network=None)(_tensordict(*batch))
    assert out["advantage"].dtype == F64
    torch.testing.assert_close(advantage, out["advantage"].squeeze(-1), rtol=1e-5, atol=1e-5)
    _assert_differs(advantage, out["advantage"].squeeze(-1), rtol=1e-9, atol=1e-9)  # the float32 rounding is visible


def test_gae_comparison_detects_wrong_inputs() -> None:
    """The ``MultiAgentGAE`` comparison fails for lambda off by 0.05, truncation treated as termination, or dones ignored."""
    reward, value, next_value, terminated, truncated, done = batch = _rollout(3, 30, 3, seed=1)
    assert truncated.any() and terminated.any()
    expected, _ = _multi_agent_gae(batch, 0.99, 0.95, vectorized=True)
    torch.testing.assert_close(_hcmarl_gae(batch, 0.99, 0.95), expected)
    _assert_differs(_hcmarl_gae(batch, 0.99, 0.90), expected)
    _assert_differs(generalized_advantage_estimate(reward, value, next_value, done, done, 0.99, 0.95), expected)
    _assert_differs(generalized_advantage_estimate(reward, value, next_value, terminated, terminated, 0.99, 0.95), expected)
    _assert_differs(generalized_advantage_estimate(reward, value, next_value, terminated, done, 0.98, 0.95), expected)


@pytest.mark.parametrize("vectorized", [True, False], ids=["vec", "loop"])
def test_gae_truncation_convention_vs_auto_reset_env(vectorized: bool) -> None:
    """TorchRL ``auto_reset_env=True`` bootstraps a truncation from V(s_t), hcmarl (and TorchRL's default) from ``next_value``.

    hcmarl with ``next_value`` replaced by ``value`` at truncated steps equals TorchRL's ``auto_reset_env=True``;
    hcmarl as it is does not.
    """
    reward, value, next_value, terminated, truncated, done = batch = _rollout(3, 30, 3, seed=2)
    expected, _ = _multi_agent_gae(batch, 0.99, 0.95, vectorized, auto_reset_env=True)
    bootstrap_from_value = torch.where(truncated, value, next_value)
    got = generalized_advantage_estimate(reward, value, bootstrap_from_value, terminated, done, 0.99, 0.95)
    torch.testing.assert_close(got, expected)
    _assert_differs(_hcmarl_gae(batch, 0.99, 0.95), expected)


# ---- ValueNorm -------------------------------------------------------------------------------


def _targets(n: int, shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """``n`` float64 value-target batches whose location and scale drift between updates."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=F64) * (1.0 + 2.0 * k) + 3.0 * k - 4.0 for k in range(n)]


def _numpy_value_norm(
    batches: list[torch.Tensor], beta: float, epsilon: float = 1e-5, var_floor: float = 1e-2
) -> tuple[float, float, float, float, float]:
    """ALGORITHMS.md section 1 / HARL ValueNorm in numpy float64: returns (m, s, d, mean, var) after all updates.

    m <- beta m + (1 - beta) mean(x);  s <- beta s + (1 - beta) mean(x^2);  d <- beta d + (1 - beta);
    mean = m / max(d, eps);  var = max(s / max(d, eps) - mean^2, var_floor).
    """
    m = s = d = 0.0
    for x in batches:
        a = x.numpy().astype(np.float64)
        m = beta * m + (1 - beta) * float(np.mean(a))
        s = beta * s + (1 - beta) * float(np.mean(a * a))
        d = beta * d + (1 - beta)
    mean = m / max(d, epsilon)
    var = max(s / max(d, epsilon) - mean * mean, var_floor)
    return m, s, d, mean, var


@pytest.mark.parametrize("beta", [0.99999, 0.99, 0.9])
@pytest.mark.parametrize("shape", [(8, 16, 3), (4, 1), (2, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_value_norm_matches_popart(beta: float, shape: tuple[int, ...]) -> None:
    """hcmarl ``ValueNorm`` vs TorchRL ``PopArtValueNorm``: buffers after each update, normalize and denormalize (float64)."""
    ours = ValueNorm(beta=beta).double()
    theirs = PopArtValueNorm(shape=1, beta=beta).double()
    probe = torch.linspace(-20.0, 20.0, 41, dtype=F64)
    for x in _targets(6, shape, seed=len(shape)):
        ours.update(x)
        theirs.update(x.unsqueeze(-1))  # PopArtValueNorm reduces every dim but its trailing ``shape``
        torch.testing.assert_close(ours.running_mean, theirs.running_mean[0])
        torch.testing.assert_close(ours.running_mean_sq, theirs.running_mean_sq[0])
        torch.testing.assert_close(ours.debiasing_term, theirs.debiasing_term)
        assert float(theirs.scale()) ** 2 > 1e-2  # above both variance floors, where they agree
        torch.testing.assert_close(ours.normalize(probe), theirs.normalize(probe.unsqueeze(-1)).squeeze(-1))
        torch.testing.assert_close(ours.denormalize(probe), theirs.denormalize(probe.unsqueeze(-1)).squeeze(-1))


def test_value_norm_matches_popart_float32_defaults() -> None:
    """hcmarl ``ValueNorm()`` vs ``PopArtValueNorm(shape=1)`` with both defaults (beta 0.99999, eps 1e-5) in float32."""
    ours, theirs = ValueNorm(), PopArtValueNorm(shape=1)
    assert (ours.beta, ours.epsilon) == (theirs.beta, theirs.epsilon)
    probe = torch.linspace(-5.0, 5.0, 11)
    for x in _targets(20, (16, 8, 3), seed=4):
        x = x.float()
        ours.update(x)
        theirs.update(x.unsqueeze(-1))
    torch.testing.assert_close(ours.normalize(probe), theirs.normalize(probe.unsqueeze(-1)).squeeze(-1))


def test_value_norm_variance_floor_differs_from_popart() -> None:
    """hcmarl floors the variance at 1e-2 (HARL), PopArtValueNorm at epsilon 1e-5: they differ on near-constant targets."""
    ours = ValueNorm(beta=0.9).double()
    theirs = PopArtValueNorm(shape=1, beta=0.9).double()
    x = 3.0 + 1e-3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)  # var ~ 1e-6
    ours.update(x)
    theirs.update(x.unsqueeze(-1))
    probe = torch.tensor([2.0, 3.0, 4.0], dtype=F64)
    mean = ours.running_mean / ours.debiasing_term
    torch.testing.assert_close(ours.normalize(probe), (probe - mean) / 0.1)  # sqrt(1e-2)
    torch.testing.assert_close(theirs.normalize(probe.unsqueeze(-1)).squeeze(-1), (probe - mean) / math.sqrt(1e-5))
    _assert_differs(ours.normalize(probe), theirs.normalize(probe.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("beta", [0.99999, 0.99, 0.5])
def test_value_norm_matches_numpy_reference(beta: float) -> None:
    """hcmarl ``ValueNorm`` vs the ALGORITHMS.md section 1 running mean/var in numpy float64, after each update."""
    norm = ValueNorm(beta=beta).double()
    batches = _targets(8, (6, 10, 3), seed=9)
    probe = torch.linspace(-30.0, 30.0, 13, dtype=F64)
    for k in range(1, len(batches) + 1):
        norm.update(batches[k - 1])
        m, s, d, mean, var = _numpy_value_norm(batches[:k], beta)
        torch.testing.assert_close(norm.running_mean, torch.tensor(m, dtype=F64))
        torch.testing.assert_close(norm.running_mean_sq, torch.tensor(s, dtype=F64))
        torch.testing.assert_close(norm.debiasing_term, torch.tensor(d, dtype=F64))
        torch.testing.assert_close(norm.normalize(probe), (probe - mean) / math.sqrt(var))
        torch.testing.assert_close(norm.denormalize(probe), probe * math.sqrt(var) + mean)


def test_value_norm_reference_detects_wrong_statistics() -> None:
    """The numpy and PopArt comparisons fail for beta off by a little, or for a reference without debiasing."""
    batches = _targets(5, (6, 10, 3), seed=9)
    norm = ValueNorm(beta=0.99).double()
    wrong_beta = PopArtValueNorm(shape=1, beta=0.985).double()
    for x in batches:
        norm.update(x)
        wrong_beta.update(x.unsqueeze(-1))
    probe = torch.linspace(-30.0, 30.0, 13, dtype=F64)
    m, _, _, mean, var = _numpy_value_norm(batches, 0.99)
    torch.testing.assert_close(norm.normalize(probe), (probe - mean) / math.sqrt(var))
    _, _, _, mean_b, var_b = _numpy_value_norm(batches, 0.985)
    _assert_differs(norm.normalize(probe), (probe - mean_b) / math.sqrt(var_b))
    _assert_differs(norm.normalize(probe), wrong_beta.normalize(probe.unsqueeze(-1)).squeeze(-1))
    _assert_differs(torch.tensor(m, dtype=F64), torch.tensor(mean, dtype=F64))  # forgetting to debias (d < 1) shows


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_value_norm_round_trip(dtype: torch.dtype) -> None:
    """``denormalize(normalize(x)) == x`` and ``normalize(denormalize(y)) == y`` after updates."""
    norm = ValueNorm(beta=0.99).to(dtype)
    for x in _targets(4, (32, 3), seed=6):
        norm.update(x.to(dtype))
    x = (torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=F64) * 7 + 2).to(dtype)
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)
    torch.testing.assert_close(norm.normalize(norm.denormalize(x)), x)
    normalized = norm.normalize(x)
    assert not torch.allclose(normalized, x)  # the round trip is not trivially the identity


# ---- advantage normalisation -----------------------------------------------------------------


def _bessel(n: int) -> float:
    """TorchRL divides by the unbiased std, hcmarl by the population std: multiply TorchRL's result by this."""
    return math.sqrt(n / (n - 1))


@pytest.mark.parametrize("shape", [(3, 17, 4), (2, 50, 2)], ids=lambda s: "x".join(map(str, s)))
def test_per_agent_advantage_normalization_matches_multi_agent_gae(shape: tuple[int, int, int]) -> None:
    """``normalize_advantage(per_agent=True)`` vs ``MultiAgentGAE(average_gae=True)`` (per-agent standardisation)."""
    batch = _rollout(*shape, seed=12)
    E, T, _ = shape
    advantage = _hcmarl_gae(batch, 0.99, 0.95)
    standardized, _ = _multi_agent_gae(batch, 0.99, 0.95, vectorized=True, average_gae=True)
    ours = normalize_advantage(advantage, per_agent=True)
    torch.testing.assert_close(ours, standardized * _bessel(E * T))
    _assert_differs(normalize_advantage(advantage, per_agent=False), standardized * _bessel(E * T))
    _assert_differs(ours, standardized)  # the Bessel factor is visible


def test_global_advantage_normalization_matches_gae_average() -> None:
    """``normalize_advantage(per_agent=False)`` vs TorchRL ``GAE(average_gae=True)`` (one mean/std over everything)."""
    reward, value, next_value, terminated, _, done = batch = _rollout(3, 21, 4, seed=13)
    E, T, N = value.shape
    td = _per_agent_tensordict(reward, value, next_value, terminated, done)
    estimator = GAE(gamma=torch.tensor(0.99, dtype=F64), lmbda=torch.tensor(0.95, dtype=F64), value_network=None, average_gae=True)
    standardized = estimator(td)["advantage"]
    ours = normalize_advantage(_hcmarl_gae(batch, 0.99, 0.95))
    torch.testing.assert_close(ours, standardized * _bessel(E * T * N))
    _assert_differs(normalize_advantage(_hcmarl_gae(batch, 0.99, 0.95), per_agent=True), standardized * _bessel(E * T * N))
