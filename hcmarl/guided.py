"""MAGPO's two losses (ALGORITHMS.md section 4): the guider's double clip and the learner's guided imitation.

Per agent and timestep (no joint log-probability), with g = log mu(a_i | o, a_<i) (the guider),
l = log pi(a_i | o_i) (the learner), g_old the behaviour (guider's) log-probability at
collection, and A the normalised advantage:

- ``GuidedClip`` (the guider): ratio = exp(g - g_old), inner = exp(clip(g - l, -log delta,
  log delta) + l - g_old), L = -min(ratio A, clip(inner, 1 - eps, 1 + eps) A)
  + mask KL(mu || stopgrad(pi)) - ent_coef H(mu), mask = 1 where g - l lies outside
  (-log delta, log delta). delta = infinity gives plain PPO with no mask (CTDS, MAT).
- ``GuidedImitation`` (the learner): KL(stopgrad(mu) || pi) + lambda (-min(r A, clip(r) A)),
  r = exp(l - g_old). lambda = 0 is CTDS's pure imitation.

Both are computed from the same pre-update parameters of each minibatch; the iteration's guided stage
(``hcmarl.stages.JointGuidedStage``) runs the loop and steps both networks.

``GuidedTrustRegion`` (a hybrid's guider) takes a trust-region step on the double clip's inner ratio
and the same masked KL; the learner then runs ``GuidedImitation`` by its own schedule.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from hcmarl.advantages import MinibatchAdvantageNorm
from hcmarl.constraints import Evaluation, MinibatchConstraint, SurrogateBatch, clip_fraction, clip_ppo_objective
from hcmarl.errors import ConfigError, check_init_args
from hcmarl.nn.distributions import detach_distribution, kl_divergence
from hcmarl.trust_region import TrustRegion

Distribution = torch.distributions.Distribution
KLDirection = Literal["guider_learner", "learner_guider"]
AgentOrder = Literal["fixed", "random"]


def guided_clip_objective(
    log_prob: torch.Tensor,
    learner_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    eps: float,
    delta: float,
) -> torch.Tensor:
    """Per-sample double-clip objective of the guider (to maximise), ALGORITHMS.md section 4.

    min(ratio A, clip(inner, 1 - eps, 1 + eps) A) with ratio = exp(g - g_old) and
    inner = exp(clip(g - l, -log delta, log delta) + l - g_old). Where g - l leaves the band the
    inner ratio is constant in g, so the clipped branch passes no gradient; ``learner_log_prob``
    must be detached. ``delta = inf``: inner = ratio, PPO's clipped objective.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    inner = inner_ratio(log_prob, learner_log_prob, old_log_prob, delta)
    return torch.min(ratio * advantage, inner.clamp(1.0 - eps, 1.0 + eps) * advantage)


def inner_ratio(log_prob: torch.Tensor, learner_log_prob: torch.Tensor, old_log_prob: torch.Tensor, delta: float) -> torch.Tensor:
    """The double clip's inner ratio exp(clip(g - l, -log delta, log delta) + l - g_old) (ALGORITHMS.md section 4); exp(g - g_old) for delta = inf."""
    if math.isinf(delta):
        return torch.exp(log_prob - old_log_prob)
    log_delta = math.log(delta)
    return torch.exp((log_prob - learner_log_prob).clamp(-log_delta, log_delta) + learner_log_prob - old_log_prob)


def guided_mask(log_prob: torch.Tensor, learner_log_prob: torch.Tensor, delta: float) -> torch.Tensor:
    """1.0 where g - l lies outside the open band (-log delta, log delta), else 0.0 (ALGORITHMS.md section 4); all 0 for delta = inf."""
    if math.isinf(delta):
        return torch.zeros_like(log_prob)
    return ((log_prob - learner_log_prob).abs() >= math.log(delta)).to(log_prob.dtype)


