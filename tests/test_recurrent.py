"""The GRU actor: its cell against torch.nn.GRUCell, and training replay against the rollout's behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import final_eval, run_dirs
from torchrl.envs import TransformedEnv, step_mdp

from hcmarl.envs import make_env
from hcmarl.keys import ACTION, IS_INIT, LOG_PROB, OBSERVATION, RNN_STATE
from hcmarl.nn import GRUActor
from hcmarl.nn.recurrent import AgentGRUCell


def test_agent_gru_cell_matches_torch_gru_cell_per_agent() -> None:
    torch.manual_seed(0)
    n_agents, d_in, hidden = 3, 5, 4
    cell = AgentGRUCell(d_in, hidden, n_groups=n_agents)
    x, h = torch.randn(7, n_agents, d_in), torch.randn(7, n_agents, hidden)
    out = cell(x, h)
    for i in range(n_agents):
        reference = torch.nn.GRUCell(d_in, hidden)
        with torch.no_grad():
            reference.weight_ih.copy_(cell.input_map.weight[i].T)
            reference.bias_ih.copy_(cell.input_map.bias[i])
            reference.weight_hh.copy_(cell.hidden_map.weight[i].T)
            reference.bias_hh.copy_(cell.hidden_map.bias[i])
        torch.testing.assert_close(out[:, i], reference(x[:, i], h[:, i]))


@pytest.mark.parametrize(("share_params", "post_hidden_sizes"), [(True, []), (False, []), (True, [8])])
def test_replay_reproduces_behaviour_log_probs_from_the_stored_state_and_across_resets(share_params: bool, post_hidden_sizes: list[int]) -> None:
    """Training replays a rollout from the state stored at its first step, zeroing it at each episode start: the first
    rollout starts at a reset, the second in the middle of episodes, from the state the first left."""
    torch.manual_seed(0)
    base = make_env("coordsum/3x10", num_envs=4, seed=1, episode_length=5)
    actor = GRUActor(hidden_size=16, post_hidden_sizes=post_hidden_sizes, share_params=share_params, agent_id=True)
    actor.build(base.info)
    env = TransformedEnv(base)
    for transform in actor.env_transforms():
        env.append_transform(transform)

    @torch.no_grad()
    def act(td):
        dist = actor.step(td)
        td.set(ACTION, dist.sample())
        td.set(LOG_PROB, dist.log_prob(td.get(ACTION)))
        return td

    rollout = env.rollout(13, act, break_when_any_done=False)  # episodes of 5 steps: resets inside
    assert rollout["is_init"].sum() > 4
    replayed = actor(rollout).log_prob(rollout.get(ACTION))
    torch.testing.assert_close(replayed, rollout.get(LOG_PROB), atol=1e-5, rtol=1e-5)
    # a replay that ignored the resets would not match
    no_reset = rollout.clone()
    no_reset["is_init"] = torch.zeros_like(no_reset["is_init"])
    assert not torch.allclose(actor(no_reset).log_prob(rollout.get(ACTION)), rollout.get(LOG_PROB), atol=1e-4)
    # the next rollout starts 3 steps into episodes, from the state the first one left
    second = env.rollout(13, act, auto_reset=False, tensordict=step_mdp(rollout[:, -1]), break_when_any_done=False)
    assert not bool(second.get(IS_INIT)[:, 0].any()) and bool((second.get(RNN_STATE)[:, 0].abs().sum(-1) > 0).all())
    torch.testing.assert_close(actor(second).log_prob(second.get(ACTION)), second.get(LOG_PROB), atol=1e-5, rtol=1e-5)


def test_post_torso_is_relu_layers_between_the_gru_state_and_the_head() -> None:
    """Mava's recurrent actor: encoder, GRU, ``[8]`` ReLU post-torso, linear head; logits by hand from the parameters."""
    torch.manual_seed(0)
    base = make_env("coordsum/3x10", num_envs=2, seed=1)
    actor = GRUActor(hidden_size=16, post_hidden_sizes=[8], activation="relu", share_params=True, agent_id=False)
    actor.build(base.info)
    env = TransformedEnv(base)
    for transform in actor.env_transforms():
        env.append_transform(transform)
    td = env.reset()
    td.set(RNN_STATE, torch.randn_like(td.get(RNN_STATE)))
    logits = actor.step(td).logits
    encoder, post, head = actor.encoder[0], actor.head[0], actor.head[2]
    x = torch.relu(td.get(OBSERVATION) @ encoder.weight[0] + encoder.bias[0])
    h = actor.cell(x, td.get(RNN_STATE))
    by_hand = torch.relu(h @ post.weight[0] + post.bias[0]) @ head.weight[0] + head.bias[0]
    torch.testing.assert_close(logits, torch.log_softmax(by_hand, dim=-1))  # Categorical keeps normalised logits
    assert head.weight.shape[1:] == (8, base.info.action_dim)


@pytest.mark.parametrize("name", ["mappo/coordsum_3x10", "ippo/vmas_balance"])
def test_gru_actor_swapped_in_by_class_path(name: str, run_cli, tmp_path: Path) -> None:
    run_cli(
        "fit",
        name,
        "--model.learner.init_args.actor",
        "hcmarl.nn.GRUActor",
        "--model.learner.init_args.actor.init_args.hidden_size",
        "16",
        "--data.total_frames",
        "64",
        "--data.eval_every",
        "1",
        "--model.learner.init_args.constraint.init_args.minibatches",
        "2",
    )
    (run_dir,) = run_dirs(tmp_path)
    assert math.isfinite(final_eval(run_dir)["eval/return"])
