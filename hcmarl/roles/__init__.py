"""The roles an algorithm is composed of (DESIGN.md, "Layers"): each holds its networks, its update rule and its optimiser.

No Lightning here: ``hcmarl.modules.MARLModule`` is the glue that trains them, and ``hcmarl.iteration``
the plan of stages one iteration runs over them.
"""

from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider, GuiderMemory
from hcmarl.roles.learner import Learner
from hcmarl.roles.policy import ActingPolicy
from hcmarl.roles.team import Roles

__all__ = ["ActingPolicy", "Conductor", "Critic", "Guider", "GuiderMemory", "Learner", "Roles"]
