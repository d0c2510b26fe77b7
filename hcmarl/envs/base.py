"""The layout every hcmarl environment exposes (DESIGN.md, "Conventions").

Every env is a TorchRL ``EnvBase`` with ``batch_size = [num_envs]`` and these keys:

- ``("agents", "observation")``: float32 ``[E, N, obs_dim]`` (padded to the largest agent);
- ``("agents", "action_mask")``: bool ``[E, N, n_actions]``, categorical envs whose actions
  can be unavailable (or whose agents have different action counts);
- ``("agents", "action")``: int64 ``[E, N]`` (categorical) or float32 ``[E, N, act_dim]``;
- ``"state"``: float32 ``[E, state_dim]``, the global state;
- ``"reward"``: float32 ``[E, 1]``, the team reward (under ``"next"``);
- ``"done"``, ``"terminated"``, ``"truncated"``: bool ``[E, 1]``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from hcmarl.errors import ConfigError
from hcmarl.keys import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE

__all__ = [
    "EnvInfo",
    "team_reward_from_agents",
    "set_masked_categorical_specs",
    "masked_categorical_info",
    "named_parameters",
    "keyword_names",
    "env_kwargs_error",
    "quiet_import",
    "is_noise",
    "ACTION",
    "ACTION_MASK",
    "OBSERVATION",
    "REWARD",
    "STATE",
]


@dataclass(frozen=True)
class EnvInfo:
    """What a network needs to know about an env to build itself."""

    name: str
    n_agents: int
    obs_dim: int
    state_dim: int
    action_kind: str  # "categorical" or "continuous"
    action_dim: int  # number of actions (categorical) or action dimensions (continuous)
    max_steps: int
    has_action_mask: bool = False
    has_win: bool = False
    metrics: tuple[str, ...] = ()  # episode metrics reported at every step as ``("next", name)`` ``[E, 1]``; an episode's is its last step's
    action_low: float = -1.0
    action_high: float = 1.0

    def __post_init__(self) -> None:
        if self.action_kind not in ("categorical", "continuous"):
            raise ValueError(f"action_kind must be 'categorical' or 'continuous', got {self.action_kind!r}")

    @property
    def categorical(self) -> bool:
        return self.action_kind == "categorical"


def team_reward_from_agents(rewards: torch.Tensor) -> torch.Tensor:
    """Team reward ``[E, 1]`` from per-agent rewards ``[E, N]``: their mean (shared rewards pass unchanged)."""
    return rewards.mean(dim=-1, keepdim=True)


def set_masked_categorical_specs(env: EnvBase, n_agents: int, obs_dim: int, state_dim: int, n_actions: int) -> None:
    """Give ``env`` the layout's specs for categorical actions with an action mask and a ``win`` flag (SMAX, SMAC)."""
    E, N, d = env.batch_size[0], n_agents, env.device
    flag = Categorical(n=2, shape=(E, 1), dtype=torch.bool, device=d)
    env.observation_spec = Composite(
        agents=Composite(
            observation=Unbounded(shape=(E, N, obs_dim), dtype=torch.float32, device=d),
            action_mask=Categorical(n=2, shape=(E, N, n_actions), dtype=torch.bool, device=d),
            shape=(E, N),
            device=d,
        ),
        state=Unbounded(shape=(E, state_dim), dtype=torch.float32, device=d),
        win=flag.clone(),
        shape=(E,),
        device=d,
    )
    action = Categorical(n=n_actions, shape=(E, N), dtype=torch.int64, device=d)
    env.action_spec = Composite(agents=Composite(action=action, shape=(E, N), device=d), shape=(E,), device=d)
    env.reward_spec = Composite(reward=Unbounded(shape=(E, 1), dtype=torch.float32, device=d), shape=(E,), device=d)
    env.done_spec = Composite(done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(E,), device=d)


def masked_categorical_info(name: str, env: EnvBase) -> EnvInfo:
    """The ``EnvInfo`` of an env whose specs came from ``set_masked_categorical_specs`` (SMAX, SMAC).

    ``env`` carries ``n_agents``, ``obs_dim``, ``state_dim``, ``n_actions`` and ``max_steps``.
    """
    return EnvInfo(
        name=name,
        n_agents=env.n_agents,
        obs_dim=env.obs_dim,
        state_dim=env.state_dim,
        action_kind="categorical",
        action_dim=env.n_actions,
        max_steps=env.max_steps,
        has_action_mask=True,
        has_win=True,
    )


