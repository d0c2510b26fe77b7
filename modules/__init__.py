"""Lightning-side code: the roles (learner, critic) and the composite module that trains them."""

from hcmarl.modules.critic import Critic
from hcmarl.modules.learner import Learner
from hcmarl.modules.marl import MARLModule

__all__ = ["Critic", "Learner", "MARLModule"]
