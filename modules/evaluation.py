"""The evaluation record of a run: every evaluation's episodes kept, the final score made by the run's protocol.

:class:`EvaluationRecorder` is a Lightning callback the ``hcmarl`` command always adds. During ``fit`` it appends
each evaluation to ``evaluations.jsonl`` in the run folder (one JSON object per line: ``iteration``, ``frames``,
``elapsed_time``, ``steps_per_second`` and per-episode ``return``/``length``/``win`` and the env's episode metrics under each metric prefix),
keeps the evaluations the final score needs, and, under the ``magpo`` protocol, the parameters of the best
evaluation (all of this is checkpointed, so a resumed run scores the same). After ``fit``,
:meth:`EvaluationRecorder.final_evaluation` makes the protocol's final score (``hcmarl.evaluation``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from tensordict import TensorDictBase

from hcmarl.evaluation import Evaluation, FinalScore, absolute_metric, is_better, last_evaluation, logged_means, median_of_last, score_metric

if TYPE_CHECKING:
    from hcmarl.datamodules import OnPolicyDataModule

RECORD_FILE = "evaluations.jsonl"


def evaluation_metrics(evaluation: Evaluation) -> dict[str, float]:
    """The means an evaluation logs (``MARLModule.validation_step``): ``<prefix>/episodes``, ``<prefix>/return``,
    ``<prefix>/win_rate`` where the env has wins and ``<prefix>/<metric>`` for each episode metric of the env."""
    metrics: dict[str, float] = {}
    for prefix, episodes in evaluation.episodes.items():
        metrics[f"{prefix}/episodes"] = float(len(episodes["return"]))
        metrics |= {f"{prefix}/{name}": evaluation.mean(f"{prefix}/{name}") for name in logged_means(episodes).values()}
    return metrics


class EvaluationRecorder(Callback):
    """Records every evaluation of a run and makes its final score by the datamodule's protocol."""

    def __init__(self) -> None:
        self.recent: list[Evaluation] = []  # the last evaluations of fit, as many as the protocol's score needs
        self.best: Evaluation | None = None  # magpo protocol: the best evaluation of fit...
        self.best_state: dict[str, torch.Tensor] | None = None  # ...and the parameters it evaluated
        self.last_validation: Evaluation | None = None  # the latest evaluation outside fit (final or `hcmarl validate`)
        self.elapsed_before = 0.0  # training seconds of the run before this process (a resumed run)
        self._episodes: dict[str, dict[str, list[float]]] = {}
        self._started = time.perf_counter()
        self._record: Path | None = None

    # ---- Lightning hooks ------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Find the run folder (a collective under DDP: every rank asks); on rank zero, drop records after the
        iteration a resumed run restarts from (written before it was stopped), so each iteration appears once."""
        self._started = time.perf_counter()
        self._record = Path(trainer.log_dir or trainer.default_root_dir) / RECORD_FILE
        if trainer.is_global_zero and self._record.exists():
            done = _data(trainer).iterations_done
            kept = [line for line in self._record.read_text().splitlines() if line and json.loads(line)["iteration"] <= done]
            self._record.write_text("".join(f"{line}\n" for line in kept))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._episodes = {}

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: TensorDictBase, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep batch ``batch_idx``'s episodes (the ``batch_idx``-th evaluation mode), gathered over all ranks."""
        prefix = list(pl_module.evaluation_modes())[batch_idx]  # type: ignore[operator]
        gathered = pl_module.all_gather({key: batch.get(key).float() for key in batch.keys()})
        self._episodes[prefix] = {key: value.reshape(-1).tolist() for key, value in gathered.items()}  # type: ignore[union-attr]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._episodes:
            return
        dm = _data(trainer)
        evaluation = Evaluation(dm.iterations_done, dm.frames, self._episodes)
        if trainer.state.fn != TrainerFn.FITTING:
            self.last_validation = evaluation
            return
        self.recent = [*self.recent, evaluation][-dm.protocol.last :]
        if dm.protocol.final == "absolute" and is_better(evaluation, self.best):
            self.best = evaluation
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if trainer.is_global_zero and self._record is not None:
            fps = trainer.callback_metrics.get("perf/fps")
            line = {
                "iteration": evaluation.iteration,
                "frames": evaluation.frames,
                "elapsed_time": self.elapsed_before + time.perf_counter() - self._started,
                "steps_per_second": None if fps is None else float(fps),
                "episodes": evaluation.episodes,
            }
            with self._record.open("a") as file:
                file.write(json.dumps(line) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {
            "recent": [_as_dict(e) for e in self.recent],
            "best": None if self.best is None else _as_dict(self.best),
            "best_state": self.best_state,
            "elapsed": self.elapsed_before + time.perf_counter() - self._started,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recent = [Evaluation(**e) for e in state_dict["recent"]]
        self.best = None if state_dict["best"] is None else Evaluation(**state_dict["best"])
        self.best_state = state_dict["best_state"]
        self.elapsed_before = float(state_dict["elapsed"])

    # ---- the final score ------------------------------------------------------------------
    def final_evaluation(self, trainer: L.Trainer, model: L.LightningModule, datamodule: OnPolicyDataModule) -> tuple[FinalScore, Evaluation] | None:
        """The run's final score by ``datamodule.protocol`` and the evaluation it comes from, after ``fit``; None when
        evaluation is off (``trainer.limit_val_batches: 0``).

        ``last``: one evaluation of the final parameters, logged as the curves' last point; ``absolute``: the best
        evaluation's parameters, loaded for the evaluation and put back after it, evaluated over ``protocol.rounds``
        batches and not logged (the score goes to ``final_eval.json`` and ``final/score``); ``median_of_last``:
        no new evaluation, the median over the recorded ones (the evaluation returned is the last of them). A run
        that recorded no evaluation during fit is scored by a last evaluation.
        """
        protocol = datamodule.protocol
        metric = score_metric(datamodule.env_info is not None and datamodule.env_info.has_win)
        if protocol.final == "median_of_last" and self.recent:
            return median_of_last(self.recent, metric, protocol.last), self.recent[-1]
        if protocol.final == "absolute" and self.best is not None and self.best_state is not None:
            final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(self.best_state)
            loggers, trainer.loggers = trainer.loggers, []  # earlier parameters: not a point of the run's curves
            try:
                final = self._validate(trainer, model, datamodule, protocol.rounds)
            finally:
                model.load_state_dict(final_state)
                trainer.loggers = loggers
            return None if final is None else (absolute_metric(final, self.best, metric), final)
        final = self._validate(trainer, model, datamodule, protocol.rounds)
        return None if final is None else (last_evaluation(final, metric), final)

    def _validate(self, trainer: L.Trainer, model: L.LightningModule, datamodule: OnPolicyDataModule, rounds: int) -> Evaluation | None:
        """One evaluation outside fit of ``rounds`` batches of episodes per mode (None if evaluation is off)."""
        self.last_validation = None
        with datamodule.evaluation_batches(rounds):
            trainer.validate(model, datamodule=datamodule, verbose=False)
        return self.last_validation


def _data(trainer: L.Trainer) -> OnPolicyDataModule:
    return trainer.datamodule  # type: ignore[attr-defined]


def _as_dict(evaluation: Evaluation) -> dict[str, Any]:
    return {"iteration": evaluation.iteration, "frames": evaluation.frames, "episodes": evaluation.episodes}
