"""What the datamodule and the module need from each other, declared as protocols.

:class:`PolicySource` is what ``OnPolicyDataModule`` calls on the trainer's LightningModule (collect with
the behaviour policy, evaluate the deployment policy); ``hcmarl.modules.MARLModule`` implements it.
:class:`RolloutSource` is what a module reads from the trainer's datamodule (the env, the batch size,
the frame counts); ``OnPolicyDataModule`` implements it. Both are ``runtime_checkable``, so ``isinstance``
tells whether the members exist (not their signatures); :func:`require_policy_source` turns a missing
member into a :class:`~hcmarl.errors.ConfigError` that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from tensordict import TensorDictBase
from torchrl.envs import Transform

from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.evaluation import EvaluationProtocol

Policy = Callable[[TensorDictBase], TensorDictBase]
"""A policy as the datamodule runs it: reads a TensorDict of observations, writes the actions into it."""


@runtime_checkable
class BehaviourPolicy(Protocol):
    """The policy a TorchRL collector steps the training envs with: a TensorDict module told when a rollout begins."""

    in_keys: Sequence[Any]
    out_keys: Sequence[Any]

    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase: ...

    def begin_rollout(self) -> None:
        """Called before each training rollout (a recurrent policy remembers the state the rollout starts from)."""
        ...


@runtime_checkable
class PolicySource(Protocol):
    """What ``OnPolicyDataModule`` needs from the trainer's LightningModule."""

    def behaviour_policy(self) -> BehaviourPolicy:
        """The policy that collects training data; the collector keeps it for the whole run."""
        ...

    def env_transforms(self) -> list[Transform]:
        """TorchRL transforms the envs need for this module's policies (empty: the envs are stepped as they are)."""
        ...

    def deployment_policy(self, execution: Any = None, deterministic: bool | None = None) -> Policy:
        """The policy evaluated for the evaluation mode ``execution`` (None: the deployed one), acting with its mode
        (``deterministic``), sampling, or as the module is configured (None)."""
        ...

    def evaluation_modes(self) -> Mapping[str, Any]:
        """Metric prefix -> evaluation mode: one batch of evaluation episodes is run per entry."""
        ...


@runtime_checkable
class RolloutSource(Protocol):
    """What a module reads from the trainer's datamodule."""

    protocol: EvaluationProtocol
    """The run's evaluation protocol (``hcmarl.evaluation``); its ``magpo`` and ``hcpo`` presets fix the evaluation's actions."""

    @property
    def env_info(self) -> EnvInfo | None:
        """The env's description (None until the datamodule's ``setup``)."""
        ...

    @property
    def num_envs(self) -> int:
        """Envs stepped in parallel by each rank."""
        ...

    @property
    def frames_per_batch(self) -> int:
        """Frames one rank collects per iteration."""
        ...

    @property
    def global_frames_per_batch(self) -> int:
        """Frames all ranks together collect per iteration."""
        ...

    @property
    def frames(self) -> int:
        """Frames collected so far, over all ranks."""
        ...

    @property
    def last_collect_seconds(self) -> float:
        """Seconds the last rollout took to collect (NaN before the first)."""
        ...


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The public attributes, properties and methods ``protocol`` declares, in the order written."""
    names = [*getattr(protocol, "__annotations__", {}), *(n for n, v in vars(protocol).items() if callable(v) or isinstance(v, property))]
    return tuple(dict.fromkeys(n for n in names if not n.startswith("_")))


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (a method must be there and callable)."""
    methods = {n for n, v in vars(protocol).items() if callable(v)}
    return [n for n in protocol_members(protocol) if not hasattr(obj, n) or (n in methods and not callable(getattr(obj, n)))]


def require_policy_source(module: object, user: str = "hcmarl.datamodules.OnPolicyDataModule") -> PolicySource:
    """``module`` itself, typed as a :class:`PolicySource`; a :class:`~hcmarl.errors.ConfigError` naming the
    methods it lacks if it does not implement one."""
    missing = missing_members(module, PolicySource)
    if missing:
        raise ConfigError(
            f"model: {type(module).__name__} lacks {', '.join(missing)}, which {user} calls on the trainer's module "
            "(the protocol hcmarl.datamodules.PolicySource); use hcmarl.modules.MARLModule or implement them"
        )
    return cast(PolicySource, module)


def require_rollout_source(datamodule: object, user: str = "hcmarl.modules.MARLModule") -> RolloutSource:
    """``datamodule`` itself, typed as a :class:`RolloutSource`; a :class:`~hcmarl.errors.ConfigError` naming the
    members it lacks (or saying there is none) if it does not implement one."""
    if datamodule is None:
        raise ConfigError(
            f"data: {user} reads the trainer's datamodule, and there is none; pass one that implements "
            "hcmarl.datamodules.RolloutSource, e.g. trainer.fit(model, datamodule=OnPolicyDataModule(...))"
        )
    missing = missing_members(datamodule, RolloutSource)
    if missing:
        raise ConfigError(
            f"data: {type(datamodule).__name__} lacks {', '.join(missing)}, which {user} reads from the trainer's "
            "datamodule (the protocol hcmarl.datamodules.RolloutSource); use hcmarl.datamodules.OnPolicyDataModule or implement them"
        )
    return cast(RolloutSource, datamodule)
