"""The roles one recipe names, together: building their networks for an env, the transforms and batch checks they need.

What couples the roles at build time lives here: a conductor's K instructions are read by the
guider's and the learner's networks (when K > 1) and are the instruction critic's heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchrl.envs import InitTracker, Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider
from hcmarl.roles.learner import Learner

if TYPE_CHECKING:
    from hcmarl.extra_role import ExtraRole


@dataclass(frozen=True)
class Roles:
    """The learner, critic, conductor and guider a recipe names (None: absent), and its extra roles."""

    learner: Learner | None = None
    critic: Critic | None = None
    conductor: Conductor | None = None
    guider: Guider | None = None
    extra: tuple[ExtraRole, ...] = ()

    def build(self, info: EnvInfo) -> None:
        """Create every role's networks for the env described by ``info`` (in a fixed order: conductor, guider, learner,
        critic, the extra roles, so a seed gives the same initial parameters)."""
        n_instructions = 0
        if self.conductor is not None:
            self.conductor.build(info)
            n_instructions = self.conductor.n_instructions
        # with one instruction (K = 1) the actors read nothing more: the instruction carries no information
        read_instructions = n_instructions if n_instructions > 1 else 0
        if self.guider is not None:
            self.guider.build(info, read_instructions)
        if self.learner is not None:
            self.learner.build(info, read_instructions)
        if self.critic is not None:
            self.critic.build(info, n_instructions)
        for role in self.extra:
            role.build(info)

    def env_transforms(self) -> list[Transform]:
        """TorchRL transforms the envs need for the roles' networks (e.g. a recurrent state primer, episode-start flags),
        learner's, guider's and critic's in that order, with one ``InitTracker``."""
        transforms = [] if self.learner is None else self.learner.actor.env_transforms()
        if self.guider is not None:
            transforms += self.guider.env_transforms()
        if self.critic is not None:
            transforms += self.critic.env_transforms()
        tracker = next((t for t in transforms if isinstance(t, InitTracker)), None)
        return [t for t in transforms if t is tracker or not isinstance(t, InitTracker)]

    def check_batch(self, num_envs: int, frames_per_batch: int) -> None:
        """ConfigErrors for minibatch settings the rollout is too small for."""
        if self.learner is not None:
            self.learner.check_batch(num_envs, frames_per_batch)
        if self.critic is not None:
            self.critic.check_batch(num_envs, frames_per_batch)
        if self.guider is not None:
            self.guider.check_batch(num_envs, frames_per_batch, self.learner is not None and self.learner.actor.recurrent)
