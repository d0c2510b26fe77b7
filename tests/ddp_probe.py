"""A callback for the DDP test: each rank saves its final parameters and a fingerprint of its data."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class SaveParametersPerRank(Callback):
    def __init__(self) -> None:
        self.data_sums: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.data_sums.append(float(batch["next", "reward"].sum() + batch["agents", "action"].float().sum()))

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["HCMARL_TEST_OUT"])
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "data_sums": self.data_sums}, out / f"rank{trainer.global_rank}.pt")
