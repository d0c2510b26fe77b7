"""A callback for the DDP tests: each rank saves its final parameters, a fingerprint of its data, and the frames
it collected and logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class SaveParametersPerRank(Callback):
    """Writes ``rank<global rank>.pt`` into ``$HCMARL_TEST_OUT`` when training ends."""

    def __init__(self) -> None:
        self.data_sums: list[float] = []
        self.collected = 0  # frames in this rank's own rollouts
        self.logged_frames: list[float] = []  # the ``frames`` metric after each iteration

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.data_sums.append(float(batch["next", "reward"].sum() + batch["agents", "action"].float().sum()))
        self.collected += batch.numel()
        self.logged_frames.append(float(trainer.callback_metrics["frames"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(os.environ["HCMARL_TEST_OUT"])
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {
                "state": state,
                "data_sums": self.data_sums,
                "collected": self.collected,
                "logged_frames": self.logged_frames,
                "world_size": trainer.world_size,
                "node_rank": trainer.node_rank,
            },
            out / f"rank{trainer.global_rank}.pt",
        )
