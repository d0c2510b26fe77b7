"""The ``--ckpt_path`` check the ``hcmarl`` command runs before Lightning restores a checkpoint: a missing, foreign or
weights-only file ends in one ``ConfigError`` naming the file and the fix (exit code 2), not in Lightning's traceback."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch

from hcmarl.errors import ConfigError

LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc")
"""``--ckpt_path`` values Lightning resolves to a file itself (besides ``registry...`` and URLs)."""

RESUME_KEYS = ("state_dict", "optimizer_states", "lr_schedulers")
"""What Lightning reads of a checkpoint to resume a fit (``validate`` reads only ``state_dict``)."""


def check_checkpoint(ckpt_path: Any, subcommand: str) -> None:
    """Refuse a ``--ckpt_path`` Lightning could not restore, with a ``ConfigError`` naming the file, before it tries.

    The file must exist and load as a torch checkpoint (a zip archive that ``torch.load`` reads with
    ``weights_only=True``, as Lightning's CLI first loads it) with the keys Lightning needs (``RESUME_KEYS`` for
    ``fit``; the ``hcmarl`` entry is checked by ``MARLModule.on_load_checkpoint``). It is loaded with ``mmap=True``,
    so tensors are not read: milliseconds even for a checkpoint of 500 MB (2.7 s without). Lightning's names
    (``last``, ``best``, ...) and URLs are left to Lightning.
    """
    if ckpt_path is None:
        return
    path = str(ckpt_path)
    if path in LIGHTNING_CHECKPOINT_NAMES or path.startswith("registry") or "://" in path:
        return
    fix = "pass a checkpoint an hcmarl run saved (<run folder>/checkpoints/last.ckpt)"
    fix += ", or leave --ckpt_path out to start a new run" if subcommand == "fit" else ", or leave --ckpt_path out"
    if not os.path.exists(path):
        raise ConfigError(f"--ckpt_path {path}: no such file; {fix}")
    if not os.path.isfile(path):
        raise ConfigError(f"--ckpt_path {path} is a folder, not a checkpoint file; {fix}")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"--ckpt_path {path} is not a checkpoint (not a file torch.save writes); {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"--ckpt_path {path} cannot be read as a checkpoint ({type(err).__name__}: {reason}); {fix}") from err
    needed = RESUME_KEYS if subcommand == "fit" else RESUME_KEYS[:1]
    missing = [key for key in needed if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing == ["optimizer_states", "lr_schedulers"] or missing == ["optimizer_states"]:
        raise ConfigError(
            f"--ckpt_path {path} holds the model's weights only (no optimizer_states), so fit cannot resume from it; "
            "validate it with hcmarl validate --ckpt_path, or resume from a full checkpoint (<run folder>/checkpoints/last.ckpt)"
        )
    if missing:
        raise ConfigError(f"--ckpt_path {path} is not a Lightning checkpoint: it has no {', '.join(missing)}; {fix}")
