"""The iteration as a plan of stages (``hcmarl.iteration``), without Lightning: which stages each composition runs, where
its values come from, the error when no plan exists, and a new role plugged in as a stage with no edit to the plan's code."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hcmarl.constraints import ClipPPO, Distill
from hcmarl.envs import make_env
from hcmarl.errors import ConfigError, NonFiniteLossError
from hcmarl.extra_role import ExtraRole
from hcmarl.guided import GuidedClip, GuidedImitation, GuidedTrustRegion
from hcmarl.iteration import OPTIMIZER_ORDER, plan_iteration
from hcmarl.keys import ADVANTAGE, OBSERVATION
from hcmarl.modules import MARLModule
from hcmarl.nn import AgentValue, CentralValue, ConductorNetwork, InstructionCritic, LocalConductors, MATGuider, MLPActor
from hcmarl.optim import GradientStep
from hcmarl.roles import Conductor, Critic, Guider, Learner, Roles
from hcmarl.schedules import Sequential, Simultaneous
from hcmarl.stages import (
    ConductorStage,
    CriticStage,
    GuiderStage,
    IterationContext,
    JointGuidedStage,
    LearnerStage,
    LocalConductorStage,
    Metrics,
)
from hcmarl.trust_region import TrustRegion
from hcmarl.value_sources import ConductorMixtureValues, CriticValues, GuiderValues


def _learner(constraint=None, schedule=None) -> Learner:
    return Learner(MLPActor(hidden_sizes=[16], share_params=False), constraint or ClipPPO(epochs=1), schedule or Simultaneous())


def _conductor() -> Conductor:
    return Conductor(ConductorNetwork(hidden_sizes=[16]), LocalConductors(hidden_sizes=[16]), TrustRegion(), Distill(epochs=1), n_instructions=3)


PLANS = {
    "MAPPO": (lambda: dict(learner=_learner(), critic=Critic(CentralValue())), [LearnerStage, CriticStage], CriticValues),
    "HCPO": (
        lambda: dict(learner=_learner(TrustRegion(), Sequential()), critic=Critic(InstructionCritic()), conductor=_conductor()),
        [ConductorStage, LearnerStage, CriticStage, LocalConductorStage],
        ConductorMixtureValues,
    ),
    "MAGPO": (
        lambda: dict(learner=_learner(GuidedImitation()), guider=Guider(MATGuider(embed_dim=16), GuidedClip())),
        [JointGuidedStage],
        GuiderValues,
    ),
    "MAT": (lambda: dict(guider=Guider(MATGuider(embed_dim=16), GuidedClip(delta=math.inf))), [JointGuidedStage], GuiderValues),
    "trust-region guider": (
        lambda: dict(
            learner=_learner(GuidedImitation(epochs=1, minibatches=1)),
            guider=Guider(MATGuider(embed_dim=16), GuidedTrustRegion()),
            critic=Critic(CentralValue()),
        ),
        [GuiderStage, LearnerStage, CriticStage],
        CriticValues,
    ),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_each_composition_plans_its_stages_in_order_and_its_value_source(name: str) -> None:
    roles, stage_types, values = PLANS[name]
    roles = roles()
    plan = plan_iteration(Roles(**roles))
    assert [type(stage) for stage in plan.stages] == stage_types
    assert type(plan.advantages.values) is values
    expected_optimizers = [n for n in OPTIMIZER_ORDER if (roles.get("conductor") if n == "local" else roles.get(n)) is not None]
    assert list(plan.optimizers) == expected_optimizers


@pytest.mark.parametrize(
    "roles, key",
    [
        (lambda: dict(critic=Critic(CentralValue())), "model.learner"),
        (lambda: dict(learner=_learner()), "model.critic is missing"),
        (lambda: dict(learner=_learner(), critic=Critic(AgentValue()), conductor=_conductor()), "InstructionCritic"),
        (lambda: dict(learner=_learner(), critic=Critic(InstructionCritic())), "no model.conductor"),
        (lambda: dict(learner=_learner(GuidedImitation()), critic=Critic(CentralValue())), "GuidedImitation"),
        (lambda: dict(guider=Guider(MATGuider(), GuidedClip(delta=1.5))), "delta"),
        (lambda: dict(learner=_learner(GuidedImitation()), guider=Guider(MATGuider(), GuidedTrustRegion())), "add a model.critic"),
    ],
)
def test_roles_that_cannot_train_together_have_no_plan(roles, key: str) -> None:
    with pytest.raises(ConfigError, match="no iteration plan can be built") as error:
        plan_iteration(Roles(**roles()))
    assert key in str(error.value)


class Teacher(nn.Module):
    """A toy role no plan knows: a linear head that learns to predict each agent's advantage from its observation."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(obs_dim, 1)

    def loss(self, flat) -> torch.Tensor:
        prediction = self.head(flat.get(OBSERVATION)).squeeze(-1)
        return (prediction - flat.get(ADVANTAGE)).square().mean()


