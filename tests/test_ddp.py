"""DDP ranks on CPU (gloo), different data on each: parameters stay identical, and frames count over all ranks
(DESIGN.md, "Scale"; docs/scale.md).

Two ranks run as Lightning launches them on one machine (``--trainer.devices 2``), and as two nodes of one
process each (``--trainer.num_nodes 2``, one ``hcmarl`` process per node, as a cluster launcher starts them).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import final_eval, recipe, run_dirs

PER_AGENT_CRITIC = ["--model.critic.init_args.network", "hcmarl.nn.AgentValue"]  # per-agent scores for A2PO's semi-greedy order
RANK_FRAMES = 4 * 16  # what one rank collects per iteration: 4 envs x 16 steps
TINY = [
    "--trainer.strategy",
    "ddp",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.callbacks+=ddp_probe.SaveParametersPerRank",
    "--data.num_envs",
    "4",
    "--data.rollout_steps",
    "16",
    "--data.eval_episodes",
    "2",
    "--data.protocol",  # the magpo and hcpo presets fix their episodes and refuse eval_episodes
    "hcmarl",
]


def _env(out: Path) -> dict[str, str]:
    """The environment of an ``hcmarl`` process: the probe importable, one thread, no cluster's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "NODE_RANK", "MASTER_"))}
    return dict(env, HCMARL_TEST_OUT=str(out), PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")


def _command(name: str, total_frames: int, save_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hcmarl.modules.cli",
        "fit",
        "--config",
        recipe(name),
        *TINY,
        "--data.total_frames",
        str(total_frames),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        *extra,
    ]


def _ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


def _assert_identical_parameters(rank0: dict, rank1: dict) -> None:
    assert rank0["data_sums"] != rank1["data_sums"], "both ranks saw the same data"
    initial_differs = False
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"{key} differs between ranks"
        initial_differs |= value.abs().sum() > 0
    assert initial_differs


def _assert_global_frames(ranks: list[dict], total_frames: int, run_dir: Path) -> None:
    """Each rank collected ``total_frames / 2``; every logged and reported frame count is the sum over both ranks."""
    iterations = total_frames // (2 * RANK_FRAMES)
    expected = [float(2 * RANK_FRAMES * i) for i in range(1, iterations + 1)]
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["collected"] == total_frames // 2 and len(rank["data_sums"]) == iterations
        assert rank["logged_frames"] == expected
    assert sum(rank["collected"] for rank in ranks) == total_frames
    with open(run_dir / "metrics.csv") as f:
        logged = [float(row["frames"]) for row in csv.DictReader(f) if row.get("frames")]
    assert logged == expected
    assert final_eval(run_dir)["frames"] == total_frames
    (checkpoint,) = run_dir.rglob("last.ckpt")
    saved = torch.load(checkpoint, weights_only=False)["OnPolicyDataModule"]
    assert saved["frames"] == total_frames and saved["iterations"] == iterations


@pytest.mark.parametrize(
    "name, extra",
    [
        ("mappo/coordsum_3x10", []),
        ("ippo/coordsum_3x10", []),
        ("happo/coordsum_3x10", []),
        ("hatrpo/coordsum_3x10", []),
        ("a2po/coordsum_3x10", PER_AGENT_CRITIC),
        ("hcpo/coordsum_3x10", []),
        ("magpo/coordsum_3x10", ["--model.guider.init_args.constraint.init_args.minibatches", "2"]),  # whole rollouts of 4 envs
        ("mat/coordsum_3x10", []),
        ("magpo_sable/coordsum_3x10", ["--model.guider.init_args.constraint.init_args.minibatches", "2"]),
        ("magpo_trust_region/coordsum_3x10", []),
    ],
)
def test_two_ranks_end_with_identical_parameters_and_count_frames_over_both(name: str, extra: list[str], tmp_path: Path) -> None:
    total_frames = 2 * 4 * RANK_FRAMES  # 4 iterations of 2 ranks
    cmd = _command(name, total_frames, tmp_path / "runs", "--trainer.devices", "2", *extra)
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = _ranks(tmp_path)
    _assert_identical_parameters(*ranks)
    (run_dir,) = run_dirs(tmp_path)
    _assert_global_frames(ranks, total_frames, run_dir)
    assert f"after {total_frames:,} frames (over 2 ranks)" in result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_end_with_identical_parameters(tmp_path: Path) -> None:
    """``--trainer.num_nodes 2``: one process per node, started by hand with NODE_RANK as a cluster launcher would."""
    total_frames = 2 * 2 * RANK_FRAMES  # 2 iterations of 2 ranks
    port = str(_free_port())
    nodes = []
    for node_rank in (0, 1):
        node_dir = tmp_path / f"node{node_rank}"  # each node its own folder, as on its own machine
        node_dir.mkdir()
        env = dict(_env(tmp_path), NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        cmd = _command("mappo/coordsum_3x10", total_frames, node_dir / "runs", "--trainer.devices", "1", "--trainer.num_nodes", "2")
        log = open(node_dir / "output.txt", "w")
        nodes.append((subprocess.Popen(cmd, cwd=node_dir, env=env, stdout=log, stderr=subprocess.STDOUT), log, node_dir))
    try:
        codes = [process.wait(timeout=300) for process, _, _ in nodes]
    finally:
        for process, log, _ in nodes:
            process.kill()
            log.close()
    outputs = [(node_dir / "output.txt").read_text()[-3000:] for _, _, node_dir in nodes]
    assert codes == [0, 0], "\n".join(outputs)
    ranks = _ranks(tmp_path)
    assert [rank["node_rank"] for rank in ranks] == [0, 1]
    _assert_identical_parameters(*ranks)
    (run_dir,) = run_dirs(tmp_path / "node0")  # rank zero logs; the other node writes no run
    assert run_dirs(tmp_path / "node1") == []
    _assert_global_frames(ranks, total_frames, run_dir)


def test_total_frames_under_one_iteration_of_all_ranks_is_refused(tmp_path: Path) -> None:
    """One rank's iteration fits the budget, two ranks' does not: a clear error before any rank starts.

    In a subprocess: had the check gone, Lightning would launch the second rank by rerunning this process's command.
    """
    cmd = _command("mappo/coordsum_3x10", RANK_FRAMES, tmp_path / "runs", "--trainer.devices", "2")
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"data.total_frames={RANK_FRAMES} is less than one iteration" in result.stderr
    assert "2 * 4 * 16 = 128" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("rank*.pt"))
