"""The errors hcmarl raises for things a user can fix; the CLI prints them as one message."""

from __future__ import annotations

import inspect
import math
import signal
from collections.abc import Callable
from typing import Any

STOPPED_BY_SIGTERM = 128 + signal.SIGTERM
"""``hcmarl fit``'s exit code when SIGTERM stopped it after a finished iteration and its checkpoint (the shell's
128 + signal number); ``hcmarl sweep`` reads it as a run to continue, not a failure, and exits with it when SIGTERM
stops the sweep itself."""


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


class SweepStopped(SweepError):
    """SIGTERM stopped an ``hcmarl sweep`` and the runs it had under way; the CLI exits with ``STOPPED_BY_SIGTERM``."""


RULES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "> 1": lambda v: v > 1,
    "in (0, 1)": lambda v: 0 < v < 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}
"""The rules ``check_number`` knows, by how its message writes them."""


def check_number(what: str, value: Any, rule: str, *, finite: bool = True, optional: bool = False, default: Any = None) -> None:
    """Raise ``ConfigError`` unless ``value`` is a number obeying ``rule`` (a key of ``RULES``; NaN never does).

    Args:
        what: the setting as the user knows it: a key (``model.critic.init_args.lr``) or, where the caller
            cannot know its key, its class and parameter (``ClipPPO eps``).
        finite: refuse infinities too.
        optional: None is allowed (the setting is off).
        default: shown as the fix when given.
    """
    if value is None and optional:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and not math.isnan(value) and (math.isfinite(value) or not finite) and RULES[rule](value):
        return
    allowed = f"{rule}{'' if finite else ' (or .inf)'}{' or null' if optional else ''}"
    default_value = f" (default: {default})" if default is not None else ""
    raise ConfigError(f"{what} must be {allowed}, got {value!r}; set it in the recipe or on the command line{default_value}")


def check_init_args(cls: type, values: dict[str, Any], rules: dict[str, str], key: str | None = None, **options: dict[str, Any]) -> None:
    """``check_number`` for constructor arguments ``values`` of ``cls``, with the parameter's default as the fix.

    Each is named ``<key>.<parameter>`` where the class knows the key it is configured under (a role:
    ``model.critic.init_args``), else ``<class> <parameter>`` (a block that can sit under several keys).
    ``options`` maps a parameter to ``check_number``'s keyword options (``finite``, ``optional``).
    """
    for name, rule in rules.items():
        what = f"{key}.{name}" if key else f"{cls.__name__} {name}"
        check_number(what, values[name], rule, default=_default(cls, name), **options.get(name, {}))


def _default(cls: type, name: str) -> Any:
    """The default of ``cls``'s constructor parameter ``name``, looked for up its bases (past ``**kwargs``); None if none."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        parameter = inspect.signature(init).parameters.get(name) if init is not None else None
        if parameter is not None:
            return None if parameter.default is inspect.Parameter.empty else parameter.default
    return None
