"""Lightning callbacks: a progress bar in frames, and a throughput meter for ``hcmarl bench``."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from tqdm.auto import tqdm

SHOWN_METRICS = {"perf/fps": "fps", "train/return": "return", "eval/return": "eval"}


class FramesProgressBar(ProgressBar):
    """One bar over the run's frames (``data.total_frames`` rounded up to whole iterations):
    frames done, frames/s, last train return and eval return."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar: tqdm | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        dm = trainer.datamodule
        self._bar = tqdm(
            total=dm.iterations * dm.frames_per_batch, initial=dm.frames, unit="frame", unit_scale=True, dynamic_ncols=True,
            desc=dm.env_name, file=sys.stdout, smoothing=0.1,
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        self._bar.update(trainer.datamodule.frames - self._bar.n)
        metrics = trainer.callback_metrics
        self._bar.set_postfix(
            {short: f"{float(metrics[key]):.4g}" for key, short in SHOWN_METRICS.items() if key in metrics}, refresh=False
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ThroughputMeter(Callback):
    """Records, per iteration, collection seconds, update seconds and wall seconds between iterations."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._last_end: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        metrics = trainer.callback_metrics
        frames = trainer.datamodule.frames_per_batch
        self.records.append(
            {
                "collect_s": frames / float(metrics["perf/collect_fps"]),
                "update_s": frames / float(metrics["perf/update_fps"]),
                "wall_s": float("nan") if self._last_end is None else now - self._last_end,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        self._last_end = now
