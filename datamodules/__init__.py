"""LightningDataModules: env -> TorchRL collector -> TensorDict rollout batches."""

from hcmarl.datamodules.onpolicy import OnPolicyDataModule

__all__ = ["OnPolicyDataModule"]
