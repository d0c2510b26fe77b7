"""Loggers: a W&B logger that never blocks, and a CSV logger that continues a resumed run's ``metrics.csv``.

The W&B logger logs offline without credentials and says how to sync. The ``hcmarl`` command groups
each W&B run under its recipe, tags it with its seed and stores the resolved config
(``describe_run``), so the seeds of one recipe sit together in W&B.

A fit resumed from ``<run folder>/checkpoints/<name>.ckpt`` continues that run (:func:`continue_run`):
its CSV logger writes into the same ``version_K`` folder and continues ``metrics.csv`` after the
checkpoint's epoch (:class:`CSVLogger`); its W&B logger resumes the W&B run whose id names the folder.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from hcmarl.errors import MissingDependencyError
from hcmarl.wandb_credentials import wandb_credentials_available, wandb_offline_by_default

__all__ = ["CSVLogger", "WandbLogger", "continue_run", "recipe_name", "wandb_credentials_available"]

_VERSION = re.compile(r"version_(\d+)")


def recipe_name(config_files: Sequence[str | os.PathLike] | None, env: str) -> str:
    """The recipe a run comes from, ``<algorithm>/<family>_<task>``: the first config file's folder and name
    (``recipes/mappo/vmas_balance.yaml`` gives ``mappo/vmas_balance``); without a config file, the env
    (``vmas/balance`` gives ``vmas_balance``)."""
    if not config_files:
        return env.replace("/", "_")
    path = Path(os.fspath(config_files[0])).absolute()
    return f"{path.parent.name}/{path.stem}"


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline when there is no API key or ``WANDB_MODE=offline``.

    Args:
        name: run name.
        save_dir: where the ``wandb/`` folder is written.
        project: W&B project.
        offline: force offline (True) or online (False); None decides from the credentials.
        **kwargs: passed to Lightning's ``WandbLogger`` (``group``, ``tags``, ``entity``...); the ``hcmarl``
            command sets ``group`` to the recipe unless it is given (``describe_run``).
    """

    def __init__(self, name: str | None = None, save_dir: str = "runs", project: str = "hcmarl", offline: bool | None = None, **kwargs: Any) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise MissingDependencyError("wandb", "wandb", "The W&B logger") from err
        if offline is None:
            offline = wandb_offline_by_default()
        if offline:
            os.environ["WANDB_MODE"] = "offline"
            print(
                f"W&B: no API key or WANDB_MODE=offline, logging offline under {save_dir}/wandb. "
                f"Sync later with: wandb sync {save_dir}/wandb/offline-run-*",
                file=sys.stderr,
            )
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, offline=offline, **kwargs)

    def describe_run(self, recipe: str, seed: int, config: dict[str, Any]) -> None:
        """Describe the run before it starts: group it under ``recipe`` (unless a ``group`` was given), tag it
        ``seed=<seed>``, and store ``config`` (the resolved config the CLI saves as ``config.yaml``) plus
        ``recipe`` and ``seed`` as its W&B config.
        """
        if self._experiment is not None:
            raise RuntimeError("WandbLogger.describe_run must be called before the W&B run starts")
        init = self._wandb_init
        init["group"] = init.get("group") or recipe
        init["tags"] = [*(init.get("tags") or []), f"seed={seed}"]
        init["config"] = {**(init.get("config") or {}), **config, "recipe": recipe, "seed": seed}

    def finish(self) -> None:
        """Close the W&B run, if this process started one (rank zero); the next run in the process starts afresh."""
        if self._experiment is not None:
            self._experiment.finish()


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing ``metrics.csv`` up to the resumed checkpoint and appends to it.

    The file is cut at its first row of an epoch after ``after_epoch``: the file is written in order, so that row and
    the ones below it were logged after the checkpoint, and the resumed run logs those iterations again.
    """

    def __init__(self, log_dir: str, after_epoch: int) -> None:
        self.after_epoch = after_epoch
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv; this one continues it
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        kept = next((i for i, row in enumerate(rows) if _after(row.get("epoch"), self.after_epoch)), len(rows))
        self.metrics_keys = header  # the file's column order, which later rows must follow
        if kept < len(rows):
            partial = self.metrics_file_path + ".part"
            with self._fs.open(partial, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows[:kept])
            self._fs.mv(partial, self.metrics_file_path)


def _after(epoch: str | None, after_epoch: int) -> bool:
    try:
        return epoch is not None and epoch.strip() != "" and float(epoch) > after_epoch
    except ValueError:
        return False


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` that can continue a run's ``metrics.csv`` when the run is resumed.

    Lightning's writer deletes the ``metrics.csv`` of a folder it is given again. After :meth:`continue_run` (which the
    ``hcmarl`` command calls for a fit resumed from a checkpoint in this logger's folder, see :func:`continue_run`),
    this one keeps the file's rows up to the checkpoint's epoch and appends the resumed run's rows to them, so the
    run's curve has each iteration once. Without it, it behaves as Lightning's. Arguments as Lightning's.
    """

    _continue_after: int | None = None

    def continue_run(self, version: int | str, after_epoch: int) -> None:
        """Log into the folder of ``version`` and continue its ``metrics.csv`` after epoch ``after_epoch`` (the
        checkpoint's ``epoch``); call before anything is logged."""
        if self._experiment is not None:
            raise RuntimeError("CSVLogger.continue_run must be called before the logger writes")
        self._version = version
        self._continue_after = after_epoch

    @property
    def continues(self) -> bool:
        """Whether this logger continues a resumed run's folder (:meth:`continue_run`)."""
        return self._continue_after is not None

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None and self._continue_after is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self._continue_after)
        return super().experiment


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def checkpoint_epoch(checkpoint: str | os.PathLike) -> int:
    """The ``epoch`` Lightning recorded in a checkpoint: the index of the last iteration it holds."""
    try:  # as Lightning's CLI first reads it; mapped, so that no tensor is read
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip archive, or objects beyond tensors and containers: load it as Lightning resumes it
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(saved["epoch"])


