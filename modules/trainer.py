"""The ``Trainer`` the ``hcmarl`` command builds: Lightning's, with DDP set up for per-role updates, the run folder of a
W&B run, and ``bench`` (``hcmarl bench``: collection, update and end-to-end frames/s of a few iterations)."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import DDPStrategy

from hcmarl.datamodules.onpolicy import OnPolicyDataModule
from hcmarl.errors import ConfigError

DDP_NAMES: dict[str, Literal["popen", "spawn"]] = {"ddp": "popen", "ddp_spawn": "spawn"}
CUDA_ACCELERATORS = ("gpu", "cuda")


def check_accelerator(accelerator: Any) -> None:
    """``ConfigError`` naming the fix when ``trainer.accelerator`` asks for a CUDA GPU that torch cannot see (Lightning's
    own message, "No supported gpu backend found!", comes with a traceback and no fix)."""
    import torch

    if isinstance(accelerator, str) and accelerator.lower() in CUDA_ACCELERATORS and not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"trainer.accelerator is {accelerator!r} but torch sees no CUDA GPU here (torch {torch.__version__}, {build}); "
            "use --trainer.accelerator cpu (or auto), or run on a machine with a GPU and a CUDA build of torch"
        )


class HcmarlTrainer(Trainer):
    """Lightning's Trainer plus ``bench``, with DDP set up for per-role updates.

    Each role's backward pass touches only that role's parameters, so ``strategy: ddp``
    (or ``ddp_spawn``) becomes DDP with ``find_unused_parameters=True``.
    """

    callbacks: list[Callback]  # set by Lightning's callback connector, declared here for type checkers

    def __init__(self, *args: Any, strategy: Any = "auto", **kwargs: Any) -> None:
        check_accelerator(kwargs.get("accelerator"))
        if isinstance(strategy, str) and strategy in DDP_NAMES:
            strategy = DDPStrategy(find_unused_parameters=True, start_method=DDP_NAMES[strategy])
        if kwargs.get("enable_progress_bar") is False and kwargs.get("callbacks"):
            kwargs["callbacks"] = [c for c in kwargs["callbacks"] if not isinstance(c, ProgressBar)]
        super().__init__(*args, strategy=strategy, **kwargs)

    @property
    def log_dir(self) -> str | None:
        """The run folder (``config.yaml``, ``final_eval.json``, videos). Lightning gives a W&B logger its whole
        ``save_dir``, shared by every run; here a W&B run gets ``<save_dir>/<project>/<run id>``, the folder its
        checkpoints go to."""
        from hcmarl.modules.loggers import WandbLogger

        logger = self.loggers[0] if self.loggers else None
        if not isinstance(logger, WandbLogger):
            return super().log_dir
        run_dir = os.path.join(str(logger.save_dir), str(logger.name), str(logger.version)) if self.is_global_zero else None
        return self.strategy.broadcast(run_dir)

    def bench(self, model: LightningModule, datamodule: OnPolicyDataModule, iterations: int = 5, warmup: int = 1) -> dict[str, float]:
        """Run ``warmup + iterations`` iterations and print collection, update and end-to-end frames/s.

        ``data.total_frames`` is replaced by the frames of those iterations. Frames count over all ranks, as in
        training: under DDP, ``frames_per_iteration`` is ``world_size * num_envs * rollout_steps`` and the frames/s
        are global (all ranks' frames over rank zero's seconds). The figures are returned and kept as
        ``self.bench_result``.

        Args:
            iterations: measured iterations.
            warmup: iterations run first and not measured.
        """
        from hcmarl.modules.callbacks import ThroughputMeter

        meter = ThroughputMeter()
        self.callbacks = [c for c in self.callbacks if not isinstance(c, ModelCheckpoint)] + [meter]
        datamodule.total_frames = (warmup + iterations) * self.num_nodes * self.num_devices * datamodule.frames_per_batch
        self.check_val_every_n_epoch = None
        self.limit_val_batches = 0
        self.fit(model, datamodule=datamodule)
        measured = meter.records[warmup:]
        frames = datamodule.global_frames_per_batch
        collect = sum(r["collect_s"] for r in measured) / len(measured)
        update = sum(r["update_s"] for r in measured) / len(measured)
        walls = [r["wall_s"] for r in measured if not math.isnan(r["wall_s"])]
        wall = sum(walls) / len(walls) if walls else collect + update
        result = {
            "frames_per_iteration": frames,
            "collect_s": collect,
            "update_s": update,
            "iteration_s": wall,
            "collect_fps": frames / collect,
            "update_fps": frames / update,
            "end_to_end_fps": frames / wall,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in meter.records),
        }
        self.bench_result = result
        if self.is_global_zero:
            ranks = f" over {self.world_size} ranks" if self.world_size > 1 else ""
            print(f"\nhcmarl bench: {datamodule.env_name}, {frames} frames per iteration{ranks}, {len(measured)} measured iterations")
            for key, value in result.items():
                print(f"  {key:>22}: {value:,.3f}")
        return result
