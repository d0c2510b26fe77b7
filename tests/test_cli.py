"""The ``hcmarl`` command end to end: recipes, overrides, interpolation, resume, validate, bench."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import final_eval, recipe, run_dirs, run_protocol

from hcmarl.modules.base_config import with_base
from hcmarl.modules.cli import build_cli, main
from hcmarl.recipes import BASE_CONFIG, RECIPES_DIR, recipe_paths

FRAMES_PER_ITERATION = 4 * 8  # TINY: 4 envs x 8 steps


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_package_maps_top_level_folders() -> None:
    import hcmarl.datamodules
    import hcmarl.modules
    import hcmarl.recipes

    assert Path(hcmarl.modules.__file__).parent.name == "modules"
    assert Path(hcmarl.datamodules.__file__).parent.name == "datamodules"
    assert len(recipe_paths()) >= 8


FEWER_ENV_MINIBATCHES = ["--model.guider.init_args.constraint.init_args.minibatches", "2"]
SMOKE_OVERRIDES = {"magpo_sable/coordsum_3x10": FEWER_ENV_MINIBATCHES, "sable/coordsum_3x10": FEWER_ENV_MINIBATCHES}
"""Recipes whose minibatches (whole env rollouts, for a recurrent guider) outnumber the tiny settings' 4 envs."""


def smoke_overrides(path: Path) -> list[str]:
    """Tiny-run overrides a recipe needs: at most 2 minibatches where a recurrent guider, learner or critic's minibatches
    (whole env rollouts) would outnumber the tiny 4 envs, and the hcmarl protocol where the recipe asks for the magpo
    or hcpo one (whose 32- or 40-episode evaluations, 320-episode absolute metric and evaluation after every iteration
    would make smoke runs long; the protocols are tested in tests/test_evaluation_protocols.py)."""
    name = f"{path.parent.name}/{path.stem}"
    text = path.read_text()
    extra = list(SMOKE_OVERRIDES.get(name, []))
    protocol = run_protocol(name, ())
    if protocol != "hcmarl":  # the magpo and hcpo presets fix 32 or 40 episodes
        extra += ["--data.protocol", "hcmarl"]
    if protocol == "magpo":
        if "hcmarl.nn.SableGuider" in text and not extra[:1] == FEWER_ENV_MINIBATCHES[:1]:
            extra += FEWER_ENV_MINIBATCHES
        if "hcmarl.nn.GRUActor" in text and "hcmarl.guided.GuidedImitation" not in text:  # a learner under a guider steps on its minibatches
            extra += ["--model.learner.init_args.constraint.init_args.minibatches", "2"]
        if "hcmarl.nn.Recurrent" in text:  # a recurrent critic's minibatches are whole env rollouts too
            extra += ["--model.critic.init_args.minibatches", "2"]
    return extra


SMOKE_SMAX_MAP = "smax_3s5z"
SMOKE_JUMANJI_TASKS = ("rware_tiny-2ag", "lbf_2s-8x8-2p-2f-coop", "connector_con-5x5x3a")
"""The one task per jumanji suite that runs, for the two first citizens only (MAGPO and HCPO)."""
JUMANJI_SUITES = ("rware_", "lbf_", "connector_")


def smoke_recipes() -> list[Path]:
    """The recipes that run two iterations here: every one, except that of an algorithm's SMAX recipes only the 3s5z
    one runs, and of the jumanji suites' recipes (RWARE, LBF, Connector) only MAGPO's and HCPO's on one task per suite.
    Each SMAX map and jumanji task compiles its own jitted env (35-100 s of a CI run each), the other recipes differ
    from those only in the task and numbers (their settings are checked by tests/test_magpo_paper_recipes.py,
    tests/test_jumanji_recipes.py and tests/test_hcpo_paper.py, and every recipe is instantiated by
    test_every_recipe_instantiates), and the envs themselves are tested in tests/test_smax_env.py and
    tests/test_jumanji_envs.py."""

    def runs(path: Path) -> bool:
        if path.stem.startswith("smax_"):
            return path.stem == SMOKE_SMAX_MAP
        if path.stem.startswith(JUMANJI_SUITES):
            return path.stem in SMOKE_JUMANJI_TASKS and path.parent.name in ("magpo", "hcpo")
        return True

    return [p for p in recipe_paths() if runs(p)]


