"""Constraints: how one policy's parameters move given a surrogate (ALGORITHMS.md section 1).

A constraint sees tensors, not roles, through one protocol, ``update(evaluate, data, step)``:
``evaluate(indices)`` returns an ``Evaluation`` (the new per-agent log-probabilities, entropies ``[b, n]``
and distributions of the samples at ``indices`` for the agents being updated, and, where a role holds
the policy near another one, that fixed anchor at the same samples); ``data`` is a ``SurrogateBatch``
(what the surrogate reads besides the policy); ``step`` holds the optimiser, and so the parameters
being moved (one agent's, for a sequential schedule). What is optimised (a per-sample objective or
surrogate) is a method of the constraint; how (Adam over minibatches, ``MinibatchConstraint``; a
natural-gradient step, ``hcmarl.trust_region.TrustRegion``) is its base class.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from hcmarl.advantages import MinibatchAdvantageNorm, normalize_minibatch_advantage
from hcmarl.errors import ConfigError, check_init_args
from hcmarl.nn.distributions import detach_distribution, map_distribution, select_agents
from hcmarl.optim import GradientStep, run_minibatches, take_rows

Distribution = torch.distributions.Distribution


class Evaluation(NamedTuple):
    """The current policy on some samples, for the agents being updated.

    ``anchor`` is a fixed distribution the policy is held near at the same samples and agents
    (MAGPO: the learner for the guider, the guider for the learner; ALGORITHMS.md section 4), and
    ``anchor_log_prob`` its log-probability of the taken actions; None where there is none.
    """

    log_prob: torch.Tensor
    entropy: torch.Tensor
    distribution: Distribution
    anchor: Distribution | None = None
    anchor_log_prob: torch.Tensor | None = None

    def required_anchor(self, who: str) -> Distribution:
        """The anchor; a ValueError saying that ``who`` needs one if there is none."""
        if self.anchor is None:
            raise ValueError(f"{who} holds the policy near another one: the evaluation must carry that distribution as its anchor")
        return self.anchor

    def required_anchor_log_prob(self, who: str) -> torch.Tensor:
        """The anchor's log-probability of the taken actions; a ValueError saying that ``who`` needs it if there is none."""
        if self.anchor_log_prob is None:
            raise ValueError(f"{who} reads the anchor's log-probability of the taken actions: build the evaluation with evaluate_actions")
        return self.anchor_log_prob

    def select(self, agents: slice) -> Evaluation:
        """The same evaluation restricted to ``agents`` (the last batch dimension), e.g. one agent of a sequential update."""
        anchor = None if self.anchor is None else select_agents(self.anchor, agents)
        anchor_log_prob = None if self.anchor_log_prob is None else self.anchor_log_prob[..., agents]
        return Evaluation(self.log_prob[..., agents], self.entropy[..., agents], select_agents(self.distribution, agents), anchor, anchor_log_prob)


def evaluate_actions(dist: Distribution, action: torch.Tensor, anchor: Distribution | None = None) -> Evaluation:
    """The ``Evaluation`` of ``dist`` on the taken ``action``, with the (detached) ``anchor`` and its log-probability if given."""
    if anchor is None:
        return Evaluation(dist.log_prob(action), dist.entropy(), dist)
    anchor = detach_distribution(anchor)
    return Evaluation(dist.log_prob(action), dist.entropy(), dist, anchor, anchor.log_prob(action))


def index_distribution(dist: Distribution, idx: torch.Tensor) -> Distribution:
    """The samples ``idx`` of a distribution over a batch (the first dimension), e.g. an anchor's minibatch."""
    return map_distribution(dist, lambda t: take_rows(t, idx))


Evaluate = Callable[[torch.Tensor], Evaluation]


@dataclass(frozen=True)
class SurrogateBatch:
    """What a policy surrogate reads of a batch besides the policy itself.

    ``old_log_prob`` and ``advantage`` are ``[B, n]`` (n: the agents being updated); ``factor`` ``[B, 1]``
    weights each sample's surrogate (a sequential schedule's product of the preceding agents' ratios,
    or a conductor's w_new/w_old), ``kl_weight`` ``[B, n]`` weights the samples of a constraint's KL, whose mean
    over the B samples is then (1/B) sum w KL (HCPO's ``paper_weighting``); None where there is none. Constraints
    without a KL term ignore it.
    """

    old_log_prob: torch.Tensor
    advantage: torch.Tensor
    factor: torch.Tensor | None = None
    kl_weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.advantage.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> SurrogateBatch:
        """The samples ``idx`` (a minibatch)."""
        return SurrogateBatch(
            take_rows(self.old_log_prob, idx),
            take_rows(self.advantage, idx),
            None if self.factor is None else take_rows(self.factor, idx),
            None if self.kl_weight is None else take_rows(self.kl_weight, idx),
        )


