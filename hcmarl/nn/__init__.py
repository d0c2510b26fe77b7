"""Networks: actors, critics and the vectorised per-agent layers they are made of."""

from hcmarl.nn.actors import MLPActor
from hcmarl.nn.critics import AgentValue, CentralValue, ValueNetwork
from hcmarl.nn.layers import AgentLinear, AgentMLP

__all__ = ["MLPActor", "CentralValue", "AgentValue", "ValueNetwork", "AgentLinear", "AgentMLP"]
