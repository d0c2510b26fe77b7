"""The errors hcmarl raises for things a user can fix; the CLI prints them as one message."""

from __future__ import annotations


class HcmarlError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class ConfigError(HcmarlError, ValueError):
    """A recipe is inconsistent; the message names the key at fault and the fix."""


class UnknownEnvError(ConfigError):
    """An env name that no family knows."""


class MissingDependencyError(HcmarlError, ImportError):
    """An optional package is not installed; the message names the pip extra (or ``install``, how else to get it)."""

    def __init__(self, package: str, extra: str | None, purpose: str, install: str | None = None) -> None:
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed. " + (install or f"Install it with: pip install 'hcmarl[{extra}]'")
        )


class NonFiniteLossError(HcmarlError, FloatingPointError):
    """A loss became NaN or infinite; training stops and the last checkpoint is kept."""


class RunDataError(HcmarlError, ValueError):
    """Run folders or an exported metrics file that cannot be read as runs; the message names the file and what is missing."""


class SweepError(HcmarlError, RuntimeError):
    """Runs of an ``hcmarl sweep`` failed; the message names their log files."""
