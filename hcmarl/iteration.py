"""One training iteration without Lightning: the plan of stages built once from the roles a recipe names.

DESIGN.md, "One iteration", step 2: values and advantages once (``hcmarl.value_sources``), then the
stages in a fixed order (``hcmarl.stages``): conductor; guider and learner (MAGPO's joint loop), or the
guider then the learner, or the learner alone; critic; local conductors. ``plan_iteration`` is the one
place that knows which roles go together: a combination that cannot train is a ConfigError saying
that no plan can be built, naming the key to change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase

from hcmarl.errors import ConfigError
from hcmarl.extra_role import ExtraRole
from hcmarl.guided import GuidedImitation
from hcmarl.nn.critics import CentralValue, InstructionCritic
from hcmarl.optim import GradientStep
from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider
from hcmarl.roles.learner import Learner
from hcmarl.roles.team import Roles
from hcmarl.stages import (
    ConductorStage,
    CriticStage,
    GuiderStage,
    IterationContext,
    JointGuidedStage,
    LearnerStage,
    LocalConductorStage,
    Metrics,
    Stage,
)
from hcmarl.value_sources import AdvantageNorm, Advantages, Truncation, value_source

OPTIMIZER_ORDER = ("learner", "critic", "conductor", "local", "guider")  # the order of the optimisers (and of checkpoints' states)
OptimizerFactory = Callable[[], torch.optim.Optimizer]


@dataclass
class IterationPlan:
    """What one iteration runs: ``advantages`` once, then ``stages`` in order, and the optimisers the stages step.

    ``optimizers`` maps each optimiser's name to the function that makes it, in ``OPTIMIZER_ORDER``.
    """

    advantages: Advantages
    stages: list[Stage]
    optimizers: dict[str, OptimizerFactory]

    def run(self, batch: TensorDictBase, steps: Mapping[str, GradientStep]) -> Metrics:
        """Advantages, then every stage, on a rollout ``[envs, time]``; ``steps`` by optimiser name. Returns the metrics."""
        self.advantages(batch)
        return self.run_stages(IterationContext(batch, steps))

    def run_stages(self, context: IterationContext) -> Metrics:
        """Every stage in order on a context whose rollout already holds its advantages; the stages' metrics."""
        metrics: Metrics = {}
        for stage in self.stages:
            metrics |= stage.run(context)
        return metrics

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per name, in ``OPTIMIZER_ORDER``."""
        return {name: make() for name, make in self.optimizers.items()}


def plan_iteration(
    roles: Roles, gamma: float = 0.99, gae_lambda: float = 0.95, advantage_norm: AdvantageNorm = "batch", truncation: Truncation = "bootstrap"
) -> IterationPlan:
    """The plan for the roles a recipe names (ALGORITHMS.md sections 2, 3 and 4), or a ConfigError if none can be built.

    Learner + critic: MAPPO, IPPO, HAPPO, HATRPO, HAA2C, A2PO. With a conductor: HCPO. A guider and a learner: MAGPO,
    CTDS (joint loop with ``GuidedClip``; otherwise the guider, then the learner imitating it). A guider alone: MAT.
    Extra roles (``hcmarl.extra_role.ExtraRole``) run last, in their order, each with its own optimiser.
    """
    learner, critic, conductor, guider = roles.learner, roles.critic, roles.conductor, roles.guider
    problem = _role_problem(learner, critic, conductor, guider) or _extra_role_problem(roles.extra)
    if problem is not None:
        raise ConfigError(f"no iteration plan can be built from this recipe's roles: {problem}")
    if truncation not in ("bootstrap", "terminal"):
        raise ConfigError(f"model.truncation must be bootstrap or terminal, got {truncation!r}")
    stages: list[Stage] = []
    if conductor is not None:
        stages.append(ConductorStage(conductor))
    if guider is not None and guider.joint:
        stages.append(JointGuidedStage(guider, learner, train_value=critic is None))
    else:
        if guider is not None:
            stages.append(GuiderStage(guider, learner))
        if learner is not None:
            stages.append(LearnerStage(learner))
    if critic is not None:
        stages.append(CriticStage(critic))
    if conductor is not None:
        stages.append(LocalConductorStage(conductor))
    stages += roles.extra
    optimizers = _optimizer_factories(learner, critic, conductor, guider) | {role.name: role.make_optimizer for role in roles.extra}
    instruction_critic = critic if conductor is not None and critic is not None and isinstance(critic.network, InstructionCritic) else None
    advantages = Advantages(
        value_source(critic, conductor, guider), gamma, gae_lambda, advantage_norm, instruction_critic, conductor is not None, truncation
    )
    return IterationPlan(advantages, stages, optimizers)


def _optimizer_factories(
    learner: Learner | None, critic: Critic | None, conductor: Conductor | None, guider: Guider | None
) -> dict[str, OptimizerFactory]:
    """Each present role's optimiser factories, in ``OPTIMIZER_ORDER`` (the conductor has two: central and local)."""
    factories: dict[str, OptimizerFactory] = {}
    if learner is not None:
        factories["learner"] = learner.make_optimizer
    if critic is not None:
        factories["critic"] = critic.make_optimizer
    if conductor is not None:
        factories["conductor"], factories["local"] = conductor.make_optimizer, conductor.make_local_optimizer
    if guider is not None:
        factories["guider"] = guider.make_optimizer
    return factories


