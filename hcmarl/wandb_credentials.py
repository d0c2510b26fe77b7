"""Whether W&B can log online: an API key in the environment or one stored by ``wandb login``.

Used by the training logger (``hcmarl.modules.loggers.WandbLogger``) and by ``hcmarl report --wandb``
(``hcmarl.report.wandb_upload``); it needs neither Lightning nor wandb.
"""

from __future__ import annotations

import netrc
import os

OFFLINE_MODES = ("offline", "dryrun")
"""Values of ``WANDB_MODE`` that ask for offline logging."""


def wandb_credentials_available() -> bool:
    """True when an API key is set (``WANDB_API_KEY``) or stored by ``wandb login`` (``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline_by_default() -> bool:
    """True when W&B should log offline unless told otherwise: ``WANDB_MODE`` asks for it, or there are no credentials."""
    return os.environ.get("WANDB_MODE") in OFFLINE_MODES or not wandb_credentials_available()
