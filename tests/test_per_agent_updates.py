"""A sequential update evaluates one agent per step (DESIGN.md, "One iteration": O(N) in agents, not O(N^2)).

The reference below is the update as hcmarl ran it before per-agent evaluation: the whole vectorised
policy evaluated for all N agents at every minibatch step, CG iteration and line-search try, and the
moving agent's column selected. One iteration of each sequential recipe on a fixed rollout must leave
the same parameters either way, to float tolerance (the per-agent path multiplies one agent's weights
where the reference batches all agents' in one einsum, so reductions may round differently).
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.envs import Compose, TransformedEnv

from hcmarl.constraints import Constraint, Evaluation, SurrogateBatch, evaluate_actions, index_distribution
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB
from hcmarl.modules.cli import build_cli
from hcmarl.nn import GRUActor, MLPActor
from hcmarl.nn.actors import select_agent
from hcmarl.optim import GradientStep
from hcmarl.recipes import RECIPES_DIR
from hcmarl.schedules import NO_UPSTREAM, Policy, Sequential, Upstream

Distribution = torch.distributions.Distribution


class EveryAgentSequential(Sequential):
    """The reference: each evaluation runs the policy for every agent and keeps the moving agent's column."""

    def update(
        self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep, upstream: Upstream = NO_UPSTREAM
    ) -> dict[str, torch.Tensor]:
        old_log_prob, advantage, action = batch.get(LOG_PROB), batch.get(ADVANTAGE), batch.get(ACTION)
        anchor, factor, kl_weight = upstream.anchor, upstream.factor, upstream.kl_weight
        if factor is None:
            factor = torch.ones(*advantage.shape[:-1], 1)
        order = self.agent_order(batch)
        for position, agent in enumerate(order):
            own = slice(agent, agent + 1)

            def evaluate(idx: torch.Tensor, own: slice = own) -> Evaluation:
                minibatch = batch[idx]
                anchored = None if anchor is None else index_distribution(anchor, idx)
                return evaluate_actions(policy(minibatch), minibatch.get(ACTION), anchored).select(own)

            placed = constraint.at_position(position + 1, len(order))
            own_kl_weight = None if kl_weight is None else kl_weight[..., own]
            placed.update(evaluate, SurrogateBatch(old_log_prob[..., own], advantage[..., own], factor, own_kl_weight), step.for_agent(agent))
            with torch.no_grad():
                factor = factor * (policy(batch).log_prob(action)[..., own] - old_log_prob[..., own]).exp()
        return {}


CASES = {
    "happo, 8 agents": ("happo/coordsum_3x10", ["--data.env", "coordsum/8x15"]),
    "hatrpo, 8 agents": ("hatrpo/coordsum_3x10", ["--data.env", "coordsum/8x15"]),
    "a2po": ("a2po/coordsum_3x10", []),
    "hcpo": ("hcpo/coordsum_3x10", []),
    "hatrpo, gaussian": ("hatrpo/vmas_balance", []),
    "happo, GRU": (
        "happo/coordsum_3x10",
        ["--model.learner.init_args.actor.class_path", "hcmarl.nn.GRUActor", "--model.learner.init_args.actor.init_args.hidden_size", "16"],
    ),
    "hcpo, embedded instructions": ("hcpo/coordsum_3x10", ["--model.learner.init_args.actor.init_args.instruction_encoding", "embedding"]),
}


