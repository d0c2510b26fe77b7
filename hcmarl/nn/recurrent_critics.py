"""Recurrent value networks: V(s) and V(o_i) through a GRU (Mava's ``RecurrentValueNet``, the critic of rec_mappo/rec_ippo).

Pre-torso (one layer and the activation), GRU cell, post-torso (``post_hidden_sizes``) and a linear value head, as
``hcmarl.nn.GRUActor`` is for the policy. During rollouts the hidden state travels in the TensorDict at
``CRITIC_RNN_STATE`` ``[E, G, H]`` (G = 1 for V(s), N for V(o_i)): the env's primer zeroes it at every reset, and ``step``
(called by the behaviour policy, ``hcmarl.acting.advancing_critic``) writes the next one under ``"next"``. In training,
``forward`` replays each env's rollout ``[b, T]`` from the state stored at its first step, zeroing it where ``is_init``
marks a new episode, so the replayed values equal those ``step`` gave during the rollout; ``rollout_values`` adds the
value of each step's next observation, from the state that step left (the bootstrap of GAE).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import InitTracker, TensorDictPrimer, Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.keys import CRITIC_RNN_STATE, IS_INIT, OBSERVATION, STATE
from hcmarl.nn.actors import agent_id_features
from hcmarl.nn.critics import ValueNetwork
from hcmarl.nn.layers import AgentLinear, AgentMLP, activation_class
from hcmarl.nn.recurrent import AgentGRUCell, replay_states


class RecurrentValue(ValueNetwork):
    """Pre-torso -> GRU cell -> post-torso -> value head, its state carried through each env's rollout.

    Mava's ``rnn.yaml`` critic (``[128]`` ReLU, GRU(128), ``[128]`` ReLU, value head) is ``hidden_size=128,
    post_hidden_sizes=[128], activation="relu"``.

    Args:
        hidden_size: width of the pre-torso layer and of the GRU state.
        post_hidden_sizes: widths of the layers (each followed by the activation) between the GRU state and the value
            head; empty (the default): the head reads the GRU state.
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
    """

    recurrent = True

    def __init__(self, hidden_size: int = 64, post_hidden_sizes: Sequence[int] = (), activation: str = "tanh") -> None:
        super().__init__(post_hidden_sizes, activation)
        self.hidden_size = hidden_size
        self.n_states = 0

    @abstractmethod
    def inputs(self, td: TensorDictBase) -> torch.Tensor:
        """What the pre-torso reads, ``[..., G, D]``."""

    def build_layers(self, info: EnvInfo, in_dim: int, n_states: int, n_groups: int) -> None:
        """Layers for inputs of ``in_dim`` features, ``n_states`` GRU states per env, ``n_groups`` parameter sets."""
        self.n_agents = info.n_agents
        self.n_states = n_states
        self.encoder = nn.Sequential(AgentLinear(in_dim, self.hidden_size, n_groups), activation_class(self.activation)())
        self.cell = AgentGRUCell(self.hidden_size, self.hidden_size, n_groups)
        self.net = AgentMLP(self.hidden_size, self.hidden_sizes, 1, n_groups, self.activation)

    def env_transforms(self) -> list[Transform]:
        """Episode-start flags and the primer that zeroes ``CRITIC_RNN_STATE`` at every reset."""
        return [InitTracker(), TensorDictPrimer({CRITIC_RNN_STATE: Unbounded(shape=(self.n_states, self.hidden_size))}, expand_specs=True)]

    def encode(self, td: TensorDictBase) -> torch.Tensor:
        """The pre-torso's features, ``[..., G, H]``."""
        linear, activation = self.encoder
        return activation(linear(self.inputs(td)))

    def values(self, states: torch.Tensor) -> torch.Tensor:
        """Post-torso and head on GRU states ``[..., G, H]``: values ``[..., N]`` (one state's value repeated over the agents)."""
        value = self._check_built()(states).squeeze(-1)
        return value.expand(*value.shape[:-1], self.n_agents)

    def step(self, td: TensorDictBase) -> torch.Tensor:
        """One rollout step ``[E]``: reads ``CRITIC_RNN_STATE``, writes the next state at ``("next", CRITIC_RNN_STATE)``;
        returns the values ``[E, N]``."""
        h = self.cell(self.encode(td), td.get(CRITIC_RNN_STATE))
        td.set(("next", CRITIC_RNN_STATE), h)
        return self.values(h)

    def replay(self, td: TensorDictBase) -> torch.Tensor:
        """The state after each step of rollouts ``[b, T]`` (``hcmarl.nn.recurrent.replay_states``), ``[b, T, G, H]``."""
        return replay_states(self.cell, self.encode(td), td.get(IS_INIT), td.get(CRITIC_RNN_STATE)[:, 0])

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        """Values of rollouts ``[b, T]`` replayed from their stored first state, ``[b, T, N]``."""
        return self.values(self.replay(td))

    def rollout_values(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s values of rollouts ``[b, T]`` and of each step's next observation, read by the GRU from the state
        that step left (no reset: the next observation of a final step still belongs to its episode); ``[b, T, N]`` each."""
        states = self.replay(td)
        return self.values(states), self.values(self.cell(self.encode(td.get("next")), states))


class RecurrentCentralValue(RecurrentValue):
    """V(s) on the global state ``state`` through a GRU, one state per env, repeated over the N agents (MAPPO's recurrent
    critic; the recurrent ``hcmarl.nn.CentralValue``)."""

    in_keys = [STATE, IS_INIT, CRITIC_RNN_STATE]

    def build(self, info: EnvInfo) -> None:
        self.build_layers(info, info.state_dim, n_states=1, n_groups=1)

    def inputs(self, td: TensorDictBase) -> torch.Tensor:
        return td.get(STATE).unsqueeze(-2)


class RecurrentAgentValue(RecurrentValue):
    """V(o_i) for each agent on its own observation through a GRU, one state per agent (IPPO's recurrent critic; the
    recurrent ``hcmarl.nn.AgentValue``), shared or per-agent parameters, with the one-hot agent id if ``agent_id``."""

    in_keys = [OBSERVATION, IS_INIT, CRITIC_RNN_STATE]

    def __init__(
        self,
        hidden_size: int = 64,
        post_hidden_sizes: Sequence[int] = (),
        activation: str = "tanh",
        share_params: bool = True,
        agent_id: bool = False,
    ) -> None:
        super().__init__(hidden_size, post_hidden_sizes, activation)
        self.share_params = share_params
        self.agent_id = agent_id

    def build(self, info: EnvInfo) -> None:
        in_dim = info.obs_dim + (info.n_agents if self.agent_id else 0)
        self.build_layers(info, in_dim, n_states=info.n_agents, n_groups=1 if self.share_params else info.n_agents)

    def inputs(self, td: TensorDictBase) -> torch.Tensor:
        obs = td.get(OBSERVATION)
        return agent_id_features(obs) if self.agent_id else obs