def clip_ppo_objective(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    eps: float,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample PPO-clip objective (to maximise), ALGORITHMS.md section 1, ``ClipPPO``.

    factor * min(rho * A, clip(rho, 1 - eps, 1 + eps) * A), rho = exp(log_prob - old_log_prob);
    ``factor`` multiplies outside the clip and is never clipped (HAPPO's convention).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    objective = torch.min(ratio * advantage, ratio.clamp(1.0 - eps, 1.0 + eps) * advantage)
    return objective if factor is None else factor * objective


def clip_fraction(ratio: torch.Tensor, eps: float) -> torch.Tensor:
    """Fraction of samples whose probability ratio lies outside [1 - eps, 1 + eps] (a PPO diagnostic)."""
    return ((ratio.detach() - 1.0).abs() > eps).float().mean()


class Constraint(ABC):
    """Moves a policy's parameters under some rule, returning diagnostics as detached tensors."""

    @abstractmethod
    def update(self, evaluate: Evaluate, data: SurrogateBatch, step: GradientStep) -> dict[str, torch.Tensor]:
        """Move the parameters ``step`` holds so as to improve the surrogate on ``data``; detached diagnostics."""

    def at_position(self, position: int, n_agents: int) -> Constraint:
        """The constraint for the agent updated ``position``-th (1-based) of ``n_agents`` by a sequential schedule.

        Itself by default; A2PO's clip range grows with the position.
        """
        return self


class MinibatchConstraint(Constraint):
    """Adam steps over ``epochs`` x ``minibatches`` maximising a per-sample objective plus an entropy bonus.

    Args:
        epochs: passes over the batch.
        minibatches: minibatches per pass.
        ent_coef: weight of the entropy bonus.
        max_grad_norm: gradient-norm clip (None or 0: no clip).
        lanes: the official MAGPO code's ``update_batch_size``: the batch is this many equal lanes of envs one after
            another, and every minibatch takes the same share of each (``hcmarl.optim.minibatch_indices``); its loss, a
            mean, is then the lanes' losses averaged, so its gradient is the lanes' gradients averaged.
        advantage_norm: ``batch`` (the advantages as the iteration normalised them) or ``minibatch`` (normalised again in
            every minibatch, per lane, as the official code does: ``hcmarl.advantages.normalize_minibatch_advantage``).
    """

    def __init__(
        self,
        epochs: int | None = 5,
        minibatches: int | None = 1,
        ent_coef: float = 0.01,
        max_grad_norm: float | None = 10.0,
        lanes: int = 1,
        advantage_norm: MinibatchAdvantageNorm = "batch",
    ) -> None:
        loops = {"epochs": epochs, "minibatches": minibatches}  # None: another role's loop applies the loss (GuidedImitation)
        check_init_args(type(self), {k: v for k, v in loops.items() if v is not None}, {k: ">= 1" for k, v in loops.items() if v is not None})
        check_init_args(
            type(self),
            {"ent_coef": ent_coef, "max_grad_norm": max_grad_norm, "lanes": lanes},
            {"ent_coef": ">= 0", "max_grad_norm": ">= 0", "lanes": ">= 1"},
            max_grad_norm={"optional": True},
        )
        if advantage_norm not in ("batch", "minibatch"):
            raise ConfigError(f"{type(self).__name__}: advantage_norm must be batch or minibatch, got {advantage_norm!r}")
        self.epochs = epochs
        self.minibatches = minibatches
        self.ent_coef = ent_coef
        self.max_grad_norm = max_grad_norm
        self.lanes = lanes
        self.advantage_norm = advantage_norm

    @abstractmethod
    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        """Per-sample objective to maximise, from the current policy's ``evaluation`` on a minibatch ``data``."""

    def diagnostics(self, evaluation: Evaluation, log_ratio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-minibatch diagnostics from the evaluation and log(pi_new / pi_old), under no_grad; none by default."""
        return {}

    def loss(self, evaluation: Evaluation, data: SurrogateBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The minibatch loss, -mean objective - ent_coef * mean entropy, and its detached diagnostics."""
        entropy = evaluation.entropy
        loss = -self.objective(evaluation, data).mean() - self.ent_coef * entropy.mean()
        with torch.no_grad():
            log_ratio = evaluation.log_prob - data.old_log_prob
            metrics = {"policy_loss": loss, "entropy": entropy.mean(), "approx_kl": (-log_ratio).mean(), **self.diagnostics(evaluation, log_ratio)}
        return loss, {key: value.detach() for key, value in metrics.items()}

    def update(self, evaluate: Evaluate, data: SurrogateBatch, step: GradientStep) -> dict[str, torch.Tensor]:
        if self.epochs is None or self.minibatches is None:
            raise ValueError(f"{type(self).__name__} has no epochs and minibatches of its own: another role's loop applies its loss")

        def minibatch_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            minibatch = data[idx]
            if self.advantage_norm == "minibatch":
                minibatch = replace(minibatch, advantage=normalize_minibatch_advantage(minibatch.advantage, self.lanes))
            loss, metrics = self.loss(evaluate(idx), minibatch)
            step(loss, self.max_grad_norm)
            return metrics

        return run_minibatches(len(data), self.epochs, self.minibatches, data.advantage.device, minibatch_step, self.lanes)


class ClipPPO(MinibatchConstraint):
    """PPO-clip by Adam over ``epochs`` x ``minibatches`` (ALGORITHMS.md section 1, ``ClipPPO``).

    Args:
        eps: clip range of the probability ratio.
        epochs, minibatches, ent_coef, max_grad_norm, lanes, advantage_norm: see ``MinibatchConstraint`` (Mava's
            rec_mappo and rec_ippo: ``lanes: 2``, ``advantage_norm: minibatch``).
    """

    def __init__(
        self,
        eps: float = 0.2,
        epochs: int = 5,
        minibatches: int = 1,
        ent_coef: float = 0.01,
        max_grad_norm: float | None = 10.0,
        lanes: int = 1,
        advantage_norm: MinibatchAdvantageNorm = "batch",
    ) -> None:
        super().__init__(epochs, minibatches, ent_coef, max_grad_norm, lanes, advantage_norm)
        check_init_args(type(self), {"eps": eps}, {"eps": "> 0"})
        self.eps = eps

    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        return clip_ppo_objective(evaluation.log_prob, data.old_log_prob, data.advantage, self.eps, data.factor)

    def diagnostics(self, evaluation: Evaluation, log_ratio: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"clip_frac": clip_fraction(log_ratio.exp(), self.eps)}


def a2po_agent_eps(eps: float, position: int, n_agents: int, weight: float = 0.5) -> float:
    """A2PO's clip range of the agent updated ``position``-th (1-based): eps * (weight * l / N + 1 - weight).

    ALGORITHMS.md section 1, "A2PO variant" (weight 0.5: eps_l = eps * (0.5 * l / N + 0.5)); the last agent gets ``eps``.
    """
    if not 1 <= position <= n_agents:
        raise ValueError(f"position must be in 1..{n_agents}, got {position}")
    return eps * (weight * position / n_agents + 1.0 - weight)


def preceding_ratio_clip_objective(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    eps: float,
    eps_others: float,
    factor: torch.Tensor | None,
) -> torch.Tensor:
    """Per-sample A2PO objective (to maximise), ALGORITHMS.md section 1, "A2PO variant".

    rho = (pi_new / pi_old) * clip(factor, 1 - eps_others, 1 + eps_others), then
    min(rho * A, clip(rho, 1 - eps, 1 + eps) * A): the preceding agents' (detached) ratio product
    is clipped and multiplied into the agent's ratio before the PPO clip, unlike HAPPO's factor.
    """
    if factor is not None:
        log_prob = log_prob + factor.clamp(1.0 - eps_others, 1.0 + eps_others).log()
    return clip_ppo_objective(log_prob, old_log_prob, advantage, eps)


class A2POClip(ClipPPO):
    """PPO-clip with A2PO's preceding-ratio clip and per-position clip range (ALGORITHMS.md section 1).

    Under ``Sequential`` the agent at position l (1-based) of N clips its ratio to
    ``a2po_agent_eps(eps, l, N, position_weight)``; outside a sequential schedule it is ``eps``.

    Args:
        eps: clip range of the last agent in the order (earlier agents get less).
        eps_others: clip range of the preceding agents' ratio product (A2PO: 0.1).
        position_weight: how much the clip range grows with the position (A2PO: 0.5).
        epochs, minibatches, ent_coef, max_grad_norm: see ``MinibatchConstraint``.
    """

    def __init__(
        self,
        eps: float = 0.2,
        eps_others: float = 0.1,
        position_weight: float = 0.5,
        epochs: int = 5,
        minibatches: int = 1,
        ent_coef: float = 0.01,
        max_grad_norm: float | None = 10.0,
    ) -> None:
        super().__init__(eps, epochs, minibatches, ent_coef, max_grad_norm)
        check_init_args(
            type(self), {"eps_others": eps_others, "position_weight": position_weight}, {"eps_others": "> 0", "position_weight": "in [0, 1]"}
        )
        self.eps_last = eps
        self.eps_others = eps_others
        self.position_weight = position_weight

    def at_position(self, position: int, n_agents: int) -> A2POClip:
        placed = copy.copy(self)
        placed.eps = a2po_agent_eps(self.eps_last, position, n_agents, self.position_weight)
        return placed

    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        return preceding_ratio_clip_objective(evaluation.log_prob, data.old_log_prob, data.advantage, self.eps, self.eps_others, data.factor)


class A2C(MinibatchConstraint):
    """Plain policy gradient ``E[factor * log pi(a|o) * A]`` (HAA2C; ALGORITHMS.md section 1, ``A2C``).

    Args:
        epochs, minibatches, ent_coef, max_grad_norm: see ``MinibatchConstraint`` (HAA2C: 1 epoch, 1 minibatch).
    """

    def __init__(self, epochs: int = 1, minibatches: int = 1, ent_coef: float = 0.01, max_grad_norm: float | None = 10.0) -> None:
        super().__init__(epochs, minibatches, ent_coef, max_grad_norm)

    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        objective = evaluation.log_prob * data.advantage
        return objective if data.factor is None else data.factor * objective


def soft_target_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_M p(M) log q(M) of a target ``p`` and a categorical's ``logits`` ``[..., K]`` (ALGORITHMS.md section 3, step 5)."""
    return -(target_probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


class Distilled(NamedTuple):
    """What :meth:`Distill.update` leaves: its metrics, and the policy's prediction on the whole batch after the last
    step (no gradient), which callers reuse rather than predict again."""

    metrics: dict[str, torch.Tensor]
    policy: torch.distributions.Categorical


class Distill:
    """Moves a categorical policy towards a fixed target distribution by Adam (ALGORITHMS.md section 1, ``Distill``).

    Minimises the soft-target cross-entropy, whose gradient is that of KL(target || policy)
    (HCPO's local conductors distilled from the updated central conductor).

    Args:
        epochs: passes over the batch.
        minibatches: minibatches per pass.
        max_grad_norm: gradient-norm clip (None or 0: no clip).
    """

    def __init__(self, epochs: int = 5, minibatches: int = 1, max_grad_norm: float | None = 10.0) -> None:
        check_init_args(
            type(self),
            {"epochs": epochs, "minibatches": minibatches, "max_grad_norm": max_grad_norm},
            {"epochs": ">= 1", "minibatches": ">= 1", "max_grad_norm": ">= 0"},
            max_grad_norm={"optional": True},
        )
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm

    def update(self, predict: Callable[[torch.Tensor], torch.distributions.Categorical], target_probs: torch.Tensor, step: GradientStep) -> Distilled:
        """Fit ``predict(indices)`` (a categorical, batch ``[b, ...]``) to ``target_probs`` ``[B, ..., K]``.

        Metrics: the mean training cross-entropy and, after the last step, the gap KL(target || policy) on the whole
        batch, from the policy's prediction there (returned with them).
        """

        def minibatch_step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = soft_target_cross_entropy(take_rows(target_probs, idx), predict(idx).logits).mean()
            step(loss, self.max_grad_norm)
            return {"cross_entropy": loss.detach()}

        metrics = run_minibatches(target_probs.shape[0], self.epochs, self.minibatches, target_probs.device, minibatch_step)
        with torch.no_grad():
            everything = torch.arange(target_probs.shape[0], device=target_probs.device)
            policy = predict(everything)
            cross_entropy = soft_target_cross_entropy(target_probs, policy.logits).mean()
            gap = cross_entropy - torch.special.entr(target_probs).sum(dim=-1).mean()
        return Distilled(metrics | {"kl": gap}, policy)
