"""Networks: actors, critics and the vectorised per-agent layers they are made of."""

from hcmarl.nn.actors import Actor, MLPActor
from hcmarl.nn.critics import AgentValue, CentralValue, ValueNetwork
from hcmarl.nn.layers import AgentLinear, AgentMLP
from hcmarl.nn.recurrent import GRUActor

__all__ = ["Actor", "MLPActor", "GRUActor", "CentralValue", "AgentValue", "ValueNetwork", "AgentLinear", "AgentMLP"]
