"""HCPO's conductor role (ALGORITHMS.md section 3): the central conductor, its instructions, and the local conductors.

In training rollouts the central conductor w_Psi(.|s_t) samples one instruction M_t per env and
step; it is broadcast to every agent and stored with its full distribution. The central
conductor moves by its constraint (``TrustRegion(delta1)``) on E[(w_new/w_old)(M_t|s_t) A^M_t];
it hands the agents their initial sequential factor; the local conductors w_psi_i(.|o_i) are
then distilled from the updated central one. At deployment an ``execution`` mode says where
each agent's instruction comes from.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from tensordict import TensorDictBase
from torch import nn
from torch.distributions import Categorical

from hcmarl.constraints import Constraint, Distill, Distilled, Evaluation, SurrogateBatch
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError, check_init_args
from hcmarl.keys import (
    AGENT_INSTRUCTION,
    CONDUCTOR_ADVANTAGE,
    CONDUCTOR_LOG_PROB,
    CONDUCTOR_PROBS,
    INSTRUCTION,
    OBSERVATION,
    STATE,
)
from hcmarl.nn.conductor import ConductorNetwork, LocalConductors
from hcmarl.optim import GradientStep, take_rows

ExecutionMode = Literal["local", "local_argmax", "shared_seed", "central", "random", "none"]
EXECUTION_MODES: tuple[str, ...] = get_args(ExecutionMode)


def shared_seed_instruction(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of each agent's local distribution ``probs`` ``[..., N, K]`` at one shared ``uniform`` ``[...]``.

    Agents holding the same random seed draw the same ``uniform`` without communicating, so
    identical local distributions give the identical instruction (the ``shared_seed`` mode).
    """
    cdf = probs.cumsum(dim=-1)
    u = uniform.unsqueeze(-1).expand(cdf.shape[:-1]).unsqueeze(-1).contiguous()
    return torch.searchsorted(cdf.contiguous(), u).squeeze(-1).clamp_max(probs.shape[-1] - 1)


