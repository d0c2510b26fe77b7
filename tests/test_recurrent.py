"""The GRU actor: its cell against torch.nn.GRUCell, and training replay against the rollout's behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import final_eval, run_dirs
from torchrl.envs import TransformedEnv

from hcmarl.envs import make_env
from hcmarl.keys import ACTION, LOG_PROB
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


@pytest.mark.parametrize("share_params", [True, False])
def test_replay_reproduces_behaviour_log_probs_across_resets(share_params: bool) -> None:
    torch.manual_seed(0)
    base = make_env("coordsum/3x10", num_envs=4, seed=1, episode_length=5)
    actor = GRUActor(hidden_size=16, share_params=share_params, agent_id=True)
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
