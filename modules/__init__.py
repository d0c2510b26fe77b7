"""Lightning-side code: the roles (learner, critic, conductor) and the composite module that trains them."""

from hcmarl.modules.conductor import Conductor
from hcmarl.modules.critic import Critic
from hcmarl.modules.learner import Learner
from hcmarl.modules.marl import MARLModule

__all__ = ["Conductor", "Critic", "Learner", "MARLModule"]
