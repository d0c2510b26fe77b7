"""Update schedules: which agents' actors a constraint moves, and in what order (ALGORITHMS.md section 1)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDictBase

from hcmarl.constraints import Constraint, Evaluation, SurrogateBatch, evaluate_actions, index_distribution
from hcmarl.distributed import all_reduce_mean
from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB, VALUE
from hcmarl.nn.actors import select_agent
from hcmarl.nn.distributions import select_agents
from hcmarl.optim import GradientStep, take_rows

Distribution = torch.distributions.Distribution
Policy = Callable[..., Distribution]  # policy(td) for every agent, policy(td, agent=i) for agent i alone (``Actor.forward``)


@dataclass(frozen=True)
class Upstream:
    """What stages before the learner's hand its update, over the same samples ``[B]`` as its batch (None: nothing).

    ``anchor``: a fixed distribution (batch ``[B, N]``) that the constraint may hold the policy near (MAGPO's
    updated guider; each evaluation carries its minibatch). ``factor`` ``[B, 1]``: the factor every agent's
    surrogate starts from (HCPO's conductor). ``kl_weight`` ``[B, N]``: the weights of each agent's KL samples
    (HCPO's ``paper_weighting``).
    """

    anchor: Distribution | None = None
    factor: torch.Tensor | None = None
    kl_weight: torch.Tensor | None = None


NO_UPSTREAM = Upstream()


class Schedule(ABC):
    """Runs a constraint over the agents of a flat batch ``[B]`` (group ``agents`` is ``[B, N]``), from what the
    stages ``upstream`` hand it."""

    requires_separate_params: bool = False

    @abstractmethod
    def update(
        self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep, upstream: Upstream = NO_UPSTREAM
    ) -> dict[str, torch.Tensor]: ...


def evaluate_minibatch(policy: Policy, batch: TensorDictBase, idx: torch.Tensor, anchor: Distribution | None, agent: int | None = None) -> Evaluation:
    """The policy on the samples ``idx`` of ``batch`` with the anchor at the same samples: for all agents, or for
    ``agent`` alone when ``batch`` and ``anchor`` hold that agent's column only (``select_agent``)."""
    minibatch = take_rows(batch, idx)
    dist = policy(minibatch) if agent is None else policy(minibatch, agent=agent)
    return evaluate_actions(dist, minibatch.get(ACTION), None if anchor is None else index_distribution(anchor, idx))


class Simultaneous(Schedule):
    """All agents' actors updated together (MAPPO, IPPO, MAGPO's learner).

    The factor is 1, or the ``factor`` a stage upstream provides (a conductor's w_new/w_old over shared
    actors, ALGORITHMS.md section 3).
    """

    def update(
        self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep, upstream: Upstream = NO_UPSTREAM
    ) -> dict[str, torch.Tensor]:
        def evaluate(idx: torch.Tensor) -> Evaluation:
            return evaluate_minibatch(policy, batch, idx, upstream.anchor)

        data = SurrogateBatch(batch.get(LOG_PROB), batch.get(ADVANTAGE), upstream.factor, upstream.kl_weight)
        return constraint.update(evaluate, data, step)


def semi_greedy_scores(advantage: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A2PO's per-agent score, mean over samples of |A_i / V_i| (ALGORITHMS.md section 1), ``[N]``.

    ``advantage`` and ``value`` are ``[..., N]``; |V| is floored at 1e-6. Averaged over DDP
    ranks, so every rank picks the same order.
    """
    n_agents = advantage.shape[-1]
    ratio = advantage.abs() / value.abs().clamp_min(1e-6)
    return all_reduce_mean(ratio.reshape(-1, n_agents).mean(0))


def semi_greedy_order(scores: torch.Tensor) -> list[int]:
    """A2PO's semi-greedy order: alternately the highest-scoring remaining agent and a uniformly random one.

    Positions 0, 2, 4, ... are greedy, 1, 3, ... random; ties are broken at random.
    """
    remaining = torch.randperm(scores.shape[0]).tolist()
    values = scores.tolist()
    order: list[int] = []
    while remaining:
        if len(order) % 2 == 0:
            pick = max(remaining, key=lambda agent: values[agent])
        else:
            pick = remaining[int(torch.randint(len(remaining), ()))]
        remaining.remove(pick)
        order.append(pick)
    return order


class Sequential(Schedule):
    """Agents updated one after another (HAPPO, HATRPO, HAA2C, A2PO; ALGORITHMS.md section 1, ``Sequential``).

    Before agent ``i_l`` moves, its surrogate is weighted by ``factor``, the product over the
    agents already updated of ``pi_new^{i}(a|o) / pi_old^{i}(a|o)`` (detached, whole batch,
    product over action dimensions); it starts at 1, or at the ``factor`` a stage upstream (HCPO's
    conductor) provides. The agent at position l (1-based) is updated by ``constraint.at_position(l, N)``
    with the step ``step.for_agent(i_l)``; column i of ``kl_weight`` weights that agent's KL samples
    (HCPO's ``paper_weighting``).

    Each agent's update reads that agent's data and evaluates that agent's policy alone
    (``policy(td, agent=i)``), so an iteration costs O(N) agent evaluations, not O(N^2).

    Args:
        order: ``random`` (a new permutation each iteration), ``fixed`` (0..N-1) or
            ``semi_greedy`` (A2PO: ``semi_greedy_order`` of ``semi_greedy_scores``).
    """

    requires_separate_params = True

    def __init__(self, order: Literal["random", "fixed", "semi_greedy"] = "random") -> None:
        self.order = order

    def agent_order(self, batch: TensorDictBase) -> list[int]:
        """This iteration's update order for the agents of ``batch``."""
        advantage = batch.get(ADVANTAGE)
        n_agents = advantage.shape[-1]
        if self.order == "random":
            return torch.randperm(n_agents).tolist()
        if self.order == "fixed":
            return list(range(n_agents))
        if (value := batch.get(VALUE, None)) is None:
            raise ConfigError(
                f"Sequential(order='semi_greedy') scores agents by mean |A/V| and needs the critic's value {VALUE} in "
                "the batch; the learner of MARLModule provides it, other callers must set it"
            )
        return semi_greedy_order(semi_greedy_scores(advantage, value))

    def update(
        self, policy: Policy, constraint: Constraint, batch: TensorDictBase, step: GradientStep, upstream: Upstream = NO_UPSTREAM
    ) -> dict[str, torch.Tensor]:
        anchor, factor, kl_weight = upstream.anchor, upstream.factor, upstream.kl_weight
        if factor is None:
            factor = torch.ones(*batch.get(ADVANTAGE).shape[:-1], 1, device=batch.device)
        metrics: dict[str, torch.Tensor] = {}
        sums: dict[str, torch.Tensor] = {}
        order = self.agent_order(batch)
        for position, agent in enumerate(order):
            own = select_agent(batch, agent)
            own_anchor = None if anchor is None else select_agents(anchor, slice(agent, agent + 1))

            def evaluate(
                idx: torch.Tensor, own: TensorDictBase = own, agent: int = agent, own_anchor: Distribution | None = own_anchor
            ) -> Evaluation:
                return evaluate_minibatch(policy, own, idx, own_anchor, agent)

            placed = constraint.at_position(position + 1, len(order))
            old_log_prob = own.get(LOG_PROB)
            own_kl_weight = None if kl_weight is None else kl_weight[..., agent : agent + 1]
            data = SurrogateBatch(old_log_prob, own.get(ADVANTAGE), factor, own_kl_weight)
            for key, value in placed.update(evaluate, data, step.for_agent(agent)).items():
                sums[key] = sums.get(key, 0.0) + value
            with torch.no_grad():
                log_ratio = policy(own, agent=agent).log_prob(own.get(ACTION)) - old_log_prob
                factor = factor * log_ratio.exp()
            metrics[f"kl_agent{agent}"] = (-log_ratio).mean()  # sample estimate of KL(pi_old || pi_new)
            metrics[f"position_agent{agent}"] = torch.tensor(float(position))
        metrics |= {key: value / len(order) for key, value in sums.items()}
        metrics |= {"factor_mean": factor.mean(), "factor_max": factor.max()}
        return metrics
