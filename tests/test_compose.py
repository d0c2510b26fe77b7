"""Compositions of blocks that no shipped recipe uses (docs/tutorial.md, "Which blocks compose with which"): each one
collects a rollout with its behaviour policy and runs one iteration's updates with finite losses."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs import TransformedEnv

from hcmarl.constraints import ClipPPO, Distill
from hcmarl.envs import make_env
from hcmarl.guided import GuidedImitation, GuidedTrustRegion
from hcmarl.modules import Conductor, Critic, Guider, Learner, MARLModule
from hcmarl.modules.marl import LOSS_METRICS
from hcmarl.nn import CentralValue, ConductorNetwork, GRUActor, InstructionCritic, LocalConductors, MATGuider, MLPActor, SableGuider
from hcmarl.optim import GradientStep
from hcmarl.schedules import Sequential, Simultaneous
from hcmarl.trust_region import TrustRegion


def _conductor() -> Conductor:
    return Conductor(ConductorNetwork(), LocalConductors(), TrustRegion(), Distill(), n_instructions=4)


def _imitation() -> GuidedImitation:
    return GuidedImitation(epochs=2, minibatches=2)


COMPOSITIONS: dict[str, Callable[[], MARLModule]] = {
    "conductor over a trust-region guider and sequential learners": lambda: MARLModule(
        conductor=_conductor(),
        guider=Guider(MATGuider(embed_dim=16), GuidedTrustRegion(fisher_fraction=0.5)),
        learner=Learner(MLPActor(share_params=False), _imitation(), Sequential()),
        critic=Critic(InstructionCritic()),
    ),
    "Sable guider moved by GuidedTrustRegion": lambda: MARLModule(
        guider=Guider(SableGuider(embed_dim=16, n_heads=2), GuidedTrustRegion()),
        learner=Learner(MLPActor(), _imitation(), Simultaneous()),
        critic=Critic(CentralValue()),
    ),
    "MAT moved by TrustRegion": lambda: MARLModule(guider=Guider(MATGuider(embed_dim=16), TrustRegion()), critic=Critic(CentralValue())),
    "MAT moved by ClipPPO": lambda: MARLModule(guider=Guider(MATGuider(embed_dim=16), ClipPPO(minibatches=2)), critic=Critic(CentralValue())),
    "HCPO with GRU agents": lambda: MARLModule(
        conductor=_conductor(), learner=Learner(GRUActor(share_params=False), TrustRegion(), Sequential()), critic=Critic(InstructionCritic())
    ),
}


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_a_composition_collects_and_updates(name: str) -> None:
    torch.manual_seed(0)
    module = COMPOSITIONS[name]()
    env = make_env("coordsum/3x10", num_envs=4, seed=0)
    module.build(env.info)
    env = TransformedEnv(env)
    for transform in module.env_transforms():
        env.append_transform(transform)
    policy = module.behaviour_policy()
    collector = Collector(env, policy, frames_per_batch=4 * 16, total_frames=-1, trust_policy=True, auto_register_policy_transforms=False)
    if policy.begin_rollout is not None:
        policy.begin_rollout()
    batch = next(iter(collector))
    module.compute_advantages(batch)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    metrics = module.update_roles(batch, [GradientStep(opt) for opt in module.configure_optimizers()])
    losses = [float(metrics[k]) for k in LOSS_METRICS if k in metrics]
    assert losses and all(math.isfinite(v) for v in losses)
    policy_roles = [role for role in ("guider", "learner") if getattr(module, role) is not None]
    for role in policy_roles:  # every policy role moved
        assert any(not torch.equal(v, before[k]) for k, v in module.state_dict().items() if k.startswith(f"{role}.")), role
