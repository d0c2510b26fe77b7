"""The composite LightningModule: the Lightning glue around one iteration's plan (``hcmarl.iteration``).

DESIGN.md, "One iteration": the plan computes advantages once with the old critic, then runs its stages in
the order conductor, guider and learner, learner, critic, local conductors. This module holds the roles,
builds their networks, makes their optimisers (manual optimisation, one per name in the plan), hands
the datamodule its acting policies (``hcmarl.acting``), logs, evaluates and checkpoints.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from tensordict import TensorDict, TensorDictBase
from torch import nn

from hcmarl.acting import EvaluationMode, behaviour_policy, deployment_policy, evaluation_modes
from hcmarl.compilation import compile_roles
from hcmarl.datamodules import RolloutSource, require_rollout_source
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError, NonFiniteLossError
from hcmarl.evaluation import check_evaluation_actions, logged_means
from hcmarl.extra_role import ExtraRole
from hcmarl.iteration import plan_iteration
from hcmarl.keys import EPISODE_RETURN
from hcmarl.optim import GradientStep, optimizer_layout_problem
from hcmarl.roles import ActingPolicy, Conductor, Critic, Guider, Learner, Roles
from hcmarl.stages import IterationContext

LOSS_METRICS = ("conductor/policy_loss", "guider/policy_loss", "guider/value_loss", "learner/policy_loss", "critic/value_loss", "local/cross_entropy")


class MARLModule(L.LightningModule):
    """The roles a recipe names, trained on on-policy rollouts (ALGORITHMS.md sections 2, 3 and 4).

    Learner + critic: MAPPO, IPPO, HAPPO, HATRPO, HAA2C, A2PO. With a conductor: HCPO, whose critic
    is Q(s, .) with a head per instruction and whose actors read the instruction. With a guider
    and a learner: MAGPO and CTDS (the guider collects, the learner is deployed); a guider alone:
    MAT. Without a critic, the guider's value head gives the values.

    Args:
        learner: the decentralised actors' role (None: a guider alone, executed centrally).
        critic: the value role (None: the guider's value head).
        conductor: HCPO's conductor role (None: no conductor).
        guider: MAGPO's autoregressive guider role (None: the learner collects).
        gamma: discount.
        gae_lambda: GAE's lambda.
        advantage_norm: normalise advantages over the ``batch``, per ``agent``, or ``none``.
        truncation: a time-limit end (truncated, not terminated) ``bootstrap``s GAE from the value of the last
            observation, or is ``terminal`` like any other end, as the official MAGPO code treats it (its params.csv
            recipes set it); ``hcmarl.value_sources.Truncation``.
        deterministic_eval: evaluate with the policy's mode instead of sampled actions (under ``data.protocol: hcmarl``;
            None: sampled). The ``magpo`` and ``hcpo`` protocols fix it: a value other than theirs is a ``ConfigError``
            (from the CLI before anything is built, else at ``setup``).
        compile: ``torch.compile`` the roles' networks (``hcmarl.compilation.compile_roles``), except those moved
            by a trust region (it differentiates twice); a part that fails to compile runs eagerly, with one log line.
            Off by default: measured on CPU it does not pay (docs/benchmarks.md, "Compilation").
        extra_roles: roles beyond these four (``hcmarl.extra_role.ExtraRole``), each its own stage after the built-in
            ones, with its own optimiser (docs/extending.md, "A new role").
    """

    def __init__(
        self,
        learner: Learner | None = None,
        critic: Critic | None = None,
        conductor: Conductor | None = None,
        guider: Guider | None = None,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        advantage_norm: Literal["batch", "agent", "none"] = "batch",
        truncation: Literal["bootstrap", "terminal"] = "bootstrap",
        deterministic_eval: bool | None = None,
        compile: bool = False,
        extra_roles: list[ExtraRole] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.learner = learner
        self.critic = critic
        self.conductor = conductor
        self.guider = guider
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.advantage_norm = advantage_norm
        self.truncation = truncation
        self.deterministic_eval = deterministic_eval
        self.compile_networks = compile
        self.env_info: EnvInfo | None = None
        self.extra_roles = nn.ModuleList(extra_roles or [])
        self.roles = Roles(learner, critic, conductor, guider, tuple(extra_roles or ()))
        # before the trainer starts: a wrong recipe leaves no run folder behind
        self.plan = plan_iteration(self.roles, gamma, gae_lambda, advantage_norm, truncation)

    # ---- building -------------------------------------------------------------------------
    @property
    def rollouts(self) -> RolloutSource:
        """The trainer's datamodule, as what this module reads from it (``hcmarl.datamodules.RolloutSource``)."""
        return require_rollout_source(getattr(self.trainer, "datamodule", None))

    def setup(self, stage: str) -> None:
        dm = self.rollouts
        check_evaluation_actions(dm.protocol, self.deterministic_eval)
        if self.env_info is None:
            if dm.env_info is None:
                raise RuntimeError("MARLModule.setup: the datamodule has not made its env yet (its setup runs first)")
            self.build(dm.env_info)
        if stage == "fit":
            self.roles.check_batch(dm.num_envs, dm.frames_per_batch)

    def build(self, info: EnvInfo) -> None:
        """Create every role's networks for the env described by ``info`` (``Roles.build``), compiled if asked."""
        self.env_info = info
        self.roles.build(info)
        if self.compile_networks:
            compile_roles(learner=self.learner, critic=self.critic, guider=self.guider, conductor=self.conductor)

    def env_transforms(self) -> list:
        """TorchRL transforms the envs need for this module's policies (``Roles.env_transforms``)."""
        return self.roles.env_transforms()

    def optimizer_roles(self) -> list[str]:
        """The name of each optimiser ``configure_optimizers`` returns, in order (``hcmarl.iteration.OPTIMIZER_ORDER``)."""
        return list(self.plan.optimizers)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.plan.make_optimizers().values())

    # ---- acting (the datamodule's interface) ---------------------------------------------
    def behaviour_policy(self) -> ActingPolicy:
        """What collects training data (``hcmarl.acting.behaviour_policy``)."""
        return behaviour_policy(self.roles)

    def deployment_policy(self, execution: EvaluationMode | None = None, deterministic: bool | None = None) -> ActingPolicy:
        """What is evaluated and deployed (``hcmarl.acting.deployment_policy``): with the policy's mode if ``deterministic``,
        sampling if not; None: as ``deterministic_eval`` says (an evaluation protocol other than ``hcmarl`` decides)."""
        return deployment_policy(self.roles, execution, bool(self.deterministic_eval) if deterministic is None else deterministic)

    def evaluation_modes(self) -> dict[str, EvaluationMode | None]:
        """Metric prefix -> execution mode of each evaluation (``hcmarl.acting.evaluation_modes``)."""
        return evaluation_modes(self.roles)

    # ---- training -------------------------------------------------------------------------
    def compute_advantages(self, batch: TensorDictBase) -> None:
        """The plan's values and advantages, written into ``batch`` ``[envs, time]`` (``hcmarl.value_sources.Advantages``)."""
        self.plan.advantages(batch)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        self.compute_advantages(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]  # Lightning unwraps a single optimiser
        metrics = self.update_roles(batch, [self._gradient_step(opt) for opt in optimizers])
        self._check_finite(metrics)
        self._log_iteration(batch, metrics, time.perf_counter() - start)

    def update_roles(self, batch: TensorDictBase, steps: list[GradientStep]) -> dict[str, torch.Tensor]:
        """The plan's stages on a batch ``[envs, time]`` holding advantages; ``steps`` follow ``configure_optimizers``."""
        return self.plan.run_stages(IterationContext(batch, dict(zip(self.optimizer_roles(), steps, strict=True))))

    def _gradient_step(self, optimizer: Any) -> GradientStep:
        return GradientStep(
            optimizer,
            self.manual_backward,
            lambda opt, max_norm: self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm"),
        )

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> None:
        """A NonFiniteLossError if a built-in role's loss (``LOSS_METRICS``) or an extra role's ``<name>/loss`` is not finite."""
        names = [*LOSS_METRICS, *(f"{role.name}/loss" for role in self.roles.extra)]
        losses = torch.stack([metrics[k] for k in names if k in metrics])
        if not bool(torch.isfinite(losses).all()):
            bad = [k for k in names if k in metrics and not torch.isfinite(metrics[k])]
            raise NonFiniteLossError(
                f"iteration {self.current_epoch}: {', '.join(bad)} became NaN or infinite; training stopped and the "
                "last checkpoint was kept. Lower the learning rate, enable value_norm, or lower max_grad_norm."
            )

    def _log_iteration(self, batch: TensorDictBase, losses: dict[str, torch.Tensor], update_seconds: float) -> None:
        dm = self.rollouts
        metrics: dict[str, torch.Tensor | float] = dict(losses)
        done = batch.get(("next", "done")).squeeze(-1)
        if bool(done.any()):
            if (ret := batch.get(("next", EPISODE_RETURN), None)) is not None:
                metrics["train/return"] = ret.squeeze(-1)[done].mean()
            env_metrics = () if self.env_info is None else self.env_info.metrics
            metrics |= {f"train/{name}": batch.get(("next", name)).squeeze(-1)[done].mean() for name in env_metrics}  # at episodes' ends
        seconds = dm.last_collect_seconds + update_seconds
        metrics |= {
            "frames": float(dm.frames),
            "perf/fps": dm.global_frames_per_batch / seconds,
            "perf/collect_fps": dm.global_frames_per_batch / dm.last_collect_seconds,
            "perf/update_fps": dm.global_frames_per_batch / update_seconds,
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    # ---- evaluation -----------------------------------------------------------------------
    def validation_step(self, batch: TensorDict, batch_idx: int) -> None:
        """Batch ``i`` holds the episodes of the ``i``-th of ``evaluation_modes``; logged under its prefix."""
        prefix = list(self.evaluation_modes())[batch_idx]
        metrics = {f"{prefix}/episodes": float(batch.numel())}
        metrics |= {f"{prefix}/{name}": batch.get(key).float().mean() for key, name in logged_means(batch.keys()).items()}
        self.log_dict(metrics, batch_size=1, sync_dist=True)

    # ---- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hcmarl"] = {
            "env": None if self.env_info is None else self.env_info.name,
            "shapes": {k: tuple(v.shape) for k, v in self.state_dict().items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hcmarl")
        if saved is None:
            raise ConfigError("this checkpoint was not written by hcmarl's MARLModule (no 'hcmarl' entry)")
        current = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        env = None if self.env_info is None else self.env_info.name
        if saved["env"] != env or saved["shapes"] != current:
            differing = sorted(set(saved["shapes"].items()) ^ set(current.items()))[:4]
            raise ConfigError(
                f"--ckpt_path: the checkpoint was trained on env {saved['env']!r} with another recipe than this one "
                f"(env {env!r}); differing parameters: {differing}. Use the recipe the checkpoint was trained with."
            )
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:  # validate reads the weights only
            problem = optimizer_layout_problem(self.optimizer_roles(), checkpoint.get("optimizer_states", []), self.configure_optimizers())
            if problem is not None:
                raise ConfigError(
                    f"--ckpt_path: the checkpoint's optimiser state does not fit this hcmarl's optimisers: {problem}. "
                    "The weights match, so another version of hcmarl, which ordered the parameters differently, probably "
                    "wrote it: resume it with that version, or evaluate it with `hcmarl validate --ckpt_path` (weights only)"
                )
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
