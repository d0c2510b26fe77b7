"""Evaluation protocols: when a run is evaluated, how, and which single number is its final score.

ALGORITHMS.md section 6. A protocol is chosen with ``--data.protocol``:

- ``hcmarl`` (the default): every ``data.eval_every`` iterations, ``data.eval_episodes`` episodes with the
  module's ``deterministic_eval`` setting; the score is a last evaluation of the final parameters.
- ``magpo`` (Mava's protocol, which the MAGPO paper reports): 122 evaluations of 32 episodes with sampled
  actions, evenly spaced as Mava spaces them (every ``iterations // 122`` iterations); the score is the
  **absolute metric**: the parameters of the best evaluation (by mean return, as Mava chooses them)
  re-evaluated over 10 x 32 = 320 episodes.
- ``hcpo`` (MAPPO's SMAC protocol, which the HCPO paper reports): an evaluation after every iteration,
  deterministic actions, 32 episodes (40 on MA-MuJoCo and MPE); the score is the median of the last ten
  evaluations.

The score's metric is the win rate where the env reports wins (SMAX), else the mean return. This module
knows nothing of Lightning: the recorder (``hcmarl.modules.evaluation``) feeds it evaluations.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hcmarl.errors import ConfigError

ProtocolName = Literal["hcmarl", "magpo", "hcpo"]
FinalRule = Literal["last", "absolute", "median_of_last"]
PROTOCOLS: tuple[str, ...] = ("hcmarl", "magpo", "hcpo")
MAGPO_EVALUATIONS = 122
MAGPO_EPISODES = 32
ABSOLUTE_ROUNDS = 10
HCPO_LAST = 10
HCPO_EPISODES = 32
HCPO_CONTROL_EPISODES = 40  # HCPO paper, Appendix C: MA-MuJoCo and MPE
HCPO_CONTROL_FAMILIES = ("mamujoco", "mpe")
HCMARL_EVERY = 10
HCMARL_EPISODES = 32
RETURN, WIN_RATE = "eval/return", "eval/win_rate"

Episodes = Mapping[str, Mapping[str, Sequence[float]]]
"""metric prefix (``eval``, ``eval/guider``...) -> per-episode values (``return``, ``length``, ``win``, the env's metrics)"""
UNLOGGED = ("length",)
"""Per-episode values kept in the evaluation record but not logged as a mean."""


def logged_means(keys: Iterable[str]) -> dict[str, str]:
    """Per-episode value -> the name its mean is logged under: ``win`` as ``win_rate``, the others (``return``, an env
    metric such as Connector's ``connection_rate``) under their own names; ``length`` is not logged."""
    return {key: "win_rate" if key == "win" else key for key in keys if key not in UNLOGGED}


@dataclass(frozen=True)
class EvaluationProtocol:
    """When to evaluate, with which actions and episodes, and how the final score is made.

    Attributes:
        name: ``hcmarl``, ``magpo`` or ``hcpo``.
        episodes: episodes per evaluation (per rank).
        deterministic: the policy's mode (True), sampled actions (False), or the module's ``deterministic_eval`` (None).
        every: iterations between evaluations; None: ``evaluations`` evenly spaced over the run.
        evaluations: evaluations per run when ``every`` is None.
        final: ``last`` (a final evaluation of the final parameters), ``absolute`` (the best evaluation's parameters
            re-evaluated over ``rounds`` x ``episodes`` episodes) or ``median_of_last`` (median of the last ``last``
            evaluations' scores, no further evaluation).
        rounds: batches of ``episodes`` in the final evaluation.
        last: evaluations whose median is the score (``median_of_last``).
    """

    name: str
    episodes: int
    deterministic: bool | None
    every: int | None
    evaluations: int | None
    final: FinalRule
    rounds: int = 1
    last: int = HCPO_LAST

    def evaluation_interval(self, iterations: int) -> int:
        """Iterations between evaluations in a run of ``iterations``: ``every``, or Mava's
        ``num_updates // num_evaluation`` (at least 1) for evenly spaced evaluations."""
        if self.every is not None:
            return self.every
        assert self.evaluations is not None
        return max(1, iterations // self.evaluations)

    def describe(self, iterations: int) -> str:
        """One line saying what this protocol does in a run of ``iterations`` iterations."""
        interval = self.evaluation_interval(iterations)
        actions = {True: "deterministic actions", False: "sampled actions", None: "actions as model.deterministic_eval sets them"}[self.deterministic]
        cadence = "after every iteration" if interval == 1 else f"every {interval} iterations"
        final = {
            "last": f"the final parameters evaluated over {self.episodes * self.rounds} episodes",
            "absolute": f"the absolute metric (the best evaluation's parameters re-evaluated over {self.episodes * self.rounds} episodes)",
            "median_of_last": f"the median of the last {self.last} evaluations",
        }[self.final]
        return (
            f"Evaluation protocol {self.name}: {iterations // interval} evaluations ({cadence}) of {self.episodes} episodes, "
            f"{actions}; final score: {final}"
        )


def protocol_for(name: str, env: str, eval_every: int | None = None, eval_episodes: int | None = None) -> EvaluationProtocol:
    """The preset ``name`` for the env ``env`` (``family/task``). ``hcmarl`` takes ``eval_every`` and ``eval_episodes``
    (10 and 32 when None); a preset fixes both, and a value that differs from the preset's is a ``ConfigError``."""
    if name == "hcmarl":
        every = HCMARL_EVERY if eval_every is None else eval_every
        return EvaluationProtocol("hcmarl", HCMARL_EPISODES if eval_episodes is None else eval_episodes, None, every, None, "last")
    if name == "magpo":
        preset = EvaluationProtocol("magpo", MAGPO_EPISODES, False, None, MAGPO_EVALUATIONS, "absolute", rounds=ABSOLUTE_ROUNDS)
    elif name == "hcpo":
        episodes = HCPO_CONTROL_EPISODES if env.split("/")[0] in HCPO_CONTROL_FAMILIES else HCPO_EPISODES
        preset = EvaluationProtocol("hcpo", episodes, True, 1, None, "median_of_last", last=HCPO_LAST)
    else:
        raise ConfigError(f"data.protocol={name!r} is not an evaluation protocol; choose one of {', '.join(PROTOCOLS)} (docs/report.md)")
    cadence = "after every iteration" if preset.every == 1 else f"{preset.evaluations} times, evenly spaced over the run"
    for setting, value, fixed, what in (
        ("eval_every", eval_every, preset.every, f"evaluates {cadence}"),
        ("eval_episodes", eval_episodes, preset.episodes, f"plays {preset.episodes} episodes"),
    ):
        if value is not None and value != fixed:
            raise ConfigError(
                f"data.{setting}={value} conflicts with data.protocol {name}, which {what}; drop data.{setting}, "
                f"or choose --data.protocol hcmarl to set your own (docs/report.md, Evaluation protocols)"
            )
    return preset


def check_evaluation_actions(protocol: EvaluationProtocol, deterministic_eval: bool | None) -> None:
    """Raise a ``ConfigError`` when ``model.deterministic_eval`` asks for other actions than ``protocol``'s preset
    takes (``magpo``: sampled, ``hcpo``: deterministic); None, or agreeing with the preset, passes."""
    if protocol.deterministic is None or deterministic_eval is None or deterministic_eval == protocol.deterministic:
        return
    actions = "deterministic actions" if protocol.deterministic else "sampled actions"
    raise ConfigError(
        f"model.deterministic_eval={str(deterministic_eval).lower()} conflicts with data.protocol {protocol.name}, which "
        f"evaluates {actions}; drop model.deterministic_eval, or choose --data.protocol hcmarl to set your own "
        "(docs/report.md, Evaluation protocols)"
    )


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the iteration after which it ran, the frames trained by then (over all ranks) and its episodes."""

    iteration: int
    frames: int
    episodes: Episodes

    def mean(self, metric: str) -> float:
        """The mean of ``metric`` (``eval/return``, ``eval/win_rate``, ``eval/guider/return``...) over the episodes."""
        prefix, _, name = metric.rpartition("/")
        values = self.episodes[prefix]["win" if name == "win_rate" else name]
        return float(sum(float(v) for v in values) / len(values))


@dataclass(frozen=True)
class FinalScore:
    """The run's one number: ``value`` of ``metric``, made by ``rule``, from parameters trained for ``frames``."""

    value: float
    metric: str
    rule: str
    frames: int


def score_metric(has_win: bool) -> str:
    """The metric a final score reports: the win rate where the env has wins, else the mean return."""
    return WIN_RATE if has_win else RETURN


def is_better(candidate: Evaluation, best: Evaluation | None) -> bool:
    """Whether ``candidate``'s parameters replace ``best``'s for the absolute metric: a mean return at least as
    high (Mava keeps the later parameters on a tie)."""
    return best is None or candidate.mean(RETURN) >= best.mean(RETURN)


def median_of_last(history: Sequence[Evaluation], metric: str, last: int) -> FinalScore:
    """The HCPO paper's score: the median of ``metric`` over the last ``last`` evaluations (fewer if the run had fewer)."""
    if not history:
        raise ConfigError("the hcpo protocol's score needs at least one evaluation, and the run recorded none")
    recent = history[-last:]
    value = statistics.median(e.mean(metric) for e in recent)
    rule = f"median of the last {len(recent)} evaluations (hcpo protocol)"
    return FinalScore(float(value), metric, rule, recent[-1].frames)


def absolute_metric(final: Evaluation, best: Evaluation, metric: str) -> FinalScore:
    """Mava's absolute metric: ``metric`` over ``final``, the evaluation of the parameters of ``best`` (magpo protocol)."""
    episodes = len(final.episodes["eval"]["return"])
    rule = f"absolute metric: the best evaluation's parameters (at {best.frames:,} frames) re-evaluated over {episodes} episodes (magpo protocol)"
    return FinalScore(final.mean(metric), metric, rule, best.frames)


def last_evaluation(final: Evaluation, metric: str) -> FinalScore:
    """The ``hcmarl`` protocol's score (and any protocol's when the run recorded no evaluation to choose from):
    ``metric`` over a final evaluation of the final parameters."""
    episodes = len(final.episodes["eval"]["return"])
    return FinalScore(final.mean(metric), metric, f"the final parameters evaluated over {episodes} episodes", final.frames)
