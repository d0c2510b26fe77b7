"""A W&B logger that never blocks: without credentials it logs offline and says how to sync.

The ``hcmarl`` command groups each W&B run under its recipe, tags it with its seed and stores
the resolved config (``describe_run``), so the seeds of one recipe sit together in W&B.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from hcmarl.errors import MissingDependencyError
from hcmarl.wandb_credentials import wandb_credentials_available, wandb_offline_by_default

__all__ = ["WandbLogger", "recipe_name", "wandb_credentials_available"]


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
