"""Where an iteration's values come from, and the advantages computed from them once per iteration.

``value_source`` is the one place that decides: a critic role's V (MAPPO, HATRPO, MAGPO with a critic, and HCPO
as its paper ran it: one global V(s)), the guider's value head (MAGPO, MAT without a critic), or, with a conductor
and an ``InstructionCritic``, the mixture V(s) = sum_M w_old(M|s) Q(s, M) of its heads (ALGORITHMS.md section 3,
"Critic": the two readings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from tensordict import TensorDictBase

from hcmarl.advantages import conductor_mixture_value, generalized_advantage_estimate, instruction_advantages, normalize_advantage
from hcmarl.keys import ADVANTAGE, CONDUCTOR_ADVANTAGE, CONDUCTOR_PROBS, OBSERVATION, REWARD, VALUE, VALUE_TARGET
from hcmarl.nn.critics import InstructionCritic
from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider

AdvantageNorm = Literal["batch", "agent", "none"]
Truncation = Literal["bootstrap", "terminal"]
"""How GAE reads a time-limit end: ``bootstrap`` from the value of the last observation (ALGORITHMS.md section 1), or
as ``terminal`` like every other episode end (the official MAGPO code, Mava's ``done = timestep.last()``)."""


class ValueSource(Protocol):
    """Each agent's value, in return units, of every step of a rollout ``[E, T]`` and of its next observation: ``[E, T, N]`` each."""

    def __call__(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class CriticValues:
    """The critic role's V(s) or V(o_i) (a recurrent one replayed over each env's rollout: ``Critic.rollout_values``)."""

    critic: Critic

    def __call__(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        return self.critic.rollout_values(batch)


@dataclass
class GuiderValues:
    """The guider's value head, replayed over the rollout from the state it started in (a recurrent guider)."""

    guider: Guider

    def __call__(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        return self.guider.rollout_values(batch, self.guider.rollout_start_state())


@dataclass
class ConductorMixtureValues:
    """V(s) = sum_M w(M|s) Q(s, M), repeated over the N agents: w_old as collected for s_t, the current w for s_{t+1}."""

    critic: Critic
    conductor: Conductor

    def __call__(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        following = batch.get("next")
        return self._mixture(batch, batch.get(CONDUCTOR_PROBS)), self._mixture(following, self.conductor.central(following).probs)

    def _mixture(self, td: TensorDictBase, probs: torch.Tensor) -> torch.Tensor:
        value = conductor_mixture_value(self.critic.instruction_values(td), probs)
        return value.unsqueeze(-1).expand(*value.shape, td.get(OBSERVATION).shape[-2])


def value_source(critic: Critic | None, conductor: Conductor | None, guider: Guider | None) -> ValueSource:
    """The values an iteration's advantages use: the conductor mixture (a conductor with an ``InstructionCritic``),
    else the critic (HCPO's paper reading too: a conductor with ``CentralValue``), else the guider's value head."""
    if conductor is not None and critic is not None and isinstance(critic.network, InstructionCritic):
        return ConductorMixtureValues(critic, conductor)
    if critic is not None:
        return CriticValues(critic)
    if guider is not None:
        return GuiderValues(guider)
    raise ValueError("no value source: a critic or a guider is needed")


@dataclass
class Advantages:
    """GAE from the old values, written into the rollout once per iteration (ALGORITHMS.md sections 1 and 3).

    Writes the values ``VALUE``, the lambda-returns ``VALUE_TARGET`` and the (normalised) advantages ``ADVANTAGE``.
    With a ``conductor`` (HCPO) it also writes the conductor's A^M = A^GAE as ``CONDUCTOR_ADVANTAGE`` (a team
    quantity, agent 0's column), normalised on its own. The agents' advantage is A^GAE too with a global V(s)
    (the paper's Algorithm 1, lines 1 and 5), or A^a = G - Q(s, M_t) with an ``instruction_critic`` (the K-head
    reading of Eqs. 5-7).
    """

    values: ValueSource
    gamma: float = 0.99
    gae_lambda: float = 0.95
    norm: AdvantageNorm = "batch"
    instruction_critic: Critic | None = None
    conductor: bool = False
    truncation: Truncation = "bootstrap"

    @torch.no_grad()
    def __call__(self, batch: TensorDictBase) -> None:
        value, next_value = self.values(batch)
        advantage = generalized_advantage_estimate(
            batch.get(("next", REWARD)),
            value,
            next_value,
            batch.get(("next", "terminated" if self.truncation == "bootstrap" else "done")),
            batch.get(("next", "done")),
            self.gamma,
            self.gae_lambda,
        )
        batch.set(VALUE, value)
        batch.set(VALUE_TARGET, advantage + value)
        if self.instruction_critic is not None or self.conductor:
            conductor_advantage = advantage
            if self.instruction_critic is not None:
                conductor_advantage, advantage = instruction_advantages(advantage, value, self.instruction_critic.value(batch))
            conductor_advantage = conductor_advantage[..., 0]  # a team quantity, the same for every agent
            if self.norm != "none":
                conductor_advantage = normalize_advantage(conductor_advantage)
            batch.set(CONDUCTOR_ADVANTAGE, conductor_advantage)
        if self.norm != "none":
            advantage = normalize_advantage(advantage, per_agent=self.norm == "agent")
        batch.set(ADVANTAGE, advantage)
