"""The composite LightningModule: one iteration over whichever roles a recipe names.

DESIGN.md, "One iteration": advantages are computed once with the old critic, then each
role updates itself through its constraint and schedule, in the order conductor, guider and
learner (together: MAGPO's shared minibatch loop), learner, critic, local conductors. Manual
optimisation: one optimiser per role (two for the conductor).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Literal

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import InitTracker

from hcmarl.advantages import conductor_mixture_value, generalized_advantage_estimate, instruction_advantages, normalize_advantage
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError, NonFiniteLossError
from hcmarl.compilation import compile_roles
from hcmarl.guided import GuidedImitation
from hcmarl.keys import (
    ACTION, ADVANTAGE, CONDUCTOR_ADVANTAGE, CONDUCTOR_PROBS, EPISODE_RETURN, FACTOR, KL_WEIGHT, LOG_PROB, REWARD, VALUE, VALUE_TARGET,
)
from hcmarl.optim import GradientStep, optimizer_layout_problem
from hcmarl.modules.conductor import Conductor, ExecutionMode
from hcmarl.modules.critic import Critic
from hcmarl.modules.guider import Guider, GuiderMemory
from hcmarl.modules.learner import Learner
from hcmarl.modules.policy import ActingPolicy

LOSS_METRICS = ("conductor/policy_loss", "guider/policy_loss", "guider/value_loss", "learner/policy_loss", "critic/value_loss", "local/cross_entropy")
EvaluationMode = ExecutionMode | Literal["guider"]
ROLE_ORDER = ("learner", "critic", "conductor", "local", "guider")  # the order of configure_optimizers' optimisers


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
        deterministic_eval: evaluate with the policy's mode instead of sampled actions.
        compile: ``torch.compile`` the roles' networks (``hcmarl.compilation.compile_roles``), except those moved
            by a trust region (it differentiates twice); a part that fails to compile runs eagerly, with one log line.
            Off by default: measured on CPU it does not pay (docs/benchmarks.md, "Compilation").
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
        deterministic_eval: bool = False,
        compile: bool = False,
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
        self.deterministic_eval = deterministic_eval
        self.compile_networks = compile
        self.env_info: EnvInfo | None = None
        self._check_roles()  # before the trainer starts: a wrong recipe leaves no run folder behind

    # ---- building -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.env_info is None:
            self.build(dm.env_info)
        if stage == "fit":
            if self.learner is not None:
                self.learner.check_batch(dm.num_envs, dm.frames_per_batch)
            if self.guider is not None:
                self.guider.check_batch(dm.num_envs, dm.frames_per_batch)

    def build(self, info: EnvInfo) -> None:
        """Create every role's networks for the env described by ``info``."""
        self.env_info = info
        n_instructions = 0
        if self.conductor is not None:
            self.conductor.build(info)
            n_instructions = self.conductor.n_instructions
        # with one instruction (K = 1) the actors read nothing more: the instruction carries no information
        read_instructions = n_instructions if n_instructions > 1 else 0
        if self.guider is not None:
            self.guider.build(info, read_instructions)
        if self.learner is not None:
            self.learner.build(info, read_instructions)
        if self.critic is not None:
            self.critic.build(info, n_instructions)
        if self.compile_networks:
            compile_roles(learner=self.learner, critic=self.critic, guider=self.guider, conductor=self.conductor)

    def _check_roles(self) -> None:
        """ConfigErrors for combinations of roles that cannot train, naming the key to change."""
        if self.learner is None and self.guider is None:
            raise ConfigError("model: a recipe needs a model.learner (decentralised actors) or a model.guider (MAT), or both (MAGPO)")
        if self.critic is None and self.guider is None:
            raise ConfigError("model.critic is missing: only a model.guider's value head can stand in for it; add a critic (see recipes/mappo/)")
        if self.conductor is not None and self.critic is None:
            raise ConfigError(
                "model.conductor needs a model.critic with hcmarl.nn.InstructionCritic: its advantages come from Q(s, .) "
                "(ALGORITHMS.md section 3); add one (see recipes/hcpo/)"
            )
        if self.guider is not None and self.conductor is not None and self.learner is None:
            raise ConfigError("model.conductor with a model.guider needs a model.learner too (the local conductors instruct the deployed learner)")
        if self.guider is not None and not self.guider.joint and self.critic is None:
            raise ConfigError(
                f"model.guider.constraint is {type(self.guider.constraint).__name__}, which moves the guider's policy only: "
                "its value head is trained by GuidedClip's loop alone; add a model.critic (see recipes/magpo_trust_region/)"
            )
        if self.guider is None and self.learner is not None and isinstance(self.learner.constraint, GuidedImitation):
            raise ConfigError(
                "model.learner.constraint is hcmarl.guided.GuidedImitation, which imitates a guider, but the recipe has no "
                "model.guider; add one (see recipes/magpo/) or use hcmarl.constraints.ClipPPO"
            )
        if self.guider is not None:
            self.guider.check_learner(self.learner)

    def env_transforms(self) -> list:
        """TorchRL transforms the envs need for this module's policies (e.g. a recurrent state primer, episode-start flags)."""
        transforms = [] if self.learner is None else self.learner.actor.env_transforms()
        if self.guider is not None and not any(isinstance(t, InitTracker) for t in transforms):
            transforms += self.guider.env_transforms()
        return transforms

    def optimizer_roles(self) -> list[str]:
        """The role of each optimiser ``configure_optimizers`` returns, in order (``ROLE_ORDER``, present roles only)."""
        present = {
            "learner": self.learner is not None, "critic": self.critic is not None, "conductor": self.conductor is not None,
            "local": self.conductor is not None, "guider": self.guider is not None,
        }
        return [role for role in ROLE_ORDER if present[role]]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.learner is not None:
            optimizers["learner"] = self.learner.make_optimizer()
        if self.critic is not None:
            optimizers["critic"] = self.critic.make_optimizer()
        if self.conductor is not None:
            optimizers["conductor"], optimizers["local"] = self.conductor.make_optimizers()
        if self.guider is not None:
            optimizers["guider"] = self.guider.make_optimizer()
        return [optimizers[role] for role in self.optimizer_roles()]

    # ---- acting ---------------------------------------------------------------------------
    def behaviour_policy(self) -> ActingPolicy:
        """What collects training data: the guider if there is one (MAGPO, MAT), else the learner sampling;
        with a conductor (HCPO, or a conductor-guided guider), after the central conductor's instruction."""
        if self.guider is not None:
            memory = self.guider.new_collection_memory()
            actor, in_keys = functools.partial(self.guider.act, memory=memory), self.guider.network.in_keys
            begin_rollout = memory.begin_rollout
        else:
            actor, in_keys, begin_rollout = self.learner.act, self.learner.actor.in_keys, None
        if self.conductor is None:
            return ActingPolicy(actor, in_keys, [ACTION, LOG_PROB], begin_rollout=begin_rollout)
        conductor = self.conductor

        def act(td: TensorDictBase) -> TensorDictBase:
            return actor(conductor.behave(td))

        return ActingPolicy(act, [*conductor.network.in_keys, *in_keys], [ACTION, LOG_PROB], begin_rollout=begin_rollout)

    def deployment_policy(self, execution: EvaluationMode | None = None) -> ActingPolicy:
        """What is evaluated and deployed: decentralised actors, reading no global state.

        With a conductor, each agent's instruction comes from ``execution`` (default: the conductor's
        ``execution`` setting, ``local``); only ``central`` reads the global state. ``guider`` (and a
        recipe with no learner, MAT) acts with the guider, centrally (after the central conductor's
        instruction, if there is a conductor), sampling unless ``deterministic_eval``.
        """
        if execution == "guider" or self.learner is None:
            guide = functools.partial(self.guider.act, deterministic=self.deterministic_eval, memory=GuiderMemory())
            if self.conductor is None:
                return ActingPolicy(guide, self.guider.network.in_keys, [ACTION, LOG_PROB])
            conductor = self.conductor
            return ActingPolicy(
                lambda td: guide(conductor.instruct(td, "central")), [*conductor.network.in_keys, *self.guider.network.in_keys], [ACTION, LOG_PROB]
            )
        in_keys = self.learner.actor.in_keys
        if self.conductor is None:
            return ActingPolicy(lambda td: self.learner.act(td, deterministic=self.deterministic_eval), in_keys, [ACTION, LOG_PROB])
        conductor, mode = self.conductor, execution or self.conductor.execution

        def act(td: TensorDictBase) -> TensorDictBase:
            return self.learner.act(conductor.instruct(td, mode), deterministic=self.deterministic_eval)

        return ActingPolicy(act, in_keys, [ACTION, LOG_PROB])

    def evaluation_modes(self) -> dict[str, EvaluationMode | None]:
        """Metric prefix -> execution mode of each evaluation: the deployment policy as ``eval/``; for HCPO
        also the central conductor as ``eval/central/`` (ALGORITHMS.md section 3: report both); for MAGPO
        and CTDS also the guider, centralised, as ``eval/guider/``."""
        modes: dict[str, EvaluationMode | None] = {"eval": None}
        if self.guider is not None and self.learner is not None:
            modes["eval/guider"] = "guider"
        if self.conductor is not None and self.conductor.execution != "central" and self.conductor.n_instructions > 1:
            modes["eval/central"] = "central"
        return modes

    # ---- training -------------------------------------------------------------------------
    @torch.no_grad()
    def compute_advantages(self, batch: TensorDictBase) -> None:
        """GAE with the current (old) critic (or guider's value head); writes its values, normalised advantages
        and lambda-returns.

        With a conductor (ALGORITHMS.md section 3, "Critic"): V(s) is the w_old-weighted mixture of
        Q(s, .), the conductor's advantage A^M = A^GAE and the agents' A^a = G - Q(s, M_t), each
        normalised on its own.
        """
        if self.conductor is None and self.critic is None:
            value, next_value = self.guider.rollout_values(batch, self.guider.rollout_start_state())
        elif self.conductor is None:
            value, next_value = self.critic.value(batch), self.critic.value(batch.get("next"))
        else:
            value = self._mixture_value(batch, batch.get(CONDUCTOR_PROBS))
            next_value = self._mixture_value(batch.get("next"), self.conductor.central(batch.get("next")).probs)
        advantage = generalized_advantage_estimate(
            batch.get(("next", REWARD)),
            value,
            next_value,
            batch.get(("next", "terminated")),
            batch.get(("next", "done")),
            self.gamma,
            self.gae_lambda,
        )
        batch.set(VALUE, value)
        batch.set(VALUE_TARGET, advantage + value)
        if self.conductor is not None:
            conductor_advantage, advantage = instruction_advantages(advantage, value, self.critic.value(batch))
            conductor_advantage = conductor_advantage[..., 0]  # a team quantity, the same for every agent
            if self.advantage_norm != "none":
                conductor_advantage = normalize_advantage(conductor_advantage)
            batch.set(CONDUCTOR_ADVANTAGE, conductor_advantage)
        if self.advantage_norm != "none":
            advantage = normalize_advantage(advantage, per_agent=self.advantage_norm == "agent")
        batch.set(ADVANTAGE, advantage)

    def _mixture_value(self, td: TensorDictBase, probs: torch.Tensor) -> torch.Tensor:
        """V(s) = sum_M w(M|s) Q(s, M), repeated over the N agents, ``[..., N]``."""
        value = conductor_mixture_value(self.critic.instruction_values(td), probs)
        return value.unsqueeze(-1).expand(*value.shape, self.env_info.n_agents)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        self.compute_advantages(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]  # Lightning unwraps a single optimiser
        metrics = self.update_roles(batch, [self._gradient_step(opt) for opt in optimizers])
        self._check_finite(metrics)
        self._log_iteration(batch, metrics, time.perf_counter() - start)

    def update_roles(self, batch: TensorDictBase, steps: list[GradientStep]) -> dict[str, torch.Tensor]:
        """One iteration's updates on a batch ``[envs, time]`` holding advantages; ``steps`` follow ``configure_optimizers``.

        Order (DESIGN.md, ALGORITHMS.md sections 3 and 4): conductor, learner (starting from the conductor's
        factor; with a guider, guider and learner together in GuidedClip's minibatch loop, or the guider then the
        learner imitating it by its own schedule), critic, local conductors.
        """
        step = dict(zip(self.optimizer_roles(), steps))
        metrics: dict[str, torch.Tensor] = {}
        if self.conductor is not None:
            metrics |= {f"conductor/{k}": v for k, v in self.conductor.update(batch.reshape(-1), step["conductor"]).items()}
            factor, kl_weight = self.conductor.agent_weights(batch)
            batch.set(FACTOR, factor)
            if kl_weight is not None:
                batch.set(KL_WEIGHT, kl_weight)
        flat = batch.reshape(-1)
        if self.guider is not None:
            start_state = self.guider.rollout_start_state()
            updates = self.guider.update(
                batch, step["guider"], self.learner, step.get("learner"), train_value=self.critic is None, start_state=start_state
            )
            metrics |= {f"{role}/{k}": v for role, values in updates.items() for k, v in values.items()}
            if self.learner is not None and not self.guider.joint:
                anchor = self.guider.distribution(batch, start_state)
                metrics |= {f"learner/{k}": v for k, v in self.learner.update(flat, step["learner"], anchor).items()}
        else:
            learner_batch = batch if self.learner.actor.recurrent else flat
            metrics |= {f"learner/{k}": v for k, v in self.learner.update(learner_batch, step["learner"]).items()}
        if self.critic is not None:
            metrics |= {f"critic/{k}": v for k, v in self.critic.update(flat, step["critic"]).items()}
        if self.conductor is not None:
            metrics |= {f"local/{k}": v for k, v in self.conductor.update_local(flat, step["local"]).items()}
            metrics |= self.conductor.diagnostics(flat)
        return metrics

    def _gradient_step(self, optimizer: Any) -> GradientStep:
        return GradientStep(
            optimizer,
            self.manual_backward,
            lambda opt, max_norm: self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm"),
        )

    def _check_finite(self, metrics: dict[str, torch.Tensor]) -> None:
        losses = torch.stack([metrics[k] for k in LOSS_METRICS if k in metrics])
        if not bool(torch.isfinite(losses).all()):
            bad = [k for k in LOSS_METRICS if k in metrics and not torch.isfinite(metrics[k])]
            raise NonFiniteLossError(
                f"iteration {self.current_epoch}: {', '.join(bad)} became NaN or infinite; training stopped and the "
                "last checkpoint was kept. Lower the learning rate, enable value_norm, or lower max_grad_norm."
            )

    def _log_iteration(self, batch: TensorDictBase, metrics: dict[str, torch.Tensor], update_seconds: float) -> None:
        dm = self.trainer.datamodule
        done = batch.get(("next", "done")).squeeze(-1)
        if (ret := batch.get(("next", EPISODE_RETURN), None)) is not None and bool(done.any()):
            metrics["train/return"] = ret.squeeze(-1)[done].mean()
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
        metrics = {f"{prefix}/return": batch.get("return").mean(), f"{prefix}/episodes": float(batch.numel())}
        if "win" in batch.keys():
            metrics[f"{prefix}/win_rate"] = batch.get("win").float().mean()
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
