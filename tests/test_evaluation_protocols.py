"""Evaluation protocols (ALGORITHMS.md section 6): the presets, the HCPO median, Mava's absolute metric, and the
evaluation record a run writes (``evaluations.jsonl``, ``final_eval.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import final_eval, run_dirs
from lightning.pytorch.trainer.states import TrainerFn
from tensordict import TensorDict
from torch import nn

from hcmarl.datamodules import OnPolicyDataModule
from hcmarl.datamodules.onpolicy import evaluation_random_stream
from hcmarl.errors import ConfigError
from hcmarl.evaluation import Evaluation, check_evaluation_actions, median_of_last, protocol_for
from hcmarl.modules.cli import build_cli
from hcmarl.modules.evaluation import EvaluationRecorder
from hcmarl.recipes import RECIPES_DIR


def episodes(returns: list[float], wins: list[bool] | None = None) -> dict:
    out = {"return": returns, "length": [100.0] * len(returns)}
    return {"eval": out | ({"win": [float(w) for w in wins]} if wins is not None else {})}


# ---- the presets ---------------------------------------------------------------------------
def test_magpo_preset_spaces_122_evaluations_as_mava() -> None:
    magpo = protocol_for("magpo", "coordsum/3x10")
    assert (magpo.episodes, magpo.deterministic, magpo.final, magpo.rounds) == (32, False, "absolute", 10)
    # Mava: num_updates_per_eval = num_updates // num_evaluation (params.csv: 1220 updates, 122 evaluations)
    assert magpo.evaluation_interval(1220) == 10
    assert magpo.evaluation_interval(2441) == 20
    assert magpo.evaluation_interval(50) == 1


def test_hcpo_preset_evaluates_every_iteration_deterministically() -> None:
    smax = protocol_for("hcpo", "smax/3s5z")
    assert (smax.episodes, smax.deterministic, smax.evaluation_interval(500), smax.final, smax.last) == (32, True, 1, "median_of_last", 10)
    assert protocol_for("hcpo", "mamujoco/HalfCheetah-2x3").episodes == 40
    assert protocol_for("hcpo", "mpe/simple_spread_v3").episodes == 40


def test_hcmarl_preset_keeps_the_recipes_settings() -> None:
    hcmarl = protocol_for("hcmarl", "coordsum/3x10", eval_every=25, eval_episodes=7)
    assert (hcmarl.episodes, hcmarl.deterministic, hcmarl.evaluation_interval(1000), hcmarl.final) == (7, None, 25, "last")
    default = protocol_for("hcmarl", "coordsum/3x10")
    assert (default.episodes, default.evaluation_interval(1000)) == (32, 10)


@pytest.mark.parametrize(
    ("name", "env", "setting", "value", "fixed"),
    [
        ("magpo", "coordsum/3x10", "eval_every", 10, "122 times, evenly spaced"),
        ("magpo", "coordsum/3x10", "eval_episodes", 7, "plays 32 episodes"),
        ("hcpo", "smax/3s5z", "eval_every", 10, "after every iteration"),
        ("hcpo", "mamujoco/HalfCheetah-2x3", "eval_episodes", 32, "plays 40 episodes"),
    ],
)
def test_a_preset_refuses_cadence_or_episodes_it_would_ignore(name: str, env: str, setting: str, value: int, fixed: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{setting}={value} conflicts with data.protocol {name}, which .*{fixed}.*--data.protocol hcmarl"):
        protocol_for(name, env, **{setting: value})


def test_a_preset_accepts_the_settings_it_fixes() -> None:
    assert protocol_for("hcpo", "smax/3s5z", eval_every=1, eval_episodes=32) == protocol_for("hcpo", "smax/3s5z")
    assert protocol_for("magpo", "coordsum/3x10", eval_episodes=32) == protocol_for("magpo", "coordsum/3x10")
    check_evaluation_actions(protocol_for("hcpo", "smax/3s5z"), True)
    check_evaluation_actions(protocol_for("magpo", "coordsum/3x10"), None)
    check_evaluation_actions(protocol_for("hcmarl", "coordsum/3x10"), True)


@pytest.mark.parametrize(("name", "asked", "actions"), [("hcpo", False, "deterministic actions"), ("magpo", True, "sampled actions")])
def test_a_preset_refuses_evaluation_actions_it_would_ignore(name: str, asked: bool, actions: str) -> None:
    with pytest.raises(
        ConfigError, match=f"model.deterministic_eval={str(asked).lower()} conflicts with data.protocol {name}, which evaluates {actions}"
    ):
        check_evaluation_actions(protocol_for(name, "smax/3s5z"), asked)


def test_cli_refuses_deterministic_eval_against_the_magpo_preset_before_training(run_cli, tmp_path: Path, capsys) -> None:
    few = ["--model.guider.init_args.constraint.init_args.minibatches", "2"]  # a tiny run, should the refusal fail
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "magpo/coordsum_3x10", "--data.total_frames", "64", *few, "--model.deterministic_eval", "true")
    assert exit_info.value.code == 2 and "model.deterministic_eval=true conflicts" in capsys.readouterr().err
    assert not run_dirs(tmp_path)


def test_python_fit_refuses_deterministic_eval_against_the_hcpo_preset_before_training(tmp_path: Path) -> None:
    """Without the CLI, the module's ``setup`` makes the same refusal, before the first rollout."""
    model = build_cli(["--config", str(RECIPES_DIR / "mappo/coordsum_3x10.yaml"), "--model.deterministic_eval", "false"], run=False).model
    data = OnPolicyDataModule(env="coordsum/3x10", num_envs=4, rollout_steps=8, total_frames=64, protocol="hcpo")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="model.deterministic_eval=false conflicts with data.protocol hcpo"):
        trainer.fit(model, datamodule=data)
    assert data.frames == 0


