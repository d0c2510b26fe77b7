"""The software a run was trained with, recorded in its ``final_eval.json`` so that a result names the code behind it.

A record maps a name to a version: ``hcmarl`` (its version, and the git commit of its source checkout when it runs
from one, ``+modified`` when tracked files differ from that commit), ``python``, ``torch``, and the installed
distributions of the run's env family (``FAMILY_PACKAGES``; e.g. SMAX's ``jaxmarl``, whose SMAX changed since the
version the papers ran). ``hcmarl report`` shows each run's record beside its scores.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import hcmarl

FAMILY_PACKAGES: dict[str, tuple[str, ...]] = {
    "vmas": ("vmas",),
    "smax": ("jaxmarl", "jax"),
    "smac": ("smacv2", "pysc2"),
    "mamujoco": ("gymnasium-robotics", "mujoco"),
    "mpe": ("mpe2",),
    "rware": ("jumanji", "jax"),
    "lbf": ("jumanji", "jax"),
    "connector": ("jumanji", "jax"),
}
"""The distributions (pip names) whose versions decide what each shipped env family simulates; CoordSum is hcmarl's own."""

GIT_TIMEOUT_S = 10


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` output, stripped; None when git is missing, fails or takes longer than ``GIT_TIMEOUT_S``."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit(root: Path) -> str | None:
    """The commit a git checkout at ``root`` is at (12 hex digits), with ``+modified`` when its tracked files differ
    from it; None when ``root`` is not the top of a git checkout (an installed wheel) or git cannot tell."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    if commit is None or changes is None:
        return None
    return commit + ("+modified" if changes else "")


def hcmarl_version() -> str:
    """hcmarl's version, and its source commit when it runs from a git checkout (an editable install)."""
    commit = source_commit(Path(hcmarl.__file__).resolve().parent.parent)
    return f"{hcmarl.__version__} (git {commit})" if commit else hcmarl.__version__


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (pip name), None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def software_versions(env_name: str) -> dict[str, str]:
    """The record of a run on env ``family/task``: hcmarl, python, torch and the family's installed distributions."""
    family = env_name.partition("/")[0]
    record = {"hcmarl": hcmarl_version(), "python": platform.python_version(), "torch": torch.__version__}
    for distribution in FAMILY_PACKAGES.get(family, ()):
        if (version := installed_version(distribution)) is not None:
            record[distribution] = version
    return record


def describe(record: dict[str, str]) -> str:
    """A record as one line, ``hcmarl 0.1.0 (git ...), python 3.11.7, torch 2.13.0, jaxmarl 0.2.0``."""
    return ", ".join(f"{name} {version}" for name, version in record.items())
