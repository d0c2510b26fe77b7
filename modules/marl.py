"""The composite LightningModule: one iteration over whichever roles a recipe names.

DESIGN.md, "One iteration": advantages are computed once with the old critic, then each
role updates itself through its constraint and schedule (learner, then critic). Manual
optimisation: one Adam per role.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning as L
import torch
from tensordict import TensorDict, TensorDictBase

from hcmarl.advantages import generalized_advantage_estimate, normalize_advantage
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError, NonFiniteLossError
from hcmarl.keys import ACTION, ADVANTAGE, EPISODE_RETURN, LOG_PROB, REWARD, VALUE, VALUE_TARGET
from hcmarl.optim import GradientStep
from hcmarl.modules.critic import Critic
from hcmarl.modules.learner import Learner
from hcmarl.modules.policy import ActingPolicy

LOSS_METRICS = ("learner/policy_loss", "critic/value_loss")


class MARLModule(L.LightningModule):
    """Learner + critic trained on on-policy rollouts (MAPPO, IPPO; ALGORITHMS.md section 2).

    Args:
        learner: the decentralised actors' role.
        critic: the value role.
        gamma: discount.
        gae_lambda: GAE's lambda.
        advantage_norm: normalise advantages over the ``batch``, per ``agent``, or ``none``.
        deterministic_eval: evaluate with the policy's mode instead of sampled actions.
    """

    def __init__(
        self,
        learner: Learner,
        critic: Critic,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        advantage_norm: Literal["batch", "agent", "none"] = "batch",
        deterministic_eval: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.learner = learner
        self.critic = critic
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.advantage_norm = advantage_norm
        self.deterministic_eval = deterministic_eval
        self.env_info: EnvInfo | None = None

    # ---- building -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.env_info is None:
            self.build(dm.env_info)
        if stage == "fit":
            self.learner.check_batch(dm.num_envs, dm.frames_per_batch)

    def build(self, info: EnvInfo) -> None:
        """Create every role's networks for the env described by ``info``."""
        self.env_info = info
        self.learner.build(info)
        self.critic.build(info)

    def env_transforms(self) -> list:
        """TorchRL transforms the envs need for this module's policies (e.g. a recurrent state primer)."""
        return self.learner.actor.env_transforms()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.learner.make_optimizer(),
            self.critic.make_optimizer(),
        ]

    # ---- acting ---------------------------------------------------------------------------
    def behaviour_policy(self) -> ActingPolicy:
        """What collects training data: the learner itself, sampling."""
        return ActingPolicy(self.learner.act, self.learner.actor.in_keys, [ACTION, LOG_PROB])

    def deployment_policy(self) -> ActingPolicy:
        """What is evaluated and deployed: decentralised actors, reading no global state."""
        return ActingPolicy(
            lambda td: self.learner.act(td, deterministic=self.deterministic_eval), self.learner.actor.in_keys, [ACTION, LOG_PROB]
        )

    # ---- training -------------------------------------------------------------------------
    @torch.no_grad()
    def compute_advantages(self, batch: TensorDictBase) -> None:
        """GAE with the current (old) critic; writes its values, normalised advantages and lambda-returns."""
        value = self.critic.value(batch)
        next_value = self.critic.value(batch.get("next"))
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
        if self.advantage_norm != "none":
            advantage = normalize_advantage(advantage, per_agent=self.advantage_norm == "agent")
        batch.set(ADVANTAGE, advantage)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        start = time.perf_counter()
        actor_opt, critic_opt = self.optimizers()
        self.compute_advantages(batch)
        flat = batch.reshape(-1)
        learner_batch = batch if self.learner.actor.recurrent else flat
        metrics = {f"learner/{k}": v for k, v in self.learner.update(learner_batch, self._gradient_step(actor_opt)).items()}
        metrics |= {f"critic/{k}": v for k, v in self.critic.update(flat, self._gradient_step(critic_opt)).items()}
        self._check_finite(metrics)
        self._log_iteration(batch, metrics, time.perf_counter() - start)

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
            "perf/fps": dm.frames_per_batch / seconds,
            "perf/collect_fps": dm.frames_per_batch / dm.last_collect_seconds,
            "perf/update_fps": dm.frames_per_batch / update_seconds,
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    # ---- evaluation -----------------------------------------------------------------------
    def validation_step(self, batch: TensorDict, batch_idx: int) -> None:
        metrics = {"eval/return": batch.get("return").mean(), "eval/episodes": float(batch.numel())}
        if "win" in batch.keys():
            metrics["eval/win_rate"] = batch.get("win").float().mean()
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
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