class Conductor(nn.Module):
    """The central conductor w_Psi(M|s), its K instructions and the local conductors w_psi_i(M|o_i).

    Args:
        network: the central conductor block, ``hcmarl.nn.ConductorNetwork``.
        local: the local conductors block, ``hcmarl.nn.LocalConductors``.
        constraint: how the central conductor moves (HCPO: ``TrustRegion(max_kl=0.01)``, delta1).
        distill: how the local conductors move towards the updated central one (``Distill``).
        n_instructions: K, the number of instructions (HCPO: 10; 1 turns the conductor off, HATRPO).
        behaviour: ``central`` (M_t sampled from w_Psi, which is trained) or ``random`` (uniform M_t,
            nothing trained: the paper's random-conductor ablation).
        execution: where each agent's instruction comes from at evaluation and deployment (ALGORITHMS.md
            section 3): ``local`` (sampled from its local conductor), ``local_argmax``, ``shared_seed``,
            ``central`` (w_Psi on the global state), ``random`` (uniform), ``none`` (K = 1 only).
        paper_weighting: weight the agents' surrogate by w_new(M_t|s_t) and their KL samples by w_psi_i(M_t|o_i)
            (the paper's Algorithm 3 literally: agent i's constraint is (1/(B T)) sum_t w_psi_i(M_t|o_i) KL_t, a
            weighted sum over the sample count) instead of the importance weight w_new/w_old and the plain mean KL.
        lr: Adam learning rate of the central conductor, used only by an Adam-based constraint (e.g. ClipPPO).
        local_lr: Adam learning rate of the local conductors.
    """

    def __init__(
        self,
        network: ConductorNetwork,
        local: LocalConductors,
        constraint: Constraint,
        distill: Distill,
        n_instructions: int = 10,
        behaviour: Literal["central", "random"] = "central",
        execution: ExecutionMode = "local",
        paper_weighting: bool = False,
        lr: float = 5e-4,
        local_lr: float = 5e-4,
    ) -> None:
        super().__init__()
        check_init_args(Conductor, {"lr": lr, "local_lr": local_lr}, {"lr": "> 0", "local_lr": "> 0"}, key="model.conductor.init_args")
        if n_instructions < 1:
            raise ConfigError(f"model.conductor.n_instructions must be at least 1, got {n_instructions}")
        if execution == "none" and n_instructions != 1:
            raise ConfigError(
                f"model.conductor.execution='none' means no conductor (K = 1), but n_instructions={n_instructions}; "
                "set n_instructions=1, or pick another execution mode"
            )
        if behaviour == "random" and paper_weighting:
            raise ConfigError("model.conductor.paper_weighting needs a learned conductor; it cannot be used with behaviour='random'")
        self.network = network
        self.local = local
        self.constraint = constraint
        self.distill = distill
        self.n_instructions = n_instructions
        self.behaviour = behaviour
        self.execution = execution
        self.paper_weighting = paper_weighting
        self.lr = lr
        self.local_lr = local_lr

    @property
    def learns(self) -> bool:
        """Whether the conductors are trained: a learned behaviour with more than one instruction."""
        return self.behaviour == "central" and self.n_instructions > 1

    def build(self, info: EnvInfo) -> None:
        self.network.build(info, self.n_instructions)
        self.local.build(info, self.n_instructions)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the central conductor (which a trust region only reads)."""
        return torch.optim.Adam(self.network.parameters(), lr=self.lr, eps=1e-5)

    def make_local_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the local conductors."""
        return torch.optim.Adam(self.local.parameters(), lr=self.local_lr, eps=1e-5)

    # ---- acting ---------------------------------------------------------------------------
    def central(self, td: TensorDictBase) -> Categorical:
        """The central distribution over instructions given ``state``: w_Psi(.|s), or uniform for ``behaviour='random'``."""
        if self.behaviour == "random":
            state = td.get(STATE)
            return Categorical(logits=state.new_zeros(*state.shape[:-1], self.n_instructions))
        return self.network(td)

    @torch.no_grad()
    def behave(self, td: TensorDictBase) -> TensorDictBase:
        """Training rollouts: sample M_t ~ w(.|s_t), broadcast it, store it with w_old(.|s_t) and log w_old(M_t|s_t)."""
        dist = self.central(td)
        instruction = dist.sample()
        td.set(INSTRUCTION, instruction)
        td.set(CONDUCTOR_PROBS, dist.probs)
        td.set(CONDUCTOR_LOG_PROB, dist.log_prob(instruction))
        td.set(AGENT_INSTRUCTION, self._broadcast(instruction, td))
        return td

    @torch.no_grad()
    def instruct(self, td: TensorDictBase, mode: ExecutionMode) -> TensorDictBase:
        """Write each agent's instruction ``("agents", "instruction")`` for ``mode`` (ALGORITHMS.md section 3, execution modes).

        ``local``, ``local_argmax`` and ``shared_seed`` read only each agent's own observation.
        """
        if mode not in EXECUTION_MODES:
            raise ConfigError(f"unknown conductor execution mode {mode!r}; known: {', '.join(EXECUTION_MODES)}")
        if mode == "central":
            return self.behave(td)
        obs = td.get(OBSERVATION)
        batch_shape = obs.shape[:-2]
        if mode in ("random", "none"):
            high = self.n_instructions if mode == "random" else 1
            instruction = self._broadcast(torch.randint(high, batch_shape, device=obs.device), td)
        else:
            local = self.local(td)
            if mode == "local":
                instruction = local.sample()
            elif mode == "local_argmax":
                instruction = local.probs.argmax(dim=-1)
            else:
                instruction = shared_seed_instruction(local.probs, torch.rand(batch_shape, device=obs.device))
        td.set(AGENT_INSTRUCTION, instruction)
        return td

    @staticmethod
    def _broadcast(instruction: torch.Tensor, td: TensorDictBase) -> torch.Tensor:
        n_agents = td.get(OBSERVATION).shape[-2]
        return instruction.unsqueeze(-1).expand(*instruction.shape, n_agents)

    # ---- training -------------------------------------------------------------------------
    def update(self, batch: TensorDictBase, step: GradientStep) -> dict[str, torch.Tensor]:
        """Move w_Psi on E[(w_new(M_t|s_t) / w_old(M_t|s_t)) * A^M_t] by the constraint (HCPO iteration, step 2).

        ``batch`` is flat ``[B]`` and holds the normalised ``conductor_advantage``. Nothing moves
        when the conductor does not learn (K = 1 or a random conductor).
        """
        if not self.learns:
            return {}
        batch = batch.select(STATE, INSTRUCTION, CONDUCTOR_LOG_PROB, CONDUCTOR_ADVANTAGE)
        instruction = batch.get(INSTRUCTION).unsqueeze(-1)  # the conductor is one "agent": [B, 1]

        def evaluate(idx: torch.Tensor) -> Evaluation:
            dist = Categorical(logits=self.network(take_rows(batch, idx)).logits.unsqueeze(-2))  # batch [b, 1]
            return Evaluation(dist.log_prob(take_rows(instruction, idx)), dist.entropy(), dist)

        data = SurrogateBatch(batch.get(CONDUCTOR_LOG_PROB).unsqueeze(-1), batch.get(CONDUCTOR_ADVANTAGE).unsqueeze(-1))
        return self.constraint.update(evaluate, data, step)

    @torch.no_grad()
    def agent_weights(self, batch: TensorDictBase, updated: Categorical) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The agents' initial sequential factor ``[..., 1]`` and KL weights ``[..., N]`` (HCPO iteration, step 3).

        By default the conductor acts as agent 0: factor = w_new(M_t|s_t) / w_old(M_t|s_t), KL unweighted
        (None). With ``paper_weighting`` (Algorithm 3 literally): factor = w_new(M_t|s_t) and each
        agent's KL samples weighted by its local conductor's w_psi_i(M_t|o_i), the trust region then bounding
        (1/(B T)) sum w KL (``TrustRegion.update``). ``updated`` is w_new(.|s_t) on
        ``batch``, ``central(batch)`` after the conductor's update.
        """
        instruction = batch.get(INSTRUCTION)
        new_log_prob = updated.log_prob(instruction)
        if not self.paper_weighting:
            return (new_log_prob - batch.get(CONDUCTOR_LOG_PROB)).exp().unsqueeze(-1), None
        local_probs = self.local(batch).probs  # [..., N, K]
        index = instruction.unsqueeze(-1).unsqueeze(-1).expand(*local_probs.shape[:-1], 1)
        return new_log_prob.exp().unsqueeze(-1), local_probs.gather(-1, index).squeeze(-1)

    def update_local(self, batch: TensorDictBase, step: GradientStep, central_probs: torch.Tensor) -> Distilled | None:
        """Distil each w_psi_i(.|o_i) from the updated w_Psi(.|s_t) by soft-target cross-entropy (HCPO iteration, step 5);
        None when the conductors do not learn.

        ``central_probs`` ``[B, K]``: the updated w_Psi(.|s_t) on the flat ``batch`` (the target).
        """
        if not self.learns:
            return None
        batch = batch.select(*self.local.in_keys)  # what the distillation indexes
        n_agents = batch.get(OBSERVATION).shape[-2]
        target = central_probs.unsqueeze(-2).expand(-1, n_agents, -1)  # [B, N, K]
        return self.distill.update(lambda idx: self.local(take_rows(batch, idx)), target, step)

    @torch.no_grad()
    def diagnostics(self, batch: TensorDictBase, central_probs: torch.Tensor, local: Categorical | None) -> dict[str, torch.Tensor]:
        """Instruction usage (fraction of steps with M_t = k) on the flat ``batch`` and, given the distilled local
        conductors ``local`` on it (batch ``[B, N]``), their argmax agreement with the updated w_Psi(.|s_t)
        (``central_probs`` ``[B, K]``)."""
        usage = torch.bincount(batch.get(INSTRUCTION).reshape(-1), minlength=self.n_instructions).float()
        metrics = {f"conductor/usage_{k}": share for k, share in enumerate(usage / usage.sum())}
        if local is not None:
            central = central_probs.argmax(dim=-1).unsqueeze(-1)  # [B, 1]
            metrics["local/agreement"] = (local.probs.argmax(dim=-1) == central).float().mean()
        return metrics
