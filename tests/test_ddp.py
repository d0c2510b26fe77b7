"""Two DDP ranks on CPU (gloo), different data on each: parameters stay identical (DESIGN.md, "Scale")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import recipe


PER_AGENT_CRITIC = ["--model.critic.init_args.network", "hcmarl.nn.AgentValue"]  # per-agent scores for A2PO's semi-greedy order


@pytest.mark.parametrize(
    "name, extra",
    [
        ("mappo/coordsum_3x10", []),
        ("ippo/coordsum_3x10", []),
        ("happo/coordsum_3x10", []),
        ("hatrpo/coordsum_3x10", []),
        ("a2po/coordsum_3x10", PER_AGENT_CRITIC),
        ("hcpo/coordsum_3x10", []),
        ("magpo/coordsum_3x10", []),
        ("mat/coordsum_3x10", []),
        ("magpo_sable/coordsum_3x10", ["--model.guider.init_args.constraint.init_args.minibatches", "2"]),
        ("magpo_trust_region/coordsum_3x10", []),
    ],
)
def test_two_ranks_end_with_identical_parameters(name: str, extra: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, HCMARL_TEST_OUT=str(tmp_path), PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "hcmarl.cli", "fit", "--config", recipe(name),
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=ddp_probe.SaveParametersPerRank",
        "--data.num_envs", "4", "--data.rollout_steps", "16", "--data.total_frames", str(4 * 4 * 16), "--data.eval_episodes", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra,
    ]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["data_sums"] != rank1["data_sums"], "both ranks saw the same data"
    initial_differs = False
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"{key} differs between ranks"
        initial_differs |= value.abs().sum() > 0
    assert initial_differs
