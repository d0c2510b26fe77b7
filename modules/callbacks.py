"""Lightning callbacks: a progress bar in frames, a report of a run stopped by SIGTERM, a throughput meter for
``hcmarl bench``, and episode videos for ``--render``."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from tqdm.auto import tqdm

from hcmarl.datamodules.protocols import require_policy_source
from hcmarl.envs import check_renderable
from hcmarl.video import write_video

if TYPE_CHECKING:
    from hcmarl.datamodules import OnPolicyDataModule

SHOWN_METRICS = {"perf/fps": "fps", "train/return": "return", "eval/return": "eval"}


def onpolicy_data(trainer: L.Trainer) -> OnPolicyDataModule:
    """The trainer's datamodule, which these callbacks read as an ``OnPolicyDataModule`` (Lightning sets
    ``trainer.datamodule`` when a run starts, so type checkers do not see it on ``Trainer``)."""
    return trainer.datamodule  # type: ignore[attr-defined]


class FramesProgressBar(ProgressBar):
    """One bar over the run's frames, counted over all ranks (``data.total_frames`` rounded up to whole
    iterations): frames done, frames/s (``perf/fps``, also over all ranks), last train return and eval return."""

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
        dm = onpolicy_data(trainer)
        total = dm.frames + dm.iterations_left * dm.global_frames_per_batch  # a resumed run starts at its frames
        self._bar = tqdm(
            total=total,
            initial=dm.frames,
            unit="frame",
            unit_scale=True,
            dynamic_ncols=True,
            desc=dm.env_name,
            file=sys.stdout,
            smoothing=0.1,
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        self._bar.update(onpolicy_data(trainer).frames - self._bar.n)
        metrics = trainer.callback_metrics
        self._bar.set_postfix({short: f"{float(metrics[key]):.4g}" for key, short in SHOWN_METRICS.items() if key in metrics}, refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class SigtermReport(Callback):
    """Says how far a run stopped by SIGTERM got and how to continue it.

    On SIGTERM Lightning finishes the running iteration, saves its checkpoint and raises ``SIGTERMException``
    (a ``SystemExit`` with code 0); :func:`hcmarl.modules.cli.main` turns it into exit code
    ``STOPPED_BY_SIGTERM``. An evaluation cut short leaves that iteration unsaved, so the frames reported as
    saved are those of the last checkpoint written, not the datamodule's count.
    """

    def __init__(self) -> None:
        self.saved_frames: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_frames = onpolicy_data(trainer).frames

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not (isinstance(exception, SIGTERMException) and trainer.is_global_zero):
            return
        data = onpolicy_data(trainer)
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback is not None else ""  # type: ignore[attr-defined]
        if self.saved_frames is None or not last:
            tail = "no checkpoint was written, so the run starts afresh when run again"
        else:
            tail = f"{last} holds {self.saved_frames:,} frames: add --ckpt_path {last} to the same command to continue (hcmarl sweep does so itself)"
        print(f"hcmarl: stopped by SIGTERM after {data.frames:,} of {data.total_frames:,} frames; {tail}", file=sys.stderr, flush=True)


class ThroughputMeter(Callback):
    """Records, per iteration, collection seconds, update seconds and wall seconds between iterations.

    Each rank records its own seconds (``hcmarl bench`` reports rank zero's); an update includes the waits for
    the other ranks at every all-reduce.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._last_end: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        metrics = trainer.callback_metrics
        frames = onpolicy_data(trainer).global_frames_per_batch  # the perf/*_fps metrics count frames over all ranks
        self.records.append(
            {
                "collect_s": frames / float(metrics["perf/collect_fps"]),
                "update_s": frames / float(metrics["perf/update_fps"]),
                "wall_s": float("nan") if self._last_end is None else now - self._last_end,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        self._last_end = now


class EpisodeVideo(Callback):
    """After each evaluation, one episode of the deployment policy on one env, written as a video.

    ``hcmarl fit|validate --render`` adds it; a recipe can list it under ``trainer.callbacks``. The
    video (MP4, or GIF without imageio-ffmpeg; :mod:`hcmarl.video`) holds the first observation and
    one frame per step, and is named after the env and the frames trained so far, e.g.
    ``vmas-balance_4096frames.mp4``. Its path is printed, and a W&B logger gets it as ``eval/video``.
    Only rank zero records. The env must render (``hcmarl.envs.RENDERING_FAMILIES``).

    Args:
        dirpath: folder for the videos; None: ``videos/`` in the run folder (``trainer.log_dir``).
        fps: frames per second.
    """

    def __init__(self, dirpath: str | None = None, fps: int = 10) -> None:
        self.dirpath = dirpath
        self.fps = fps
        self._dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_renderable(onpolicy_data(trainer).env_name)
        # trainer.log_dir is a collective under DDP: every rank asks here, only rank zero records
        self._dir = Path(self.dirpath) if self.dirpath is not None else Path(trainer.log_dir or trainer.default_root_dir) / "videos"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._dir is None:
            return
        dm = onpolicy_data(trainer)
        episode = dm.record_episode(require_policy_source(pl_module, "hcmarl.modules.callbacks.EpisodeVideo").deployment_policy())
        path = write_video(episode.frames, self._dir / f"{dm.env_name.replace('/', '-')}_{dm.frames}frames", self.fps)
        print(f"Episode video: {path} ({len(episode.frames)} frames: {episode.steps} steps, return {episode.episode_return:.4g})")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_video("eval/video", [str(path)], caption=[f"{dm.env_name}, {dm.frames:,} frames"])