def _one_iteration(recipe: str, overrides: list[str], reference: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The module's parameters before and after one iteration on a fixed rollout (``reference``: the every-agent path)."""
    torch.manual_seed(0)
    cli = build_cli(["--config", str(RECIPES_DIR / f"{recipe}.yaml"), "--data.num_envs", "6", "--data.rollout_steps", "16", *overrides], run=False)
    module, dm = cli.model, cli.datamodule
    env = make_env(dm.env_name, dm.num_envs, 0, torch.device("cpu"), **dm.env_kwargs)
    module.build(env.info)
    before = {key: value.detach().clone() for key, value in module.state_dict().items()}
    if module.learner.actor.recurrent:
        env = TransformedEnv(env, Compose(*module.learner.actor.env_transforms()))
    if reference:
        module.learner.schedule = EveryAgentSequential(module.learner.schedule.order)
    torch.manual_seed(1)
    batch = env.rollout(dm.rollout_steps, module.behaviour_policy(), break_when_any_done=False)
    module.compute_advantages(batch)
    torch.manual_seed(2)
    module.update_roles(batch, [GradientStep(optimizer) for optimizer in module.configure_optimizers()])
    return before, {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_one_iteration_leaves_the_parameters_of_the_every_agent_reference(case: str) -> None:
    recipe, overrides = CASES[case]
    (initial, mine), (_, reference) = _one_iteration(recipe, overrides, False), _one_iteration(recipe, overrides, True)
    moved = [key for key in mine if "learner" in key and not torch.equal(initial[key], mine[key])]
    assert moved, "the iteration moved no learner parameter: nothing was compared"
    for key in mine:
        torch.testing.assert_close(mine[key], reference[key], atol=1e-6, rtol=1e-5, msg=f"{case}: {key}")


INFO = EnvInfo(name="toy", n_agents=4, obs_dim=3, state_dim=12, action_kind="continuous", action_dim=2, max_steps=10)


@pytest.mark.parametrize("actor_class", [MLPActor, GRUActor])
def test_one_agent_alone_equals_its_column_of_every_agent(actor_class: type) -> None:
    """``actor(select_agent(td, i), agent=i)`` is column i of ``actor(td)``, agent id, instruction embedding and std included."""
    torch.manual_seed(0)
    actor = actor_class(share_params=False, agent_id=True, instruction_encoding="embedding")
    actor.build(INFO, n_instructions=3)
    td = _toy_rollout(actor)
    every = actor(td)
    for agent in range(INFO.n_agents):
        alone = actor(select_agent(td, agent), agent=agent)
        column = slice(agent, agent + 1)
        torch.testing.assert_close(alone.base_dist.loc, every.base_dist.loc[..., column, :], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(alone.base_dist.scale, every.base_dist.scale[..., column, :])


def test_one_agents_loss_gives_gradient_to_its_own_parameters_only() -> None:
    torch.manual_seed(0)
    actor = MLPActor(share_params=False, instruction_encoding="embedding")
    actor.build(INFO, n_instructions=3)
    td = _toy_rollout(actor)
    dist = actor(select_agent(td, 2), agent=2)
    dist.log_prob(torch.randn(dist.batch_shape + dist.event_shape)).sum().backward()
    for name, param in actor.named_parameters():
        assert param.grad is not None and param.grad[2].abs().sum() > 0, name
        others = torch.cat([param.grad[:2], param.grad[3:]])
        assert torch.count_nonzero(others) == 0, f"{name}: another agent's slice got a gradient"


def _toy_rollout(actor: torch.nn.Module) -> TensorDictBase:
    from tensordict import TensorDict

    b, t, n = 5, 6, INFO.n_agents
    td = TensorDict(
        {
            "agents": TensorDict(
                {"observation": torch.randn(b, t, n, INFO.obs_dim), "instruction": torch.randint(3, (b, t, n))}, batch_size=(b, t, n)
            ),
            "is_init": torch.rand(b, t, 1) < 0.2,
            "agents_rnn_state": torch.randn(b, t, n, getattr(actor, "hidden_size", 1)),
        },
        batch_size=(b, t),
    )
    return td if actor.recurrent else td.reshape(-1).exclude("is_init", "agents_rnn_state")


def test_the_reference_differs_from_a_wrong_per_agent_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: evaluating every agent with agent 0's parameters gives other parameters."""
    recipe, overrides = CASES["hatrpo, 8 agents"]
    _, reference = _one_iteration(recipe, overrides, True)
    real_forward = MLPActor.forward
    monkeypatch.setattr(MLPActor, "forward", lambda self, td, agent=None: real_forward(self, td, None if agent is None else 0))
    _, wrong = _one_iteration(recipe, overrides, False)
    assert any(not torch.allclose(wrong[key], reference[key], atol=1e-6, rtol=1e-5) for key in reference)
