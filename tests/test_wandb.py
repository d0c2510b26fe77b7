"""W&B runs, offline: grouped by recipe, tagged with the seed, holding the resolved config and the episode video (issue 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY, recipe

from hcmarl.cli import build_cli
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

    saved = yaml.safe_load((offline / "wb" / "config.yaml").read_text())  # the config the CLI saves for the run
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
        ["fit", "--config", recipe("mappo/coordsum_3x10"), *TINY, "--data.total_frames", "32", *WANDB,
         "--trainer.logger.init_args.group", "ablation", "--trainer.logger.init_args.tags", "[baseline]"]
    )
    run = cli.trainer.logger.experiment
    assert run.group == "ablation"
    assert set(run.tags) == {"baseline", "seed=0"}


def test_recipe_name_from_the_config_file_or_the_env() -> None:
    assert recipe_name([recipe("hcpo/vmas_balance")], "vmas/balance") == "hcpo/vmas_balance"
    assert recipe_name(["my/own.yaml", "overrides.yaml"], "vmas/balance") == "my/own"
    assert recipe_name(None, "smax/3s5z") == "smax_3s5z"
