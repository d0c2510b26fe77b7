"""The on-policy datamodule's own computations (``datamodules/onpolicy.py``)."""

from __future__ import annotations

import torch
from torchrl.collectors import Collector
from torchrl.envs import RewardSum, TransformedEnv

from hcmarl.datamodules.onpolicy import RunningReturns
from hcmarl.envs import make_env
from hcmarl.envs.base import REWARD


def _reference_returns(reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Running return of each env, element by element: the sum of rewards since the step after its last done."""
    out = torch.zeros_like(reward)
    for e in range(reward.shape[0]):
        total = 0.0
        for t in range(reward.shape[1]):
            total += float(reward[e, t, 0])
            out[e, t, 0] = total
            if bool(done[e, t, 0]):
                total = 0.0
    return out


def test_running_returns_carry_over_rollouts() -> None:
    torch.manual_seed(0)
    reward, done = torch.randn(5, 50, 1), torch.rand(5, 50, 1) < 0.1
    running = RunningReturns()
    pieces = [running(reward[:, a:b], done[:, a:b]) for a, b in ((0, 17), (17, 18), (18, 50))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), _reference_returns(reward, done))


def test_running_returns_equal_torchrls_reward_sum_on_collected_batches() -> None:
    """Batches of 64 steps from CoordSum (episodes of 100 steps, so episodes span batches), through a collector."""
    env = TransformedEnv(make_env("coordsum/3x10", num_envs=3, seed=0), RewardSum(in_keys=[REWARD], out_keys=["summed"]))
    collector = Collector(env, None, frames_per_batch=3 * 64, total_frames=3 * 64 * 4)
    running = RunningReturns()
    batches = list(collector)
    collector.shutdown()
    assert batches[0].batch_size == torch.Size([3, 64])
    for batch in batches:
        computed = running(batch.get(("next", REWARD)), batch.get(("next", "done")))
        torch.testing.assert_close(computed, batch.get(("next", "summed")))
    assert any(batch.get(("next", "done")).any() for batch in batches)