def _extra_role_problem(extra: tuple[ExtraRole, ...]) -> str | None:
    """What is wrong with the extra roles' names (each names an optimiser, so it must be new and unique), or None."""
    names = [getattr(role, "name", None) for role in extra]
    for name in names:
        if not isinstance(name, str) or not name:
            return "each of model.extra_roles needs a class attribute `name` (its optimiser's name and metric prefix)"
        if name in OPTIMIZER_ORDER or names.count(name) > 1:
            return f"model.extra_roles: the name {name!r} is taken (built-in roles: {', '.join(OPTIMIZER_ORDER)}); give each extra role its own"
    return None


def _role_problem(learner: Learner | None, critic: Critic | None, conductor: Conductor | None, guider: Guider | None) -> str | None:
    """What stops these roles from training together, naming the key to change (None: nothing)."""
    if learner is None and guider is None:
        return "a recipe needs a model.learner (decentralised actors) or a model.guider (MAT), or both (MAGPO)"
    if critic is None and guider is None:
        return "model.critic is missing: only a model.guider's value head can stand in for it; add a critic (see recipes/mappo/)"
    if conductor is not None and critic is None:
        return (
            "model.conductor needs a model.critic with hcmarl.nn.InstructionCritic (Q(s, .), one head per instruction) "
            "or hcmarl.nn.CentralValue (the paper's global V(s)): its advantages come from it (ALGORITHMS.md section 3); "
            "add one (see recipes/hcpo/)"
        )
    if conductor is not None and critic is not None and not isinstance(critic.network, (InstructionCritic, CentralValue)):
        return (
            f"model.conductor is set, and HCPO's critic reads the global state: model.critic.init_args.network is "
            f"{type(critic.network).__name__}; set its class_path to hcmarl.nn.CentralValue (the paper's V(s)) or "
            "hcmarl.nn.InstructionCritic (Q(s, .), one head per instruction)"
        )
    if conductor is None and critic is not None and isinstance(critic.network, InstructionCritic):
        return (
            "model.critic.init_args.network is hcmarl.nn.InstructionCritic, whose heads are a conductor's "
            "instructions, but the recipe has no model.conductor; add one (see recipes/hcpo/) or use hcmarl.nn.CentralValue"
        )
    if guider is not None and conductor is not None and learner is None:
        return "model.conductor with a model.guider needs a model.learner too (the local conductors instruct the deployed learner)"
    if guider is not None and not guider.joint and critic is None:
        return (
            f"model.guider.constraint is {type(guider.constraint).__name__}, which moves the guider's policy only: "
            "its value head is trained by GuidedClip's loop alone; add a model.critic (see recipes/magpo_trust_region/)"
        )
    if guider is None and learner is not None and isinstance(learner.constraint, GuidedImitation):
        return (
            "model.learner.constraint is hcmarl.guided.GuidedImitation, which imitates a guider, but the recipe has no "
            "model.guider; add one (see recipes/magpo/) or use hcmarl.constraints.ClipPPO"
        )
    delta = math.inf if guider is None else getattr(guider.constraint, "delta", math.inf)
    if guider is not None and learner is None and not math.isinf(delta):
        return (
            f"model.guider.constraint.delta={delta}: the double clip holds the guider near a learner, "
            "and this recipe has none (MAT alone); set delta: .inf, or add a model.learner using GuidedImitation"
        )
    if guider is not None and learner is not None:
        return guider.learner_problem(learner)
    return None
