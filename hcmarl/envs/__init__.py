"""``make_env(name, ...)``: one entry point for every env family (DESIGN.md, "Conventions").

Names are ``family/task``: ``vmas/balance``, ``coordsum/3x10``, ``smax/3s5z``,
``smac/3s5z``, ``mamujoco/HalfCheetah-2x3``, ``mpe/simple_spread_v3``, ``rware/tiny-2ag``,
``lbf/2s-8x8-2p-2f-coop``, ``connector/con-5x5x3a``. An unknown name raises
``UnknownEnvError`` listing what is known. A family of the user's own is named by its module's
dotted path, ``my_package.my_envs/task`` (docs/extending.md): the name travels in the config, so
sweeps and DDP workers find it too.

Each family module (``hcmarl.envs.<family>``) provides ``tasks() -> list[str]`` (raising
``MissingDependencyError`` when its package is absent, except where the task list is static)
and ``make(task, num_envs, seed, device, **kwargs) -> EnvBase`` whose result has ``.info``. A family may also
provide ``env_kwargs(task) -> set[str] | None``, the keyword arguments ``make`` takes for the task (None: only
building the env can tell); ``make_env`` then refuses any others with a ``ConfigError`` naming them, before the
env's own package sees them. Packages a family needs are imported when the family is used, not by listing names
(an unknown name lists every family's tasks).
The envs of the families in ``RENDERING_FAMILIES`` also draw themselves:
``render_frame(index=0) -> np.ndarray``, an RGB image ``[H, W, 3]`` of sub-env ``index``.
"""

from __future__ import annotations

import importlib

import torch
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE, EnvInfo, env_kwargs_error
from hcmarl.errors import ConfigError, MissingDependencyError, UnknownEnvError

FAMILY_MODULES: dict[str, str] = {
    "coordsum": "hcmarl.envs.coordsum",
    "vmas": "hcmarl.envs.vmas",
    "smax": "hcmarl.envs.smax",
    "smac": "hcmarl.envs.smac",
    "mamujoco": "hcmarl.envs.mamujoco",
    "mpe": "hcmarl.envs.mpe",
    "rware": "hcmarl.envs.rware",
    "lbf": "hcmarl.envs.lbf",
    "connector": "hcmarl.envs.connector",
}

RENDERING_FAMILIES: tuple[str, ...] = ("vmas", "mpe")
"""The families whose envs have ``render_frame`` (episode videos)."""


def _family(family: str):
    """The family's module, imported on first use (its optional package is imported only inside it): a shipped
    family by its short name, a user's family by its module's dotted path."""
    return importlib.import_module(FAMILY_MODULES.get(family, family))


def _user_family(family: str):
    """The module of a user's family named by a dotted path (e.g. ``examples.extending.new_env_family``), or None
    if ``family`` is not one; ``UnknownEnvError`` if it cannot be imported or lacks ``tasks`` and ``make``."""
    if family in FAMILY_MODULES or "." not in family:
        return None
    try:
        module = _family(family)
    except ImportError as err:
        raise UnknownEnvError(f"env family {family!r}: its module cannot be imported ({err}); is its folder on PYTHONPATH?") from err
    if not (callable(getattr(module, "tasks", None)) and callable(getattr(module, "make", None))):
        raise UnknownEnvError(f"env family {family!r}: its module must define tasks() and make(task, num_envs, seed, device, **kwargs)")
    return module


def known_env_names() -> list[str]:
    """Every ``family/task`` name ``make_env`` accepts (a family whose package is missing shows its pip extra)."""
    names = []
    for family in FAMILY_MODULES:
        try:
            names += [f"{family}/{t}" for t in _family(family).tasks()]
        except MissingDependencyError:
            names.append(f"{family}/<task> (pip install 'hcmarl[{family}]')")
    return names


def check_env_name(name: str) -> tuple[str, str]:
    """Split ``family/task`` and check both, raising ``UnknownEnvError`` that lists the known names.

    A family whose optional package is missing raises ``MissingDependencyError`` naming its extra.
    """
    family, sep, task = name.partition("/")
    if sep and family in FAMILY_MODULES and task in _family(family).tasks():
        return family, task
    user_family = _user_family(family) if sep else None
    if user_family is not None:
        if task in user_family.tasks():
            return family, task
        raise UnknownEnvError(f"unknown task {task!r} of env family {family!r}; its tasks: {', '.join(user_family.tasks())}")
    raise UnknownEnvError(
        f"unknown env name {name!r} (names are 'family/task', or 'my_package.my_module/task' for a family of your own); "
        f"known: {', '.join(known_env_names())}"
    )


def check_renderable(name: str) -> None:
    """Raise ``ConfigError`` unless env ``name`` belongs to one of ``RENDERING_FAMILIES``."""
    family, _ = check_env_name(name)
    if family not in RENDERING_FAMILIES:
        raise ConfigError(
            f"data.env={name!r} cannot be rendered as a video: the {family!r} envs do not draw themselves; "
            f"the families that render are {', '.join(RENDERING_FAMILIES)}"
        )


def make_env(
    name: str,
    num_envs: int = 1,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    **kwargs,
) -> EnvBase:
    """Build a batched TorchRL env in the hcmarl layout; ``env.info`` is its ``EnvInfo``."""
    family, task = check_env_kwargs(name, kwargs)
    return _family(family).make(task, num_envs=num_envs, seed=seed, device=torch.device(device), **kwargs)


def check_env_kwargs(name: str, kwargs: dict) -> tuple[str, str]:
    """Check env ``name`` (``check_env_name``) and that it takes every key of ``kwargs`` (a recipe's
    ``data.env_kwargs``), where its family can tell (``env_kwargs(task)``); ``ConfigError`` naming the others.

    Returns ``(family, task)``.
    """
    family, task = check_env_name(name)
    takes = getattr(_family(family), "env_kwargs", None)
    accepted = takes(task) if callable(takes) else None
    if accepted is not None and (unknown := set(kwargs) - set(accepted)):
        raise env_kwargs_error(name, unknown, accepted)
    return family, task


__all__ = [
    "make_env",
    "known_env_names",
    "check_env_name",
    "check_env_kwargs",
    "check_renderable",
    "RENDERING_FAMILIES",
    "EnvInfo",
    "OBSERVATION",
    "ACTION",
    "ACTION_MASK",
    "STATE",
    "REWARD",
]