class GuidedClip:
    """The guider's rule: MAGPO's double clip and masked KL to the learner (ALGORITHMS.md section 4).

    With no learner (MAT alone) or ``delta = inf`` (``.inf`` in YAML; CTDS) it is PPO's clip.

    Args:
        eps: PPO clip range of the (inner) ratio.
        delta: the double clip's band, > 1: log mu - log pi is clipped to +- log delta.
        epochs: passes over the batch (the learner steps on the same minibatches).
        minibatches: minibatches per pass.
        ent_coef: weight of the guider's entropy bonus.
        max_grad_norm: gradient-norm clip of the guider (None or 0: no clip), one clip over the whole guider.
        agent_order: the order of the agents in the guider's teacher-forced pass: ``fixed`` (0..N-1, as it acts) or
            ``random`` (a new permutation every epoch, the official code's ``agent_perm``); acting is always 0..N-1.
        advantage_norm: ``batch`` (the advantages as the iteration normalised them) or ``minibatch`` (normalised again
            in every minibatch, per lane, as the official code does; ``hcmarl.advantages.normalize_minibatch_advantage``).
        lanes: the official code's ``update_batch_size``: the batch's envs are split into this many equal lanes
            (``data.num_envs`` = lanes x the envs of one lane), every minibatch takes the same share of each lane, and
            its loss is the mean of the lanes' losses (so its gradient is the lanes' gradients averaged).
    """

    def __init__(
        self,
        eps: float = 0.2,
        delta: float = 1.5,
        epochs: int = 4,
        minibatches: int = 2,
        ent_coef: float = 0.01,
        max_grad_norm: float | None = 0.5,
        agent_order: AgentOrder = "fixed",
        advantage_norm: MinibatchAdvantageNorm = "batch",
        lanes: int = 1,
    ) -> None:
        check_init_args(
            type(self),
            {"eps": eps, "epochs": epochs, "minibatches": minibatches, "ent_coef": ent_coef, "max_grad_norm": max_grad_norm, "lanes": lanes},
            {"eps": "> 0", "epochs": ">= 1", "minibatches": ">= 1", "ent_coef": ">= 0", "max_grad_norm": ">= 0", "lanes": ">= 1"},
            max_grad_norm={"optional": True},
        )
        if agent_order not in ("fixed", "random"):
            raise ConfigError(f"model.guider.constraint.agent_order must be fixed or random, got {agent_order!r}")
        if advantage_norm not in ("batch", "minibatch"):
            raise ConfigError(f"model.guider.constraint.advantage_norm must be batch or minibatch, got {advantage_norm!r}")
        self.eps = eps
        self.delta = _check_delta(delta)
        self.epochs = epochs
        self.minibatches = minibatches
        self.ent_coef = ent_coef
        self.max_grad_norm = max_grad_norm
        self.agent_order = agent_order
        self.advantage_norm = advantage_norm
        self.lanes = lanes

    def loss(self, evaluation: Evaluation, data: SurrogateBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The guider's policy loss on a minibatch, mean over samples and agents ``[b, N]``, and detached diagnostics.

        ``evaluation`` is the guider's; its anchor (the learner's distribution and log pi(a_i|o_i) on the same
        samples, detached) is treated as a constant; without one the loss is PPO's.
        """
        guider, log_prob, entropy = evaluation.distribution, evaluation.log_prob, evaluation.entropy
        old_log_prob, advantage = data.old_log_prob, data.advantage
        if evaluation.anchor is None:
            objective = clip_ppo_objective(log_prob, old_log_prob, advantage, self.eps)
            loss = -objective.mean() - self.ent_coef * entropy.mean()
            return loss, self._diagnostics(loss, log_prob, old_log_prob, entropy)
        learner, learner_log_prob = evaluation.required_anchor("GuidedClip"), evaluation.required_anchor_log_prob("GuidedClip")
        objective = guided_clip_objective(log_prob, learner_log_prob, old_log_prob, advantage, self.eps, self.delta)
        mask = guided_mask(log_prob.detach(), learner_log_prob, self.delta)
        kl = kl_divergence(guider, learner)
        loss = -objective.mean() + (mask * kl).mean() - self.ent_coef * entropy.mean()
        diagnostics = self._diagnostics(loss, log_prob, old_log_prob, entropy)
        with torch.no_grad():
            reverse_kl = kl_divergence(learner, detach_distribution(guider))
            inner = inner_ratio(log_prob, learner_log_prob, old_log_prob, self.delta)
        diagnostics |= {
            "mask_frac": mask.mean(),
            "inner_clip_frac": clip_fraction(inner, self.eps),
            "kl_guider_learner": kl.detach().mean(),
            "kl_learner_guider": reverse_kl.mean(),
        }
        return loss, diagnostics

    def _diagnostics(self, loss: torch.Tensor, log_prob: torch.Tensor, old_log_prob: torch.Tensor, entropy: torch.Tensor) -> dict[str, torch.Tensor]:
        ratio = (log_prob - old_log_prob).detach().exp()
        return {"policy_loss": loss.detach(), "entropy": entropy.detach().mean(), "clip_frac": clip_fraction(ratio, self.eps)}


class GuidedImitation(MinibatchConstraint):
    """The learner's MAGPO rule: imitate the guider plus lambda times PPO against the behaviour (ALGORITHMS.md section 4).

    Per agent and timestep, objective (to maximise) = lam * factor * min(r A, clip(r, 1 - eps, 1 + eps) A)
    - KL(stopgrad(mu) || pi), r = exp(l - g_old); ``factor`` is a sequential schedule's product of the preceding
    agents' ratios (1 otherwise). Two ways to run it:

    - under ``GuidedClip`` (MAGPO), the guider's loop steps the learner on its own minibatches, from the same
      pre-update parameters; ``epochs`` and ``minibatches`` stay None;
    - under any other guider constraint (e.g. ``GuidedTrustRegion``), the learner updates after the guider, by
      its own schedule (``Simultaneous``, or ``Sequential`` with one actor per agent) over ``epochs`` x
      ``minibatches``, imitating the updated guider.

    Args:
        lam: weight of the PPO term, >= 0 (lambda; 0: CTDS's pure imitation).
        eps: PPO clip range of r.
        kl_direction: ``guider_learner`` = KL(mu || pi) (the official code, default) or
            ``learner_guider`` = KL(pi || mu) (as the paper writes it).
        ent_coef: weight of the learner's entropy bonus.
        max_grad_norm: gradient-norm clip of the learner (None or 0: no clip).
        epochs: passes over the batch when the learner runs its own loop (None under ``GuidedClip``).
        minibatches: minibatches per pass when the learner runs its own loop (None under ``GuidedClip``).
    """

    def __init__(
        self,
        lam: float = 1.0,
        eps: float = 0.2,
        kl_direction: KLDirection = "guider_learner",
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 0.5,
        epochs: int | None = None,
        minibatches: int | None = None,
    ) -> None:
        super().__init__(epochs, minibatches, ent_coef, max_grad_norm)
        check_init_args(type(self), {"lam": lam, "eps": eps}, {"lam": ">= 0", "eps": "> 0"})
        self.lam = lam
        self.eps = eps
        self.kl_direction = kl_direction

    def imitation_kl(self, learner: Distribution, guider: Distribution) -> torch.Tensor:
        """Per-sample KL between the (constant) guider and the learner, in ``kl_direction``."""
        guider = detach_distribution(guider)
        return kl_divergence(guider, learner) if self.kl_direction == "guider_learner" else kl_divergence(learner, guider)

    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        """Per-sample lam * factor * clip(r) A - KL, the learner being ``evaluation`` and the guider its ``anchor``."""
        objective = -self.imitation_kl(evaluation.distribution, evaluation.required_anchor("GuidedImitation"))
        if self.lam > 0:
            objective = objective + self.lam * clip_ppo_objective(evaluation.log_prob, data.old_log_prob, data.advantage, self.eps, data.factor)
        return objective

    def diagnostics(self, evaluation: Evaluation, log_ratio: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "imitation_kl": self.imitation_kl(evaluation.distribution, evaluation.required_anchor("GuidedImitation")).mean(),
            "clip_frac": clip_fraction(log_ratio.exp(), self.eps),
        }


class GuidedTrustRegion(TrustRegion):
    """A trust-region guider that keeps MAGPO's delta band and masked KL (a hybrid of ALGORITHMS.md sections 1 and 4).

    The natural-gradient step of ``TrustRegion`` (KL(mu_old || mu) <= max_kl, line search) on the per-sample surrogate
    ``inner A - mask KL(mu || stopgrad(pi))``: the linear surrogate with GuidedClip's inner ratio
    inner = exp(clip(g - l, -log delta, log delta) + l - g_old) in place of rho (no PPO clip: the trust region bounds
    the step), and the same mask, 1 where g - l lies outside (-log delta, log delta). The learner pi is the
    evaluation's anchor. ``delta = .inf`` (or no learner) gives ``TrustRegion``'s surrogate on the guider.

    Args:
        delta: the band, > 1: log mu - log pi is clipped to +- log delta.
        **trust_region: ``TrustRegion``'s arguments (max_kl, cg_iters, damping, backtrack, max_backtracks, accept_ratio,
            fisher_fraction, divergence).
    """

    def __init__(self, delta: float = 1.5, **trust_region: Any) -> None:
        super().__init__(**trust_region)
        self.delta = _check_delta(delta)

    def surrogate(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        """Per-sample ``factor * inner * A - mask * KL(mu || pi)`` (``TrustRegion.surrogate`` without an anchor)."""
        if evaluation.anchor is None or math.isinf(self.delta):
            return super().surrogate(evaluation, data)
        learner, learner_log_prob = evaluation.anchor, evaluation.required_anchor_log_prob("GuidedTrustRegion")
        inner = inner_ratio(evaluation.log_prob, learner_log_prob, data.old_log_prob, self.delta)
        if data.factor is not None:
            inner = data.factor * inner
        mask = guided_mask(evaluation.log_prob.detach(), learner_log_prob, self.delta)
        return inner * data.advantage - mask * kl_divergence(evaluation.distribution, learner)


def _check_delta(delta: float) -> float:
    if not delta > 1.0:
        raise ConfigError(f"model.guider.constraint.delta must be greater than 1 (or .inf for no double clip), got {delta}")
    return float(delta)
