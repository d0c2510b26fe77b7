"""Template: a new per-sample policy objective, named from a recipe by its class path (docs/extending.md).

The example is SPO, "Simple Policy Optimization" (Xie et al., 2024). Per sample, with the probability ratio
rho = pi_new(a|o) / pi_old(a|o) and advantage A, it maximises

    L_SPO = rho * A - |A| / (2 * eps) * (rho - 1)^2

For a fixed A its maximiser in rho is 1 + eps * sign(A), the edge of PPO's clip range. The penalty pulls rho back
towards that edge with a gradient that grows with the distance. PPO's clip gives no gradient at all once rho is
outside the range.

A new surrogate is a ``MinibatchConstraint`` subclass with one method, ``objective(evaluation, data)``. The base
class supplies the Adam loop over ``epochs`` x ``minibatches``, the entropy bonus, gradient clipping and the
standard diagnostics (``policy_loss``, ``entropy``, ``approx_kl``). The class works with every schedule:
``Sequential`` hands it the preceding agents' ratio product as ``data.factor`` (HAPPO's convention multiplies it
outside the objective).

Use it from a recipe with the overlay beside this file (run from the repository root):

    PYTHONPATH=. hcmarl fit --config recipes/mappo/coordsum_3x10.yaml --config examples/extending/new_surrogate.yaml
"""

from __future__ import annotations

import torch

from hcmarl.constraints import Evaluation, MinibatchConstraint, SurrogateBatch, clip_fraction


def spo_objective(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    eps: float,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample SPO objective (to maximise): factor * (rho * A - |A| / (2 eps) * (rho - 1)^2).

    All tensors are ``[B, n]`` (``factor``: ``[B, 1]``, positive, never differentiated), rho = exp(log_prob - old_log_prob).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    objective = ratio * advantage - advantage.abs() / (2.0 * eps) * (ratio - 1.0).square()
    return objective if factor is None else factor * objective


class SPO(MinibatchConstraint):
    """SPO's penalised ratio objective by Adam over ``epochs`` x ``minibatches``.

    Args:
        eps: the ratio deviation the penalty aims at (the maximiser is rho = 1 + eps * sign(A)).
        epochs, minibatches, ent_coef, max_grad_norm: see ``hcmarl.constraints.MinibatchConstraint``.
    """

    def __init__(self, eps: float = 0.2, epochs: int = 5, minibatches: int = 1, ent_coef: float = 0.01, max_grad_norm: float | None = 10.0) -> None:
        super().__init__(epochs, minibatches, ent_coef, max_grad_norm)
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps

    def objective(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        return spo_objective(evaluation.log_prob, data.old_log_prob, data.advantage, self.eps, data.factor)

    def diagnostics(self, evaluation: Evaluation, log_ratio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logged as ``learner/clip_frac`` (|rho - 1| > eps, comparable to ClipPPO's) and ``learner/ratio_dev`` (mean |rho - 1|)."""
        ratio = log_ratio.exp()
        return {"clip_frac": clip_fraction(ratio, self.eps), "ratio_dev": (ratio - 1.0).abs().mean()}
