"""The stages of one iteration (DESIGN.md, "One iteration", step 2) and the context that passes between them.

Each stage moves one role (or, in MAGPO's joint loop, two together) with the gradient steps it names,
reads what earlier stages left in the ``IterationContext`` and returns its metrics under their full
names. A stage is anything with ``run(context) -> metrics``: a new role plugs in by adding one to a plan
(``hcmarl.iteration.IterationPlan``), with no edit here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tensordict import TensorDictBase

from hcmarl.advantages import normalize_minibatch_advantage
from hcmarl.constraints import Evaluation, SurrogateBatch
from hcmarl.guided import GuidedClip, GuidedImitation
from hcmarl.keys import ACTION, ADVANTAGE, LOG_PROB, VALUE_TARGET
from hcmarl.nn.distributions import detach_distribution, map_distribution
from hcmarl.nn.guider import permuted_forward
from hcmarl.optim import GradientStep, run_minibatches, take_rows
from hcmarl.roles.conductor import Conductor
from hcmarl.roles.critic import Critic
from hcmarl.roles.guider import Guider
from hcmarl.roles.learner import Learner
from hcmarl.schedules import Upstream

Distribution = torch.distributions.Distribution
Metrics = dict[str, torch.Tensor]


@dataclass
class IterationContext:
    """What one iteration's stages pass to each other, besides the rollout.

    Attributes:
        batch: the rollout ``[envs, time]`` holding values and advantages (written before the first stage).
        steps: the gradient step of each optimiser, by name (``learner``, ``critic``, ``conductor``, ``local``, ``guider``).
        factor: ``[envs, time, 1]``, the factor the agents' sequential update starts from (HCPO's conductor), or None.
        kl_weight: ``[envs, time, N]``, per-sample weights of the agents' KL (HCPO's ``paper_weighting``), or None.
        guider_distribution: the updated guider on the flat batch ``[envs * time, N]``, which a learner with its own
            loop imitates, or None.
        central_probs: ``[envs, time, K]``, the updated central conductor's w_new(.|s_t), which the local conductors
            are distilled from, or None.
        flat: ``batch`` flattened to ``[envs * time]``.
    """

    batch: TensorDictBase
    steps: Mapping[str, GradientStep]
    factor: torch.Tensor | None = None
    kl_weight: torch.Tensor | None = None
    guider_distribution: Distribution | None = None
    central_probs: torch.Tensor | None = None
    flat: TensorDictBase = field(init=False)

    def __post_init__(self) -> None:
        self.flat = self.batch.reshape(-1)


class Stage(Protocol):
    """One step of an iteration: moves its role's parameters with ``context.steps`` and returns metrics (full names)."""

    def run(self, context: IterationContext) -> Metrics: ...


def prefixed(role: str, metrics: Mapping[str, torch.Tensor]) -> Metrics:
    """``metrics`` named ``role/<name>``."""
    return {f"{role}/{key}": value for key, value in metrics.items()}