# ---- which env_kwargs an env takes (``make_env`` checks them before building the env) --------
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def named_parameters(function: Callable[..., Any], skip: Iterable[str] = ()) -> set[str]:
    """The parameters ``function`` takes by name (not ``self``, ``*args``, ``**kwargs``), less ``skip``."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name for p in parameters if p.kind in _NAMED} - {"self", *skip}


def keyword_names(cls: type, skip: Iterable[str] = ()) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes, less ``skip``: its constructor's named parameters and, while a
    constructor has ``**kwargs``, those of the next constructor up its bases. None when a ``**kwargs`` reaches
    ``object`` (signatures cannot tell where it goes)."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:  # not object
        init = vars(klass).get("__init__")
        if init is None:
            continue
        names |= named_parameters(init)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            return names - set(skip)
    return None


def env_kwargs_error(env: str, unknown: Iterable[str], accepted: Iterable[str] | None = None) -> ConfigError:
    """The error for ``data.env_kwargs`` keys ``unknown`` that env ``env`` does not take (``accepted``: those it takes)."""
    keys = sorted(unknown)
    takes = f" (it takes: {', '.join(sorted(accepted))})" if accepted is not None else ""
    them = "it" if len(keys) == 1 else "them"
    return ConfigError(
        f"data.env_kwargs has {', '.join(repr(k) for k in keys)}, which {env} does not take{takes}. "
        f"Remove {them} from data.env_kwargs, or pass --data.env_kwargs '{{}}' for the env's defaults"
    )


# ---- env packages' notices that tell a user nothing about their run ---------------------------
ENV_PACKAGE_NOISE: dict[str, tuple[str, ...]] = {
    # JaxMARL announces on import the optional environments it looked for ("Importing submoduled environments...",
    # "Submoduled environments not found. Skipping import."), none of which hcmarl uses
    "jaxmarl": ("ubmoduled environments",),
    # gymnasium-robotics prints on import a notice about its AdroitHand envs' rewards; hcmarl runs none of them
    "gymnasium_robotics": ("AdroitHandRelocateDense-v1, AdroitHandHammerDense-v1, AdroitHandDoorDense-v1",),
    # MuJoCo warns that Gymnasium's own HalfCheetah model uses a deprecated attribute: nothing a user can change
    "mujoco": ("compiler attribute 'settotalmass' is deprecated",),
}
"""Package -> what it prints (on import: :func:`quiet_import`) or warns (MuJoCo: :mod:`hcmarl.envs.mamujoco`) that
tells an hcmarl user nothing about their run: a line holding one of these strings is dropped, anything else still
reaches the console. The one list of such env-package noise (Lightning's and torch's: ``hcmarl.modules.cli``)."""


def is_noise(package: str, line: str) -> bool:
    """Whether ``line``, printed or warned by ``package``, is one of its notices in ``ENV_PACKAGE_NOISE``."""
    return any(noise in line for noise in ENV_PACKAGE_NOISE.get(package, ()))


def quiet_import(*modules: str) -> list[Any]:
    """Import ``modules`` (the first names a package of ``ENV_PACKAGE_NOISE``) without the lines that package is known
    to print on import; whatever else they print is passed on. ``sys.stdout`` and ``sys.stderr`` are kept as they were.

    The streams are swapped together with ``sys.__stdout__`` and ``sys.__stderr__``: JaxMARL's import silences
    brax by resetting ``sys.stdout`` to ``sys.__stdout__``, which would undo a plain redirection (pytest's capture
    included).
    """
    package = modules[0].partition(".")[0]
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    out, err = io.StringIO(), io.StringIO()
    try:
        sys.stdout = sys.__stdout__ = out  # type: ignore[misc,assignment]
        sys.stderr = sys.__stderr__ = err  # type: ignore[misc,assignment]
        imported = [importlib.import_module(name) for name in modules]
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved  # type: ignore[misc]
    for captured, stream in ((out, sys.stdout), (err, sys.stderr)):
        kept = [line for line in captured.getvalue().splitlines(keepends=True) if not is_noise(package, line)]
        if kept:
            stream.write("".join(kept))
    return imported
