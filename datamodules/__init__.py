"""LightningDataModules: env -> TorchRL collector -> TensorDict rollout batches, and the protocols between them and a module."""

from hcmarl.datamodules.onpolicy import OnPolicyDataModule
from hcmarl.datamodules.protocols import BehaviourPolicy, Policy, PolicySource, RolloutSource, require_policy_source, require_rollout_source

__all__ = ["BehaviourPolicy", "OnPolicyDataModule", "Policy", "PolicySource", "RolloutSource", "require_policy_source", "require_rollout_source"]