@pytest.mark.parametrize("path", recipe_paths(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_instantiates(path: Path) -> None:
    cli = build_cli(["--config", str(path)], run=False)
    assert cli.model.plan.stages and cli.datamodule.env_name == cli.config.data.env


@pytest.mark.parametrize("path", smoke_recipes(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_runs_two_iterations(path: Path, run_cli, tmp_path: Path) -> None:
    name = f"{path.parent.name}/{path.stem}"
    run_cli("fit", name, "--data.total_frames", str(2 * FRAMES_PER_ITERATION), "--data.eval_every", "1", *smoke_overrides(path))
    (run_dir,) = run_dirs(tmp_path)
    rows = read_metrics(run_dir)
    assert logged(rows, "frames") == [FRAMES_PER_ITERATION, 2 * FRAMES_PER_ITERATION]
    losses = [v for key in ("learner/policy_loss", "critic/value_loss", "guider/policy_loss", "guider/value_loss") for v in logged(rows, key)]
    assert losses and all(math.isfinite(v) for v in losses)
    result = final_eval(run_dir)
    assert math.isfinite(result["eval/return"]) and result["frames"] == 2 * FRAMES_PER_ITERATION
    if path.stem.startswith("connector_"):  # the env's episode metric: logged in training and evaluation, recorded per episode
        assert 0.0 <= result["eval/connection_rate"] <= 1.0 and logged(rows, "train/connection_rate")
        (record,) = (json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()[-1:])
        assert len(record["episodes"]["eval"]["connection_rate"]) == len(record["episodes"]["eval"]["return"])


def test_print_config_resolves_interpolation_after_overrides(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", recipe("mappo/coordsum_3x10"), "--data.env", "vmas/navigation", "--trainer.devices", "2", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "name: mappo/vmas/navigation" in printed
    assert "env: vmas/navigation" in printed and ("devices: 2" in printed or "devices: '2'" in printed)
    assert "accelerator: auto" in printed  # the base's trainer block is part of the printed config


# ---- recipes from parts: recipes/base.yaml under every run ---------------------------------------------------


def test_a_recipe_alone_runs_on_the_base_with_its_logger_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", recipe("hatrpo/vmas_balance")], run=False)
    assert cli.config.trainer.accelerator == "auto" and cli.config.trainer.devices == 1
    assert cli.config.trainer.logger.class_path == "lightning.pytorch.loggers.CSVLogger"
    assert cli.config.trainer.logger.init_args.name == "hatrpo/vmas/balance"
    assert Path(cli.trainer.logger.log_dir) == Path("runs/hatrpo/vmas/balance/version_0")  # the run folder of before the base


def test_command_line_overrides_beat_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", recipe("mappo/coordsum_3x10"), "--trainer.accelerator", "cpu", "--trainer.logger.init_args.name", "mine"], run=False)
    assert cli.config.trainer.accelerator == "cpu" and cli.config.trainer.logger.init_args.name == "mine"


def test_a_config_outside_recipes_logs_under_its_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "my_run.yaml"
    own.write_text(Path(recipe("mappo/coordsum_3x10")).read_text())
    cli = build_cli(["--config", str(own), "--data.env", "coordsum/3x30"], run=False)
    assert cli.config.trainer.logger.init_args.name == "my_run/coordsum/3x30"
    as_text = build_cli(["--config", own.read_text(), "--data.env", "coordsum/3x30"], run=False)  # a config string, no file
    assert as_text.config.trainer.logger.init_args.name == "hcmarl/coordsum/3x30"  # the base's own fallback


def test_the_base_goes_after_the_subcommand_before_the_users_words() -> None:
    words = with_base(["fit", "--config", recipe("ippo/coordsum_3x10"), "--seed_everything", "1"], {"fit", "validate"})
    assert words[:3] == ["fit", "--config", str(BASE_CONFIG)]
    assert "ippo/${data.env}" in words[4] and words[5:] == ["--config", recipe("ippo/coordsum_3x10"), "--seed_everything", "1"]
    assert with_base(["--help"], {"fit"}) == ["--help"]  # no subcommand, nothing to add


def test_no_recipe_pins_the_accelerator() -> None:
    recipes = sorted(RECIPES_DIR.rglob("*.yaml"))
    assert BASE_CONFIG in recipes and len(recipes) == len(recipe_paths()) + 1
    pinned = [str(p.relative_to(RECIPES_DIR)) for p in recipes if p != BASE_CONFIG and "accelerator:" in p.read_text()]
    assert pinned == [], f"these recipes repeat the base's trainer.accelerator: {pinned}"


def test_total_frames_sets_the_number_of_iterations() -> None:
    cli = build_cli(["--config", recipe("mappo/coordsum_3x10"), "--data.total_frames", "200000"], run=False)
    assert cli.trainer.max_epochs == math.ceil(200000 / (64 * 128))


def test_block_swapped_by_class_path() -> None:
    cli = build_cli(["--config", recipe("mappo/coordsum_3x10"), "--model.critic.init_args.network", "hcmarl.nn.AgentValue"], run=False)
    from hcmarl.nn import AgentValue

    assert isinstance(cli.model.critic.network, AgentValue)


def test_recipe_equals_python_construction() -> None:
    """Config as code: the recipe's objects equal the same constructors called in Python."""
    from hcmarl.constraints import ClipPPO
    from hcmarl.datamodules import OnPolicyDataModule
    from hcmarl.modules import Critic, Learner, MARLModule
    from hcmarl.nn import CentralValue, MLPActor
    from hcmarl.schedules import Simultaneous

    cli = build_cli(["--config", recipe("mappo/coordsum_3x10")], run=False)
    torch.manual_seed(0)
    python_model = MARLModule(
        learner=Learner(
            actor=MLPActor(hidden_sizes=[64, 64], activation="tanh", share_params=True, agent_id=True),
            constraint=ClipPPO(eps=0.2, epochs=10, minibatches=4, ent_coef=0.01, max_grad_norm=10.0),
            schedule=Simultaneous(),
            lr=5e-4,
        ),
        critic=Critic(network=CentralValue(hidden_sizes=[64, 64]), lr=5e-4, epochs=10, minibatches=4),
        gamma=0.99,
        gae_lambda=0.95,
    )
    python_data = OnPolicyDataModule(env="coordsum/3x10", num_envs=64, rollout_steps=128, total_frames=20_000_000, eval_episodes=32, eval_every=10)
    assert vars(cli.model.learner.constraint) == vars(python_model.learner.constraint)
    assert type(cli.model.learner.schedule) is type(python_model.learner.schedule)
    for attr in ("hidden_sizes", "activation", "share_params", "agent_id", "distribution_kind"):
        assert getattr(cli.model.learner.actor, attr) == getattr(python_model.learner.actor, attr)
    for attr in ("lr", "epochs", "minibatches", "loss", "huber_delta", "clip_value", "max_grad_norm"):
        assert getattr(cli.model.critic, attr) == getattr(python_model.critic, attr)
    for attr in ("env_name", "num_envs", "rollout_steps", "total_frames", "protocol", "seed"):
        assert getattr(cli.datamodule, attr) == getattr(python_data, attr)
    # built for the same env from the same seed, the networks are identical
    from hcmarl.envs import make_env

    info = make_env("coordsum/3x10").info
    torch.manual_seed(0)
    cli.model.build(info)
    torch.manual_seed(0)
    python_model.build(info)
    for (k1, v1), (k2, v2) in zip(cli.model.state_dict().items(), python_model.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def _last_checkpoint(root: Path) -> Path:
    (path,) = root.rglob("last.ckpt")
    return path


def test_resume_continues_frames_and_weights(run_cli, tmp_path: Path) -> None:
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", str(2 * FRAMES_PER_ITERATION))
    ckpt = _last_checkpoint(tmp_path)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["OnPolicyDataModule"]["frames"] == 2 * FRAMES_PER_ITERATION
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", str(4 * FRAMES_PER_ITERATION), "--ckpt_path", str(ckpt))
    (run_dir,) = run_dirs(tmp_path)  # the resumed run continues its folder
    assert logged(read_metrics(run_dir), "frames") == [k * FRAMES_PER_ITERATION for k in (1, 2, 3, 4)]
    assert final_eval(run_dir)["frames"] == 4 * FRAMES_PER_ITERATION
    resumed = torch.load(_last_checkpoint(run_dir), weights_only=False)
    assert resumed["epoch"] == 3 and resumed["OnPolicyDataModule"]["frames"] == 4 * FRAMES_PER_ITERATION


def test_validate_evaluates_a_checkpoint(run_cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_cli("fit", "ippo/coordsum_3x10", "--data.total_frames", str(FRAMES_PER_ITERATION))
    ckpt = _last_checkpoint(tmp_path)
    capsys.readouterr()
    run_cli("validate", "ippo/coordsum_3x10", "--ckpt_path", str(ckpt), "--data.eval_episodes", "7")
    printed = capsys.readouterr().out
    assert "eval/return" in printed and "eval/episodes" in printed and "7" in printed


def test_bench_prints_throughput(run_cli, capsys: pytest.CaptureFixture) -> None:
    run_cli("bench", "mappo/coordsum_3x10", "--iterations", "2", "--warmup", "1")
    printed = capsys.readouterr().out
    for key in ("collect_fps", "update_fps", "end_to_end_fps", "peak_rss_mib"):
        assert key in printed
