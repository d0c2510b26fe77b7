"""Lightning-side code: the roles (learner, critic, conductor, guider) and the composite module that trains them."""

from hcmarl.modules.marl import MARLModule
from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider
from hcmarl.roles.learner import Learner

__all__ = ["Conductor", "Critic", "Guider", "Learner", "MARLModule"]
