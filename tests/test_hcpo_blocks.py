"""HCPO's building blocks (ALGORITHMS.md section 3): the advantage decomposition, conductors, Q(s, .), instruction-conditioned actors."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from hcmarl.advantages import conductor_mixture_value, instruction_advantages
from hcmarl.envs.base import EnvInfo
from hcmarl.keys import AGENT_INSTRUCTION, INSTRUCTION, OBSERVATION, STATE
from hcmarl.nn import ConductorNetwork, GRUActor, InstructionCritic, LocalConductors, MLPActor

INFO = EnvInfo(name="toy", n_agents=3, obs_dim=4, state_dim=12, action_kind="categorical", action_dim=5, max_steps=10)
K = 6


def _td(batch: int = 32) -> TensorDict:
    torch.manual_seed(0)
    instruction = torch.randint(K, (batch,))
    return TensorDict(
        {
            STATE: torch.randn(batch, INFO.state_dim),
            INSTRUCTION: instruction,
            "agents": TensorDict(
                {"observation": torch.randn(batch, 3, 4), "instruction": instruction[:, None].expand(batch, 3)}, batch_size=(batch, 3)
            ),
        },
        batch_size=(batch,),
    )


def test_conductor_weighted_q_minus_v_sums_to_zero_for_random_critics_and_conductors() -> None:
    td = _td()
    for seed in range(5):
        torch.manual_seed(seed)
        critic, conductor = InstructionCritic(), ConductorNetwork()
        critic.build(INFO, K)
        conductor.build(INFO, K)
        with torch.no_grad():
            q, w = critic.heads(td), conductor(td).probs
            v = conductor_mixture_value(q, w)
            torch.testing.assert_close((w * (q - v.unsqueeze(-1))).sum(-1), torch.zeros(td.shape[0]), atol=1e-6, rtol=0)
            assert not torch.allclose(q, v.unsqueeze(-1).expand_as(q))  # the heads differ, so the identity is not trivial


def test_conductor_and_agent_advantages_differ_by_q_minus_v() -> None:
    torch.manual_seed(1)
    q, w = torch.randn(8, 20, K), torch.softmax(torch.randn(8, 20, K), -1)
    instruction = torch.randint(K, (8, 20))
    value = conductor_mixture_value(q, w)
    q_taken = q.gather(-1, instruction.unsqueeze(-1)).squeeze(-1)
    gae = torch.randn(8, 20)
    conductor_advantage, agent_advantage = instruction_advantages(gae, value, q_taken)
    torch.testing.assert_close(conductor_advantage, gae)  # A^M = A^GAE
    torch.testing.assert_close(conductor_advantage - agent_advantage, q_taken - value)  # A^M - A^a = Q(s, M_t) - V(s)


def test_conductors_and_critic_shapes() -> None:
    td = _td()
    conductor, local, critic = ConductorNetwork(), LocalConductors(), InstructionCritic()
    for block in (conductor, local, critic):
        block.build(INFO, K)
    assert conductor(td).probs.shape == (32, K)
    assert local(td).probs.shape == (32, 3, K)
    assert critic.heads(td).shape == (32, K)
    taken = critic(td)  # the head of the sampled instruction, repeated over the agents
    assert taken.shape == (32, 3)
    torch.testing.assert_close(taken[:, 1], critic.heads(td)[torch.arange(32), td[INSTRUCTION]])
    with pytest.raises(RuntimeError, match="build"):
        LocalConductors()(td)


def test_local_conductors_read_only_their_own_observation() -> None:
    td = _td(4)
    local = LocalConductors(share_params=False)
    local.build(INFO, K)
    before = local(td).logits
    changed = td.clone()
    changed[STATE] = torch.randn_like(td[STATE])
    changed[OBSERVATION][:, 1] += 1.0  # only agent 1's observation changes
    after = local(changed).logits
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])


@pytest.mark.parametrize("encoding", ["onehot", "embedding"])
@pytest.mark.parametrize("actor_cls", [MLPActor, GRUActor])
def test_instruction_conditioned_actor_depends_on_the_instruction(encoding: str, actor_cls: type) -> None:
    td = _td(16)
    actor = actor_cls(instruction_encoding=encoding, share_params=False)
    actor.build(INFO, n_instructions=K)
    assert AGENT_INSTRUCTION in actor.in_keys
    features = actor.instruction_features(td[AGENT_INSTRUCTION])
    assert features.shape == (16, 3, K if encoding == "onehot" else actor.instruction_embed_dim)
    if encoding == "onehot":  # the same instruction reaches every agent
        assert torch.equal(features[:, 0], features[:, 2])
        assert torch.equal(features[:, 0].argmax(-1), td[INSTRUCTION])
    else:  # each agent reads its own table (per-agent parameters, ALGORITHMS.md section 3)
        for agent in range(3):
            assert torch.equal(features[:, agent], actor.instruction_embedding[agent][td[AGENT_INSTRUCTION][:, agent]])
        assert not torch.equal(features[:, 0], features[:, 2])
    if actor_cls is MLPActor:
        other = td.clone()
        other[AGENT_INSTRUCTION] = (td[AGENT_INSTRUCTION] + 1) % K
        assert not torch.allclose(actor(td).logits, actor(other).logits)
        inputs = actor.inputs(td)
        assert inputs.shape[-1] == 4 + features.shape[-1]
        torch.testing.assert_close(inputs[..., :4], td[OBSERVATION])  # observation first, then the instruction
    plain = actor_cls()
    plain.build(INFO)
    assert AGENT_INSTRUCTION not in plain.in_keys
