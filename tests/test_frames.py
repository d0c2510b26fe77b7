"""Frames count over all ranks: the datamodule's budget, iterations and resume at a world size (docs/scale.md).

The runs with two ranks are in ``test_ddp.py``; here a stand-in trainer gives the datamodule its world size.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hcmarl.datamodules import OnPolicyDataModule
from hcmarl.errors import ConfigError

RANK_FRAMES = 4 * 16  # one rank's iteration: 4 envs x 16 steps


def _data(total_frames: int, world_size: int | None = None) -> OnPolicyDataModule:
    """A datamodule for ``total_frames``, attached to a stand-in fitting trainer of ``world_size`` ranks (None: none)."""
    data = OnPolicyDataModule(env="coordsum/3x10", num_envs=4, rollout_steps=16, total_frames=total_frames)
    if world_size is not None:
        data.trainer = SimpleNamespace(world_size=world_size, training=True, fit_loop=SimpleNamespace(max_epochs=None))
    return data


def test_iterations_divide_the_frames_among_the_ranks() -> None:
    assert _data(8 * RANK_FRAMES).iterations == 8  # no trainer: one process
    two_ranks = _data(8 * RANK_FRAMES, world_size=2)
    assert two_ranks.frames_per_batch == RANK_FRAMES and two_ranks.global_frames_per_batch == 2 * RANK_FRAMES
    assert two_ranks.iterations == 4
    assert _data(9 * RANK_FRAMES, world_size=2).iterations == 5  # rounded up to whole iterations


def test_a_resumed_run_plans_the_frames_left_at_its_own_world_size() -> None:
    """4 iterations of one rank (4 x 64 frames) resumed on two ranks toward 8 x 64 frames: 2 iterations more."""
    data = _data(8 * RANK_FRAMES, world_size=2)
    data.load_state_dict({"frames": 4 * RANK_FRAMES, "iterations": 4, "env": "coordsum/3x10"})
    assert data.trainer.fit_loop.max_epochs == 4 + 2
    assert data.iterations_left == 2 and data.frames == 4 * RANK_FRAMES


def test_a_budget_under_one_iteration_of_all_ranks_is_refused() -> None:
    data = _data(RANK_FRAMES)
    data.check_budget(world_size=1)
    with pytest.raises(ConfigError, match=r"total_frames=64 is less than one iteration \(ranks \* num_envs \* rollout_steps = 2 \* 4 \* 16 = 128"):
        data.check_budget(world_size=2)
    with pytest.raises(ConfigError, match=r"total_frames=10 is less than one iteration \(num_envs \* rollout_steps = 64\)"):
        _data(10)


def test_a_checkpoint_without_an_iteration_count_is_read_as_one_ranks() -> None:
    """Checkpoints from before global frames have no iteration count; all of them were single-rank runs."""
    data = _data(8 * RANK_FRAMES, world_size=1)
    data.load_state_dict({"frames": 3 * RANK_FRAMES, "env": "coordsum/3x10"})
    assert data.frames == 3 * RANK_FRAMES and data.iterations_done == 3


def test_bench_runs_its_iterations_whatever_the_frames_budget(run_cli, capsys: pytest.CaptureFixture) -> None:
    """``hcmarl bench`` sets the budget to its own iterations (a budget of one iteration would stop it after the warm-up)."""
    run_cli("bench", "mappo/coordsum_3x10", "--data.total_frames", "32", "--iterations", "2", "--warmup", "1")
    assert "coordsum/3x10, 32 frames per iteration, 2 measured iterations" in capsys.readouterr().out
