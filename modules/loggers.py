"""A W&B logger that never blocks: without credentials it logs offline and says how to sync."""

from __future__ import annotations

import netrc
import os
import sys
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

from hcmarl.errors import MissingDependencyError


def wandb_credentials_available() -> bool:
    """True when an API key is set (WANDB_API_KEY) or stored by ``wandb login`` (~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that goes offline when there is no API key or ``WANDB_MODE=offline``.

    Args:
        name: run name.
        save_dir: where the ``wandb/`` folder is written.
        project: W&B project.
        offline: force offline (True) or online (False); None decides from the credentials.
        **kwargs: passed to Lightning's ``WandbLogger`` (``group``, ``tags``, ``entity``...).
    """

    def __init__(
        self, name: str | None = None, save_dir: str = "runs", project: str = "hcmarl", offline: bool | None = None, **kwargs: Any
    ) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise MissingDependencyError("wandb", "wandb", "The W&B logger") from err
        if offline is None:
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_credentials_available()
        if offline:
            os.environ["WANDB_MODE"] = "offline"
            print(
                f"W&B: no API key or WANDB_MODE=offline, logging offline under {save_dir}/wandb. "
                f"Sync later with: wandb sync {save_dir}/wandb/offline-run-*",
                file=sys.stderr,
            )
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(name=name, save_dir=save_dir, project=project, offline=offline, **kwargs)