def continue_run(loggers: list[Logger], checkpoint: str | os.PathLike) -> tuple[list[Logger], str]:
    """The loggers of a fit resumed from ``checkpoint``, pointed at the checkpoint's run folder, and a line saying where
    the run logs.

    The run folder is the one holding the checkpoint's ``checkpoints/`` folder: ``<save_dir>/<name>/version_K`` for the
    CSV logger, ``<save_dir>/<project>/<run id>`` for W&B. A logger continues it when it is this logger's folder for the
    run: a CSV logger with no ``version`` set and the same ``<save_dir>/<name>`` continues ``version_K`` (replaced by
    :class:`CSVLogger` when it is Lightning's, so that ``metrics.csv`` is continued, not deleted); a W&B logger with no
    ``version``/``id`` set and the same ``<save_dir>/<project>`` resumes the W&B run of that id (``resume="allow"``).
    A ``version`` (or ``id``) that is set is followed: the same folder continues the run, another gives a new one. A
    checkpoint from anywhere else (a copied ``last.ckpt``, another recipe's folder) starts a new run folder, and the
    line says so.
    """
    if not loggers:
        return [], ""
    path = Path(checkpoint).absolute()
    folder = path.parent.parent if path.parent.name == "checkpoints" else None
    result: list[Logger] = []
    continued: list[str] = []
    epoch: int | None = None
    set_elsewhere = False  # a version or id set on the command line or in the config names another folder
    for logger in loggers:
        if isinstance(logger, _LightningCSVLogger) and (type(logger) is _LightningCSVLogger or isinstance(logger, CSVLogger)):
            version = logger._version
            if folder is None or not _same_path(folder.parent, logger.root_dir):
                version = None
            elif version is None:
                match = _VERSION.fullmatch(folder.name)
                version = int(match.group(1)) if match else folder.name
            elif not _same_path(logger.log_dir, folder):
                version, set_elsewhere = None, True
            if version is not None:
                if not isinstance(logger, CSVLogger):
                    logger = CSVLogger(logger.save_dir, logger.name, version, logger._prefix, logger._flush_logs_every_n_steps)
                epoch = checkpoint_epoch(path) if epoch is None else epoch
                logger.continue_run(version, epoch)
                continued.append(f"{logger.log_dir} after its checkpoint at epoch {epoch} (metrics.csv continued)")
        elif isinstance(logger, _LightningWandbLogger) and logger.save_dir is not None and logger.name is not None:
            if folder is not None and _same_path(folder.parent, os.path.join(logger.save_dir, logger.name)):
                if logger._id is None:
                    logger._id = logger._wandb_init["id"] = folder.name
                if logger._id == folder.name:
                    if logger._wandb_init.get("resume") is None:  # the CLI passes wandb.init's default, None
                        logger._wandb_init["resume"] = "allow"
                    where = os.path.join(logger.save_dir, logger.name, folder.name)
                    continued.append(f"{where}: W&B run {folder.name}, resume={logger._wandb_init['resume']!r}")
                else:
                    set_elsewhere = True
        result.append(logger)
    if continued:
        return result, f"hcmarl: resuming the run in {continued[0]}"
    if folder is None:
        why = "is not in a run folder (<run folder>/checkpoints/)"
    elif set_elsewhere:
        why = "is in another folder than the logger's version or id names"
    else:
        why = f"is in {folder}, not in a run folder of this run's logger"
    first = result[0]
    into = f": {first.log_dir}" if isinstance(first, _LightningCSVLogger) else ""
    return result, f"hcmarl: the checkpoint {checkpoint} {why}, so the resumed run logs into a new run folder{into}"
