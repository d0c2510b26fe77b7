"""Lightning-side code: the roles (learner, critic, conductor, guider) and the composite module that trains them."""

from hcmarl.modules.conductor import Conductor
from hcmarl.modules.critic import Critic
from hcmarl.modules.guider import Guider
from hcmarl.modules.learner import Learner
from hcmarl.modules.marl import MARLModule

__all__ = ["Conductor", "Critic", "Guider", "Learner", "MARLModule"]
