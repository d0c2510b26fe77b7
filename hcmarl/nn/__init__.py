"""Networks: actors, critics, conductors, guiders and the vectorised per-agent layers they are made of."""

from hcmarl.nn.actors import Actor, MLPActor
from hcmarl.nn.conductor import ConductorNetwork, LocalConductors
from hcmarl.nn.critics import AgentValue, CentralValue, InstructionCritic, ValueNetwork
from hcmarl.nn.guider import GuiderNetwork, MATGuider
from hcmarl.nn.layers import AgentLinear, AgentMLP, RMSNorm, SwiGLU
from hcmarl.nn.recurrent import GRUActor
from hcmarl.nn.recurrent_critics import RecurrentAgentValue, RecurrentCentralValue, RecurrentValue
from hcmarl.nn.sable import SableGuider

__all__ = [
    "Actor",
    "MLPActor",
    "GRUActor",
    "CentralValue",
    "AgentValue",
    "RecurrentCentralValue",
    "RecurrentAgentValue",
    "RecurrentValue",
    "InstructionCritic",
    "ValueNetwork",
    "ConductorNetwork",
    "LocalConductors",
    "GuiderNetwork",
    "MATGuider",
    "SableGuider",
    "AgentLinear",
    "AgentMLP",
    "RMSNorm",
    "SwiGLU",
]