def _flatten(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``[envs, time, ...]`` -> ``[envs * time, ...]``, in ``TensorDict.reshape(-1)``'s order."""
    return None if tensor is None else tensor.reshape(-1, *tensor.shape[2:])


@dataclass
class ConductorStage:
    """HCPO iteration, steps 2 and 3 (ALGORITHMS.md section 3): move w_Psi by its constraint on the flat batch, then
    leave the agents' initial factor and KL weights (``Conductor.agent_weights``) and the updated w_new(.|s_t) in the
    context (one forward pass, which the local conductors' distillation and the ``conductor/entropy`` diagnostic
    reuse)."""

    conductor: Conductor

    def run(self, context: IterationContext) -> Metrics:
        metrics = prefixed("conductor", self.conductor.update(context.flat, context.steps["conductor"]))
        with torch.no_grad():
            updated = self.conductor.central(context.batch)
        context.factor, context.kl_weight = self.conductor.agent_weights(context.batch, updated)
        context.central_probs = updated.probs
        if self.conductor.learns:
            metrics["conductor/entropy"] = updated.entropy().mean()
        return metrics


@dataclass
class LearnerStage:
    """The decentralised actors' update by their constraint and schedule, from the context's factor and KL weights,
    imitating the context's guider distribution when a guider moved first (ALGORITHMS.md sections 1, 3 and 4).

    Feed-forward actors train on the flat batch; recurrent ones on whole env rollouts ``[envs, time]``.
    """

    learner: Learner

    def run(self, context: IterationContext) -> Metrics:
        if self.learner.actor.recurrent:
            batch, factor, kl_weight = context.batch, context.factor, context.kl_weight
        else:
            batch, factor, kl_weight = context.flat, _flatten(context.factor), _flatten(context.kl_weight)
        upstream = Upstream(context.guider_distribution, factor, kl_weight)
        return prefixed("learner", self.learner.update(batch, context.steps["learner"], upstream))


@dataclass
class GuiderStage:
    """A guider moved alone by a constraint other than ``GuidedClip`` (e.g. ``GuidedTrustRegion``), anchored at the
    learner; then the updated guider's distribution is left in the context for the learner to imitate."""

    guider: Guider
    learner: Learner | None = None

    def run(self, context: IterationContext) -> Metrics:
        start_state = self.guider.rollout_start_state()
        sequences = self.guider.recurrent or (self.learner is not None and self.learner.actor.recurrent)
        batch = context.batch if sequences else context.flat
        metrics = prefixed("guider", self.guider.update(batch, context.steps["guider"], self.learner, start_state))
        if self.learner is not None:
            distribution = self.guider.distribution(context.batch, start_state)
            if self.learner.actor.recurrent:  # the learner trains on rollouts [envs, time]: its anchor too
                envs, time = context.batch.shape
                distribution = map_distribution(distribution, lambda t: t.reshape(envs, time, *t.shape[1:]))
            context.guider_distribution = distribution
        return metrics


@dataclass
class JointGuidedStage:
    """MAGPO's shared minibatch loop (ALGORITHMS.md section 4): guider and learner on the same minibatches.

    Per minibatch, both networks are evaluated with their pre-update parameters; the guider's loss is
    ``GuidedClip`` with the learner as a constant anchor, plus ``vf_coef`` times its value loss (``Guider.value_fit``)
    when ``train_value`` (no critic role); the learner's is ``GuidedImitation`` with the guider as a constant
    anchor; then both step. Without a learner (MAT) it is PPO on the guider. Minibatches are frames, or, for a
    recurrent guider or learner, whole env rollouts replayed from the states at their first step (the guider's
    ``rollout_start_state``, the learner's stored ``RNN_STATE``).

    ``GuidedClip``'s settings shape the loop as the official code's: ``lanes`` (each minibatch an equal share of every
    lane, ``hcmarl.optim.minibatch_indices``; its loss, a mean, is the lanes' losses averaged), ``advantage_norm:
    minibatch`` (``hcmarl.advantages.normalize_minibatch_advantage``, per lane) and ``agent_order: random`` (a new
    permutation every epoch for the guider's teacher-forced pass, ``hcmarl.nn.guider.permuted_forward``).
    """

    guider: Guider
    learner: Learner | None
    train_value: bool

    def run(self, context: IterationContext) -> Metrics:
        guider, learner, rule = self.guider, self.learner, self.guider.constraint
        imitation = None if learner is None else learner.constraint
        if not isinstance(rule, GuidedClip) or not (imitation is None or isinstance(imitation, GuidedImitation)):
            raise TypeError("JointGuidedStage runs a GuidedClip guider with a GuidedImitation learner (hcmarl.iteration.plan_iteration)")
        start_state = guider.rollout_start_state()
        sequences = guider.recurrent or (learner is not None and learner.actor.recurrent)
        batch = context.batch if sequences else context.flat
        returns = batch.get(VALUE_TARGET)
        keys = [*guider.network.in_keys, ACTION, LOG_PROB, ADVANTAGE] + ([] if learner is None else learner.actor.in_keys)
        batch = batch.select(*keys, strict=False)
        fit = guider.value_fit
        targets = fit.targets(returns, lambda: guider.network(batch, start_state)[1]) if self.train_value else None
        n_agents = batch.get(ACTION).shape[batch.batch_dims]
        order: list[torch.Tensor | None] = [None]  # this epoch's agent order in the teacher-forced pass (None: 0..N-1)
        steps_done = [0]

        def minibatch_step(idx: torch.Tensor) -> Metrics:
            if rule.agent_order == "random" and steps_done[0] % rule.minibatches == 0:  # a new epoch
                order[0] = torch.randperm(n_agents, device=idx.device)
            steps_done[0] += 1
            minibatch = take_rows(batch, idx)
            advantage = minibatch.get(ADVANTAGE)
            if rule.advantage_norm == "minibatch":
                advantage = normalize_minibatch_advantage(advantage, rule.lanes)
            action, data = minibatch.get(ACTION), SurrogateBatch(minibatch.get(LOG_PROB), advantage)
            guider_dist, value = permuted_forward(guider.network, minibatch, None if start_state is None else take_rows(start_state, idx), order[0])
            log_prob = guider_dist.log_prob(action)
            if learner is None:
                guider_eval = Evaluation(log_prob, guider_dist.entropy(), guider_dist)
            else:
                learner_dist = learner.actor(minibatch)
                learner_log_prob = learner_dist.log_prob(action)
                guider_eval = Evaluation(log_prob, guider_dist.entropy(), guider_dist, detach_distribution(learner_dist), learner_log_prob.detach())
            loss, guider_metrics = rule.loss(guider_eval, data)
            if targets is not None:
                value_loss = fit.minibatch_loss(value, targets, idx)
                loss = loss + guider.vf_coef * value_loss
                guider_metrics["value_loss"] = value_loss.detach()
            metrics = prefixed("guider", guider_metrics)
            if imitation is not None:
                learner_eval = Evaluation(learner_log_prob, learner_dist.entropy(), learner_dist, detach_distribution(guider_dist))
                learner_loss, learner_metrics = imitation.loss(learner_eval, data)
            context.steps["guider"](loss, rule.max_grad_norm)
            if imitation is not None:
                context.steps["learner"](learner_loss, imitation.max_grad_norm)
                metrics |= prefixed("learner", learner_metrics)
            return metrics

        return run_minibatches(batch.shape[0], rule.epochs, rule.minibatches, returns.device, minibatch_step, rule.lanes)


@dataclass
class CriticStage:
    """The critic's fit to the lambda-returns (ALGORITHMS.md section 1, "Critic loss") on the flat batch, or, for a
    recurrent critic, on whole env rollouts ``[envs, time]``."""

    critic: Critic

    def run(self, context: IterationContext) -> Metrics:
        batch = context.batch if self.critic.recurrent else context.flat
        return prefixed("critic", self.critic.update(batch, context.steps["critic"]))


@dataclass
class LocalConductorStage:
    """HCPO iteration, step 5: distil the local conductors from the updated central one; instruction usage and
    local-central agreement as diagnostics."""

    conductor: Conductor

    def run(self, context: IterationContext) -> Metrics:
        if context.central_probs is None:
            raise RuntimeError("LocalConductorStage distils the updated central conductor: a ConductorStage must run before it")
        central_probs = context.central_probs.reshape(-1, context.central_probs.shape[-1])
        distilled = self.conductor.update_local(context.flat, context.steps["local"], central_probs)
        if distilled is None:  # the conductors do not learn
            return self.conductor.diagnostics(context.flat, central_probs, None)
        return prefixed("local", distilled.metrics) | self.conductor.diagnostics(context.flat, central_probs, distilled.policy)