@dataclass
class TeacherStage:
    """A stage for the toy role: reads the context's flat batch, steps its own optimiser, returns metrics."""

    teacher: Teacher

    def run(self, context: IterationContext) -> Metrics:
        loss = self.teacher.loss(context.flat)
        context.steps["teacher"](loss)
        return {"teacher/loss": loss.detach()}


def test_a_new_role_plugs_in_as_a_stage_without_editing_the_iteration() -> None:
    torch.manual_seed(0)
    env = make_env("coordsum/3x10", num_envs=4, seed=0)
    learner, critic = _learner(), Critic(CentralValue(hidden_sizes=[16]))
    learner.build(env.info)
    critic.build(env.info)
    plan = plan_iteration(Roles(learner=learner, critic=critic))
    teacher = Teacher(env.info.obs_dim)
    plan.stages.append(TeacherStage(teacher))
    steps = {name: GradientStep(optimizer) for name, optimizer in plan.make_optimizers().items()}
    steps["teacher"] = GradientStep(torch.optim.SGD(teacher.parameters(), lr=0.1))
    batch = env.rollout(8, lambda td: learner.act(td), break_when_any_done=False)
    before = [p.detach().clone() for p in (*learner.parameters(), *teacher.parameters())]

    metrics = plan.run(batch, steps)

    assert {"learner/policy_loss", "critic/value_loss", "teacher/loss"} <= set(metrics)
    after = list(learner.parameters()) + list(teacher.parameters())
    learner_count = len(list(learner.parameters()))
    assert any(not torch.equal(b, a) for b, a in zip(before[:learner_count], after[:learner_count], strict=True)), "the learner did not move"
    assert all(not torch.equal(b, a) for b, a in zip(before[learner_count:], after[learner_count:], strict=True)), "the teacher did not move"


class Echo(ExtraRole):
    """An extra role whose name may clash: one parameter, pulled towards the mean advantage."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def build(self, info) -> None:
        self.level = nn.Parameter(torch.zeros(()))

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def run(self, context: IterationContext) -> Metrics:
        loss = (self.level - context.flat.get(ADVANTAGE).mean()).square()
        context.steps[self.name](loss)
        return {f"{self.name}/loss": loss.detach()}


@pytest.mark.parametrize("names", [["critic"], ["echo", "echo"]])
def test_extra_roles_need_their_own_names(names: list[str]) -> None:
    with pytest.raises(ConfigError, match="is taken"):
        plan_iteration(Roles(learner=_learner(), critic=Critic(CentralValue()), extra=tuple(Echo(n) for n in names)))


def test_extra_roles_run_last_with_their_own_optimisers() -> None:
    roles = Roles(learner=_learner(), critic=Critic(CentralValue()), extra=(Echo("echo"), Echo("other")))
    plan = plan_iteration(roles)
    assert [type(stage) for stage in plan.stages] == [LearnerStage, CriticStage, Echo, Echo]
    assert list(plan.optimizers) == ["learner", "critic", "echo", "other"]


def test_a_non_finite_extra_role_loss_stops_training() -> None:
    module = MARLModule(learner=_learner(), critic=Critic(CentralValue()), extra_roles=[Echo("echo")])
    module._check_finite({"learner/policy_loss": torch.tensor(0.5), "echo/loss": torch.tensor(1.0)})
    with pytest.raises(NonFiniteLossError, match="echo/loss"):
        module._check_finite({"learner/policy_loss": torch.tensor(0.5), "echo/loss": torch.tensor(float("nan"))})