def test_sampled_evaluations_leave_training_as_without_them(run_cli, tmp_path: Path) -> None:
    """An evaluation's sampled actions draw from a random stream of their own: a seed trains the same parameters
    whether it is evaluated after every iteration or never during training."""
    sampled = ["--model.deterministic_eval", "false", "--seed_everything", "5", "--data.total_frames", "128"]
    run_cli("fit", "mappo/coordsum_3x10", *sampled, "--data.eval_every", "1")
    run_cli("fit", "mappo/coordsum_3x10", *sampled, "--data.eval_every", "1000")
    every, never = run_dirs(tmp_path)
    assert len((every / "evaluations.jsonl").read_text().splitlines()) == 4
    assert not (never / "evaluations.jsonl").exists() or not (never / "evaluations.jsonl").read_text().strip()
    trained = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for run in (every, never)]
    assert trained[0].keys() == trained[1].keys()
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])


def test_the_evaluation_stream_is_its_seeds_and_leaves_torchs_state_as_it_was() -> None:
    torch.manual_seed(1)
    before = torch.get_rng_state()
    with evaluation_random_stream(7, torch.device("cpu")):
        first = torch.rand(5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(3)  # training moves on
    with evaluation_random_stream(7, torch.device("cpu")):
        assert torch.equal(torch.rand(5), first)
    with evaluation_random_stream(8, torch.device("cpu")):
        assert not torch.equal(torch.rand(5), first)


def test_unknown_protocol_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="data.protocol='mava'.*hcmarl, magpo, hcpo"):
        protocol_for("mava", "coordsum/3x10")


# ---- the HCPO score ------------------------------------------------------------------------
def hand_median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@pytest.mark.parametrize("count", [3, 10, 14])
def test_median_of_the_last_ten_win_rates(count: int) -> None:
    generator = torch.Generator().manual_seed(count)
    history = []
    for i in range(count):
        wins = (torch.rand(32, generator=generator) < i / count).tolist()
        history.append(Evaluation(i + 1, 1000 * (i + 1), episodes([0.0] * 32, wins)))
    rates = [sum(e.episodes["eval"]["win"]) / 32 for e in history][-10:]
    score = median_of_last(history, "eval/win_rate", last=10)
    assert score.value == pytest.approx(hand_median(rates))
    assert score.frames == 1000 * count
    assert f"last {min(count, 10)} evaluations" in score.rule


