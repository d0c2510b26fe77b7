"""Update schedules: which agents' actors a constraint moves, and in what order (ALGORITHMS.md section 1)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Literal

import torch
from tensordict import TensorDictBase

from hcmarl.constraints import Constraint, Evaluation
from hcmarl.nn.distributions import select_agents
from hcmarl.keys import ACTION, ADVANTAGE, FACTOR, LOG_PROB
from hcmarl.optim import GradientStep

Policy = Callable[[TensorDictBase], torch.distributions.Distribution]


class Schedule(ABC):
    """Runs a constraint over the agents of a flat batch ``[B]`` (group ``agents`` is ``[B, N]``)."""

    requires_separate_params: bool = False

    @abstractmethod
    def update(self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]: ...


class Simultaneous(Schedule):
    """All agents' actors updated together, factor 1 (MAPPO, IPPO, MAGPO's learner)."""

    def update(self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        def evaluate(idx: torch.Tensor) -> Evaluation:
            minibatch = batch[idx]
            dist = policy(minibatch)
            return Evaluation(dist.log_prob(minibatch.get(ACTION)), dist.entropy(), dist)

        return constraint.update(evaluate, batch.get(LOG_PROB), batch.get(ADVANTAGE), None, step)


class Sequential(Schedule):
    """Agents updated one after another (HAPPO, HATRPO, HAA2C; ALGORITHMS.md section 1, ``Sequential``).

    Before agent ``i_l`` moves, its surrogate is weighted by ``factor``, the product over the
    agents already updated of ``pi_new^{i}(a|o) / pi_old^{i}(a|o)`` (detached, whole batch,
    product over action dimensions); it starts at 1, or at the batch's ``factor`` entry when
    a role upstream (HCPO's conductor) provides one.

    Args:
        order: ``random`` (a new permutation each iteration) or ``fixed`` (0..N-1).
    """

    requires_separate_params = True

    def __init__(self, order: Literal["random", "fixed"] = "random") -> None:
        self.order = order

    def agent_order(self, n_agents: int) -> list[int]:
        return torch.randperm(n_agents).tolist() if self.order == "random" else list(range(n_agents))

    def update(self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        old_log_prob, advantage, action = batch.get(LOG_PROB), batch.get(ADVANTAGE), batch.get(ACTION)
        factor = batch.get(FACTOR, None)
        if factor is None:
            factor = torch.ones(*advantage.shape[:-1], 1, device=advantage.device)
        metrics: dict[str, torch.Tensor] = {}
        sums: dict[str, torch.Tensor] = {}
        order = self.agent_order(advantage.shape[-1])
        for position, agent in enumerate(order):
            own = slice(agent, agent + 1)

            def evaluate(idx: torch.Tensor, own: slice = own) -> Evaluation:
                minibatch = batch[idx]
                dist = policy(minibatch)
                return Evaluation(dist.log_prob(minibatch.get(ACTION))[..., own], dist.entropy()[..., own], select_agents(dist, own))

            step.restrict_to_agent(agent)
            for key, value in constraint.update(evaluate, old_log_prob[..., own], advantage[..., own], factor, step).items():
                sums[key] = sums.get(key, 0.0) + value
            with torch.no_grad():
                log_ratio = policy(batch).log_prob(action)[..., own] - old_log_prob[..., own]
                factor = factor * log_ratio.exp()
            metrics[f"kl_agent{agent}"] = (-log_ratio).mean()  # sample estimate of KL(pi_old || pi_new)
            metrics[f"position_agent{agent}"] = torch.tensor(float(position))
        step.restrict_to_agent(None)
        metrics |= {key: value / len(order) for key, value in sums.items()}
        metrics |= {"factor_mean": factor.mean(), "factor_max": factor.max()}
        return metrics
