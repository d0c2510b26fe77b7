"""W&B runs, offline: grouped by recipe, tagged with the seed, holding the resolved config and the episode video (issue 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, recipe

from hcmarl.modules.cli import build_cli
from hcmarl.modules.loggers import recipe_name

wandb = pytest.importorskip("wandb")

WANDB = ["--trainer.logger", "hcmarl.modules.loggers.WandbLogger", "--trainer.logger.init_args.save_dir", "wb"]
VMAS = ["--data.total_frames", "32", "--data.env_kwargs", "{max_steps: 8}"]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run inside ``tmp_path`` with W&B offline and no credentials; finish the W&B run afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    wandb.finish()  # a run an earlier test left open would be reused by the logger
    yield tmp_path
    wandb.finish()


def offline_run_dir(root: Path) -> Path:
    (run_dir,) = (root / "wb" / "wandb").glob("offline-run-*")
    return run_dir


def test_run_is_grouped_by_recipe_with_its_seed_and_resolved_config(offline: Path) -> None:
    cli = build_cli(["fit", "--config", recipe("mappo/vmas_simple_spread"), *TINY, *VMAS, *WANDB, "--seed_everything", "3", "--render"])
    run = cli.trainer.logger.experiment
    assert run.group == "mappo/vmas_simple_spread"
    assert "seed=3" in run.tags
    assert run.config["seed"] == 3 and run.config["recipe"] == "mappo/vmas_simple_spread"

    run_folder = Path(cli.trainer.log_dir)
    assert run_folder == Path("wb") / "hcmarl" / run.id  # the run's own folder, beside its checkpoints
    assert (run_folder / "final_eval.json").exists() and (run_folder / "checkpoints").is_dir()
    saved = yaml.safe_load((run_folder / "config.yaml").read_text())  # the config the CLI saves for the run
    for key in ("seed_everything", "trainer", "model", "data"):
        assert run.config[key] == saved[key]
    assert run.config["data"]["total_frames"] == 32 and run.config["seed_everything"] == 3
    assert run.config["model"]["learner"]["class_path"] == "hcmarl.modules.Learner"

    wandb.finish()
    run_dir = offline_run_dir(offline)
    videos = list((run_dir / "files" / "media" / "videos" / "eval").glob("video_*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0  # --render's video, logged as eval/video
    (record,) = run_dir.glob("run-*.wandb")
    stored = record.read_bytes()
    assert b"mappo/vmas_simple_spread" in stored and b"seed=3" in stored


def test_a_group_given_is_kept(offline: Path) -> None:
    cli = build_cli(
        [
            "fit",
            "--config",
            recipe("mappo/coordsum_3x10"),
            *TINY,
            "--data.total_frames",
            "32",
            *WANDB,
            "--trainer.logger.init_args.group",
            "ablation",
            "--trainer.logger.init_args.tags",
            "[baseline]",
        ]
    )
    run = cli.trainer.logger.experiment
    assert run.group == "ablation"
    assert set(run.tags) == {"baseline", "seed=0"}


def test_recipe_name_from_the_config_file_or_the_env() -> None:
    assert recipe_name([recipe("hcpo/vmas_balance")], "vmas/balance") == "hcpo/vmas_balance"
    assert recipe_name(["my/own.yaml", "overrides.yaml"], "vmas/balance") == "my/own"
    assert recipe_name(None, "smax/3s5z") == "smax_3s5z"


TWO_RUNS = """
import glob, json, wandb
from hcmarl.modules.cli import main
base = ["fit", "--config", {recipe!r}, *{tiny!r}, "--data.total_frames", "32", *{wandb_args!r}]
main([*base, "--seed_everything", "1"])
assert wandb.run is None, "the first W&B run is still open"
main([*base, "--seed_everything", "2"])
print(json.dumps(sorted(glob.glob("wb/hcmarl/*/final_eval.json")) + sorted(glob.glob("wb/hcmarl/*/config.yaml"))))
"""


def test_two_runs_in_one_process_get_their_own_folders_and_w_and_b_runs(tmp_path: Path) -> None:
    """Each fit closes its W&B run, and writes config.yaml and final_eval.json into its own run folder (in a fresh
    process: W&B keeps per-process state)."""
    env = dict(os.environ, WANDB_MODE="offline", HOME=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    script = TWO_RUNS.format(recipe=recipe("mappo/coordsum_3x10"), tiny=TINY, wandb_args=WANDB)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = json.loads(result.stdout.strip().splitlines()[-1])
    finals, configs = [f for f in files if f.endswith("final_eval.json")], [f for f in files if f.endswith("config.yaml")]
    assert len(finals) == 2 and len(configs) == 2 and len({Path(f).parent for f in finals}) == 2
    seeds = {yaml.safe_load((tmp_path / f).read_text())["seed_everything"] for f in configs}
    assert seeds == {1, 2}
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 2