# ---- the absolute metric, on a stand-in trainer --------------------------------------------
class Weight(nn.Module):
    """A module whose every evaluation episode returns its one weight: the parameters evaluated are visible."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def evaluation_modes(self) -> dict:
        return {"eval": None}

    def all_gather(self, data: dict) -> dict:
        return data


class StandIn:
    """The parts of a Lightning trainer and datamodule the recorder uses; ``validate`` evaluates ``Weight``."""

    def __init__(self, module: Weight, protocol: str) -> None:
        self.module, self.frames, self.iterations_done = module, 0, 0
        self.protocol = protocol_for(protocol, "coordsum/3x10", 1, 4) if protocol == "hcmarl" else protocol_for(protocol, "coordsum/3x10")
        self.env_info = SimpleNamespace(has_win=False)
        self.evaluation_rounds = 1
        self.state = SimpleNamespace(fn=TrainerFn.FITTING)
        self.sanity_checking, self.is_global_zero, self.loggers, self.callback_metrics = False, True, [], {}
        self.datamodule = self

    def evaluation_batches(self, rounds: int):
        import contextlib

        @contextlib.contextmanager
        def block():
            self.evaluation_rounds = rounds
            yield
            self.evaluation_rounds = 1

        return block()

    def evaluate_with(self, recorder: EvaluationRecorder) -> None:
        n = self.protocol.episodes * self.evaluation_rounds
        batch = TensorDict({"return": self.module.w.detach().expand(n).clone(), "length": torch.full((n,), 100.0)}, batch_size=[n])
        recorder.on_validation_epoch_start(self, self.module)
        recorder.on_validation_batch_end(self, self.module, None, batch, 0)
        recorder.on_validation_end(self, self.module)

    def validate(self, model: Weight, datamodule: StandIn, verbose: bool = False) -> None:
        self.state.fn = TrainerFn.VALIDATING
        self.evaluate_with(self._recorder)
        self.state.fn = TrainerFn.FITTING


def train_with_weights(protocol: str, weights: list[float]) -> tuple[EvaluationRecorder, StandIn]:
    module = Weight()
    stand_in = StandIn(module, protocol)
    recorder = EvaluationRecorder()
    stand_in._recorder = recorder
    for i, w in enumerate(weights, start=1):
        with torch.no_grad():
            module.w.fill_(w)
        stand_in.iterations_done, stand_in.frames = i, 100 * i
        stand_in.evaluate_with(recorder)
    return recorder, stand_in


def test_absolute_metric_re_evaluates_the_best_parameters_not_the_last() -> None:
    recorder, stand_in = train_with_weights("magpo", [1.0, 5.0, 3.0, 5.0, 2.0])
    scored = recorder.final_evaluation(stand_in, stand_in.module, stand_in)
    assert scored is not None
    score, evaluation = scored
    assert score.value == 5.0  # the best parameters' return, where the final parameters give 2
    assert score.frames == 400  # a tie keeps the later parameters, as Mava does
    assert len(evaluation.episodes["eval"]["return"]) == 320  # 10 x 32 episodes
    assert float(stand_in.module.w) == 2.0  # the final parameters are put back


def test_last_evaluation_scores_the_final_parameters() -> None:
    recorder, stand_in = train_with_weights("hcmarl", [1.0, 5.0, 2.0])
    score, evaluation = recorder.final_evaluation(stand_in, stand_in.module, stand_in)  # type: ignore[misc]
    assert (score.value, len(evaluation.episodes["eval"]["return"])) == (2.0, 4)


def test_hcpo_score_needs_no_new_evaluation() -> None:
    recorder, stand_in = train_with_weights("hcpo", [float(w) for w in range(1, 15)])
    stand_in.validate = None  # type: ignore[assignment]  # an evaluation here would fail
    score, evaluation = recorder.final_evaluation(stand_in, stand_in.module, stand_in)  # type: ignore[misc]
    assert score.value == hand_median([float(w) for w in range(5, 15)])
    assert evaluation.iteration == 14


def test_recorder_state_survives_a_checkpoint() -> None:
    recorder, stand_in = train_with_weights("magpo", [1.0, 4.0, 3.0])
    restored = EvaluationRecorder()
    restored.load_state_dict(recorder.state_dict())
    assert restored.best == recorder.best and restored.recent == recorder.recent
    assert torch.equal(restored.best_state["w"], torch.tensor(4.0))  # type: ignore[index]


# ---- a real run ------------------------------------------------------------------------------
def test_magpo_protocol_run_records_every_evaluation_and_scores_the_best(run_cli, tmp_path: Path) -> None:
    run_cli(
        "fit",
        "mappo/coordsum_3x10",
        "--data.protocol",
        "magpo",
        "--seed_everything",
        "2",
        "--data.total_frames",
        "192",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.monitor=frames",  # a key of its own beside the default checkpoint callback's
        "--trainer.callbacks.filename={epoch}",
        "--trainer.callbacks.save_on_train_epoch_end=true",
    )
    (run,) = run_dirs(tmp_path)
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 7))  # 6 iterations < 122: every iteration
    assert [r["frames"] for r in records] == [32 * i for i in range(1, 7)]
    means = [sum(r["episodes"]["eval"]["return"]) / 32 for r in records]
    best = max(i for i, m in enumerate(means) if m == max(means))
    assert best != len(records) - 1, "choose settings whose best evaluation is not the last one"
    result = final_eval(run)
    assert (result["protocol"], result["score_metric"], result["score_frames"]) == ("magpo", "eval/return", records[best]["frames"])
    assert len(result["episodes"]["eval"]["return"]) == 320 and result["score"] == pytest.approx(result["eval/return"])
    # the parameters kept are those the best evaluation evaluated: the checkpoint written after that iteration
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    kept = next(v for k, v in last["callbacks"].items() if k.startswith("EvaluationRecorder"))["best_state"]
    at_best = torch.load(run / "checkpoints" / f"epoch={best}.ckpt", weights_only=False)["state_dict"]
    assert kept.keys() == at_best.keys() and all(torch.equal(kept[k], at_best[k]) for k in kept)


def test_hcpo_protocol_run_scores_the_median_of_its_last_ten(run_cli, tmp_path: Path) -> None:
    run_cli("fit", "hcpo/coordsum_3x10", "--data.protocol", "hcpo", "--data.total_frames", "384")
    (run,) = run_dirs(tmp_path)
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 12 and {"eval", "eval/central"} <= records[0]["episodes"].keys()
    means = [sum(r["episodes"]["eval"]["return"]) / len(r["episodes"]["eval"]["return"]) for r in records]
    result = final_eval(run)
    assert result["score"] == pytest.approx(hand_median(means[-10:]))
    assert len(result["episodes"]["eval"]["return"]) == 32  # the preset's episodes, not data.eval_episodes
