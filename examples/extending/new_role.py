"""Template: a new role, plugged into any recipe by ``model.extra_roles`` (docs/extending.md, "A new role").

The role is a team reward model: an MLP that predicts the team reward from the global state and the joint action,

    r_hat(s_t, a_t) ~ r_t,   fitted by  L = mean_t (r_hat(s_t, a_t) - r_t)^2,

on every rollout, by its own Adam optimiser. It is the piece that model-based planning, reward shaping and
credit-assignment methods build on. In this template the model only learns, and nothing reads its predictions.

An extra role (``hcmarl.extra_role.ExtraRole``) is an ``nn.Module`` with a ``name``, ``build(info)``,
``make_optimizer()`` and ``run(context) -> metrics``. The plan runs it after the built-in stages, on the
``IterationContext`` they used (``context.flat``: the rollout ``[envs * time]``, holding the values and advantages
by then), and it steps the optimiser named after it, ``context.steps[name]``. The overlay ``new_role.yaml`` adds it
to a recipe; from the repository root:

    PYTHONPATH=. hcmarl fit --config recipes/mappo/coordsum_3x10.yaml --config examples/extending/new_role.yaml

Without Lightning, ``train`` puts the same role into a plan (``hcmarl.iteration.plan_iteration``) beside MAPPO's
learner and critic and runs it with a TorchRL collector: ``python -m examples.extending.new_role``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.collectors import Collector

from hcmarl.constraints import ClipPPO
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.extra_role import ExtraRole
from hcmarl.iteration import plan_iteration
from hcmarl.keys import ACTION, LOG_PROB, REWARD, STATE
from hcmarl.nn import CentralValue, MLPActor
from hcmarl.optim import GradientStep, run_minibatches
from hcmarl.roles import ActingPolicy, Critic, Learner, Roles
from hcmarl.schedules import Simultaneous
from hcmarl.stages import IterationContext, Metrics


class RewardModel(ExtraRole):
    """r_hat(s, a): the team reward predicted from the global state and the joint action (one-hot if categorical).

    Args:
        hidden_sizes: widths of the MLP's hidden layers.
        lr: Adam learning rate.
        epochs: passes over each rollout.
        minibatches: minibatches per pass.
        max_grad_norm: gradient-norm clip (None or 0: no clip).
    """

    name = "reward_model"  # its optimiser's name and its metrics' prefix

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (64, 64),
        lr: float = 3e-3,
        epochs: int = 10,
        minibatches: int = 4,
        max_grad_norm: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.hidden_sizes = list(hidden_sizes)
        self.lr = lr
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm
        self.net: nn.Sequential | None = None

    def build(self, info: EnvInfo) -> None:
        """Create the MLP for the env ``info`` describes (called once, before the optimiser is made)."""
        self.info = info
        sizes = [info.state_dim + info.n_agents * info.action_dim, *self.hidden_sizes]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over this role's parameters only."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def forward(self, td: TensorDictBase) -> torch.Tensor:
        """r_hat ``[..., 1]`` for a TensorDict holding ``state`` ``[..., state_dim]`` and ``("agents", "action")``."""
        action = td.get(ACTION)
        if self.info.categorical:
            action = nn.functional.one_hot(action, self.info.action_dim).float()
        return self.net(torch.cat([td.get(STATE), action.flatten(-2)], dim=-1))

    def run(self, context: IterationContext) -> Metrics:
        """Fit r_hat to the rollout's rewards by ``epochs`` x ``minibatches`` steps of ``context.steps["reward_model"]``.

        Returns ``reward_model/loss``, the mean training loss, and ``reward_model/explained_variance``,
        1 - Var(r - r_hat) / Var(r) of the predictions made before the fit, on a rollout the model has not seen yet.
        """
        flat, step = context.flat, context.steps[self.name]
        reward = flat.get(("next", REWARD))  # [B, 1]
        inputs = flat.select(STATE, ACTION)
        with torch.no_grad():
            residual = reward - self(inputs)
        explained_variance = 1.0 - residual.var() / reward.var().clamp_min(1e-8)

        def minibatch_step(idx: torch.Tensor) -> Metrics:
            loss = (self(inputs[idx]) - reward[idx]).square().mean()
            step(loss, self.max_grad_norm)
            return {"loss": loss.detach()}

        metrics = run_minibatches(len(flat), self.epochs, self.minibatches, reward.device, minibatch_step)
        return {f"{self.name}/{key}": value for key, value in (metrics | {"explained_variance": explained_variance}).items()}


def train(
    iterations: int = 3, env: str = "coordsum/3x10", num_envs: int = 8, rollout_steps: int = 32, seed: int = 0
) -> tuple[list[Metrics], RewardModel]:
    """MAPPO plus the reward model for ``iterations`` iterations, without Lightning; each iteration's metrics, and the model."""
    torch.manual_seed(seed)
    environment = make_env(env, num_envs=num_envs, seed=seed)
    model = RewardModel()
    roles = Roles(
        learner=Learner(MLPActor(hidden_sizes=[64, 64], agent_id=True), ClipPPO(epochs=4, minibatches=2), Simultaneous()),
        critic=Critic(CentralValue(hidden_sizes=[64, 64]), epochs=4, minibatches=2),
        extra=(model,),
    )
    roles.build(environment.info)
    plan = plan_iteration(roles)  # advantages, then the learner's, the critic's and the reward model's stages
    steps = {name: GradientStep(optimizer) for name, optimizer in plan.make_optimizers().items()}
    policy = ActingPolicy(roles.learner.act, roles.learner.actor.in_keys, [ACTION, LOG_PROB])  # the learner itself, not a copy
    frames = num_envs * rollout_steps
    collector = Collector(
        environment, policy, frames_per_batch=frames, total_frames=iterations * frames, trust_policy=True, auto_register_policy_transforms=False
    )
    history = [plan.run(batch, steps) for batch in collector]  # each batch: [num_envs, rollout_steps]
    collector.shutdown()
    return history, model


if __name__ == "__main__":
    history, _ = train(iterations=60)
    for i, metrics in list(enumerate(history))[9::10]:
        shown = ", ".join(f"{k} = {float(v):.4f}" for k, v in metrics.items() if k.startswith((RewardModel.name, "learner/policy_loss")))
        print(f"iteration {i}: {shown}")
