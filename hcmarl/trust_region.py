"""The trust-region constraint (ALGORITHMS.md section 1, ``TrustRegion``; HATRPO, HCPO).

A natural-gradient step on a surrogate ``L``, by default the linear ``E[factor * rho * A]``
(``TrustRegion.surrogate``; MAGPO's guided form overrides it, ``hcmarl.guided.GuidedTrustRegion``):
g = grad L; F p = Hessian-vector product of the mean KL(pi_old || pi_theta) plus damping * p, taken in
its Gauss-Newton form J^T H J p (``KLCurvature``, exact at the old parameters where F is evaluated);
x = CG(F, g); step = sqrt(2 * max_kl / x^T F x) * x; a backtracking line search takes the
first fraction ``backtrack^k`` of the step whose KL <= max_kl, whose improvement is positive
and at least ``accept_ratio`` of the expected one; if none qualifies the parameters are
restored exactly. Under DDP the gradient, every F p, the KL and the improvement are averaged
over ranks, so every rank takes the identical step. ``divergence: harl`` puts HARL's divergence
(``hcmarl.nn.distributions.harl_divergence``) in the KL's place, in F and in the line search alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hcmarl.constraints import Constraint, Evaluate, Evaluation, SurrogateBatch, index_distribution
from hcmarl.distributed import all_reduce_mean
from hcmarl.errors import ConfigError, check_init_args
from hcmarl.nn.distributions import DIVERGENCES, detach_distribution, distribution_like, distribution_parameters
from hcmarl.nn.gru_replay import replay_by_autograd
from hcmarl.optim import GradientStep, take_rows

Distribution = torch.distributions.Distribution


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10, tol: float = 1e-10) -> torch.Tensor:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec`` (no matrix formed)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class _ParameterSlice:
    """The parameters a step moves (``step.agent``'s slice of stacked per-agent parameters, or all), as one flat vector."""

    def __init__(self, step: GradientStep) -> None:
        optimizer = getattr(step.optimizer, "optimizer", step.optimizer)
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self.part = slice(None) if step.agent is None else slice(step.agent, step.agent + 1)

    def flat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t[self.part].reshape(-1) for t in tensors])

    def grad(
        self,
        outputs: torch.Tensor | list[torch.Tensor],
        create_graph: bool = False,
        retain_graph: bool = False,
        grad_outputs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The flat gradient of a scalar, or the vector-Jacobian product ``J^T grad_outputs`` of tensors, in these parameters."""
        grads = torch.autograd.grad(
            outputs, self.params, grad_outputs, create_graph=create_graph, retain_graph=retain_graph or create_graph, allow_unused=True
        )
        return self.flat([torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)])

    def get(self) -> torch.Tensor:
        return self.flat([p.detach() for p in self.params]).clone()

    @torch.no_grad()
    def set(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            view = p[self.part]
            view.copy_(flat[offset : offset + view.numel()].view_as(view))
            offset += view.numel()


class KLCurvature:
    """Fisher-vector products ``F v`` of a mean KL(pi_old || pi_theta) at theta = theta_old, as ``J^T H J v``.

    With eta the distribution's parameters (``distribution_parameters``: logits, or loc and scale) and
    J = d eta / d theta, the KL's Hessian is J^T H J + sum_k (dKL/d eta_k) d^2 eta_k / d theta^2, where H is
    the KL's Hessian in eta. At theta_old the new distribution is the old one, dKL/d eta = 0, and the
    Hessian is exactly the Gauss-Newton form. Per product: J v by differentiating the graph of J^T u
    (built once) with respect to u, H (J v) on the small eta graph, and J^T (H J v) by one backward pass,
    instead of differentiating the KL's gradient through the network again.

    Args:
        params: the parameters the step moves.
        distribution: the policy at theta_old on the KL's samples, attached to the parameters' graph.
        mean_kl: the mean KL(pi_old || .) of a distribution of that kind on those samples.
    """

    def __init__(self, params: _ParameterSlice, distribution: Distribution, mean_kl: Callable[[Distribution], torch.Tensor]) -> None:
        self.params = params
        self.eta = distribution_parameters(distribution)
        self.active = any(e.requires_grad for e in self.eta)
        if not self.active:  # the parameters do not reach the distribution: F = 0
            return
        self.eta_leaves = [e.detach().requires_grad_() for e in self.eta]
        self.kl_eta_grad = torch.autograd.grad(mean_kl(distribution_like(distribution, self.eta_leaves)), self.eta_leaves, create_graph=True)
        self.u = [torch.zeros_like(e, requires_grad=True) for e in self.eta]
        self.jacobian_t_u = params.grad(self.eta, create_graph=True, grad_outputs=self.u)  # J^T u, linear in u

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``F v`` for a flat ``v`` over the parameters moved (no damping)."""
        if not self.active:
            return torch.zeros_like(v)
        jv_parts = torch.autograd.grad(self.jacobian_t_u @ v, self.u, retain_graph=True, allow_unused=True)
        jv = [torch.zeros_like(u) if g is None else g for u, g in zip(self.u, jv_parts, strict=True)]
        hjv_parts = torch.autograd.grad(self.kl_eta_grad, self.eta_leaves, grad_outputs=jv, retain_graph=True, allow_unused=True)
        hjv = [torch.zeros_like(e) if g is None else g for e, g in zip(self.eta_leaves, hjv_parts, strict=True)]
        return self.params.grad(self.eta, retain_graph=True, grad_outputs=hjv)


class TrustRegion(Constraint):
    """Natural-gradient step with a KL trust region and a backtracking line search.

    Args:
        max_kl: the trust region, mean KL(pi_old || pi_new) over the batch.
        cg_iters: conjugate-gradient iterations.
        damping: added to the Fisher-vector product (F + damping * I).
        backtrack: step fraction multiplier per line-search try.
        max_backtracks: line-search tries.
        accept_ratio: minimal actual / expected improvement for acceptance.
        fisher_fraction: the share of the batch the Fisher-vector products average over (evenly spaced samples,
            every round(1 / fisher_fraction)-th; 1: all). The gradient and the line search's KL use the whole batch.
            Below 1 it cuts the conjugate gradient's cost for large networks (a transformer guider).
        divergence: what the trust region bounds: ``kl``, the true KL(pi_old || pi_new) (ALGORITHMS.md section 1), or
            ``harl``, HARL's approximation (``harl_divergence``: for categoricals, sum over actions of r - 1 - log r,
            tighter than the KL on rare actions; the divergence HARL-based code such as the HCPO paper's bounds).
    """

    def __init__(
        self,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        damping: float = 0.1,
        backtrack: float = 0.8,
        max_backtracks: int = 10,
        accept_ratio: float = 0.5,
        fisher_fraction: float = 1.0,
        divergence: str = "kl",
    ) -> None:
        if not 0.0 < fisher_fraction <= 1.0:
            raise ConfigError(f"TrustRegion.fisher_fraction must be in (0, 1], got {fisher_fraction}")
        if divergence not in DIVERGENCES:
            raise ConfigError(f"TrustRegion.divergence={divergence!r} is not known; choose one of {', '.join(DIVERGENCES)} (default kl)")
        check_init_args(
            type(self),
            {
                "max_kl": max_kl,
                "cg_iters": cg_iters,
                "damping": damping,
                "backtrack": backtrack,
                "max_backtracks": max_backtracks,
                "accept_ratio": accept_ratio,
            },
            {"max_kl": "> 0", "cg_iters": ">= 1", "damping": ">= 0", "backtrack": "in (0, 1)", "max_backtracks": ">= 1", "accept_ratio": ">= 0"},
        )
        self.max_kl = max_kl
        self.cg_iters = cg_iters
        self.damping = damping
        self.backtrack = backtrack
        self.max_backtracks = max_backtracks
        self.accept_ratio = accept_ratio
        self.fisher_fraction = fisher_fraction
        self.divergence = DIVERGENCES[divergence]

    def surrogate(self, evaluation: Evaluation, data: SurrogateBatch) -> torch.Tensor:
        """Per-sample surrogate to maximise, ``factor * rho * A`` with rho = pi_new / pi_old (ALGORITHMS.md section 1, ``TrustRegion``)."""
        ratio = torch.exp(evaluation.log_prob - data.old_log_prob)
        return (ratio if data.factor is None else data.factor * ratio) * data.advantage

    @sdpa_kernel(SDPBackend.MATH)  # Fisher-vector products differentiate twice: only SDPA's math kernel has a double backward
    @replay_by_autograd()  # and only GRU replays recorded by autograd, not GRUReplay's own backward
    def update(self, evaluate: Evaluate, data: SurrogateBatch, step: GradientStep) -> dict[str, torch.Tensor]:
        """One trust-region step; ``data.factor`` weights the surrogate's samples, ``data.kl_weight`` the KL's.

        With ``kl_weight`` w the trust region bounds the plain sample mean of w * KL, (1/B) sum_b w_b KL_b (HCPO's
        ``paper_weighting``, the paper's Algorithm 3 literally: a weighted sum over the sample count, not
        sum(w KL) / sum(w), which is tighter by the mean weight).
        """
        everything = torch.arange(len(data), device=data.advantage.device)
        kl_weight = data.kl_weight
        params = _ParameterSlice(step)
        stride = max(1, round(1 / self.fisher_fraction))
        fisher_samples = None if stride == 1 else everything[::stride]

        def mean_kl(new: Distribution, idx: torch.Tensor | None = None) -> torch.Tensor:
            """Mean divergence (KL by default) of ``new`` from pi_old over the samples ``idx`` of the batch (None: all),
            ``new`` evaluated on those samples."""
            old, w = (
                (old_dist, kl_weight)
                if idx is None
                else (index_distribution(old_dist, idx), None if kl_weight is None else take_rows(kl_weight, idx))
            )
            kl = self.divergence(old, new)
            return kl.mean() if w is None else (w * kl).mean()

        evaluation = evaluate(everything)  # theta_old: the surrogate's gradient, the old policy and (all samples) the KL's curvature
        old_dist = detach_distribution(evaluation.distribution)
        surrogate = self.surrogate(evaluation, data).mean()
        g = all_reduce_mean(params.grad(surrogate, retain_graph=True))
        old_value = all_reduce_mean(surrogate.detach())
        at_fisher_samples = evaluation.distribution if fisher_samples is None else evaluate(fisher_samples).distribution
        curvature = KLCurvature(params, at_fisher_samples, lambda new: mean_kl(new, fisher_samples))

        def fisher_vector_product(v: torch.Tensor) -> torch.Tensor:
            return all_reduce_mean(curvature(v)) + self.damping * v

        x = conjugate_gradient(lambda v: fisher_vector_product(v).detach(), g, self.cg_iters)
        xFx = (x @ fisher_vector_product(x)).clamp_min(1e-12)
        full_step = torch.sqrt(2 * self.max_kl / xFx) * x
        expected = g @ full_step
        old_params = params.get()
        with torch.no_grad():
            accepted, kl, improvement, tries = torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), 0
            for tries in range(1, self.max_backtracks + 1):
                fraction = self.backtrack ** (tries - 1)
                params.set(old_params + fraction * full_step)
                trial = evaluate(everything)
                kl = all_reduce_mean(mean_kl(trial.distribution))
                improvement = all_reduce_mean(self.surrogate(trial, data).mean()) - old_value
                if kl <= self.max_kl and improvement > 0 and improvement / (expected * fraction) > self.accept_ratio:
                    accepted = torch.tensor(1.0)
                    break
            else:
                params.set(old_params)
                kl, improvement = torch.tensor(0.0), torch.tensor(0.0)
        return {
            "policy_loss": -(old_value + improvement).detach(),
            "kl": kl.detach(),
            "improvement": improvement.detach(),
            "expected_improvement": expected.detach(),
            "line_search_steps": torch.tensor(float(tries)),
            "accepted": accepted,
        }
