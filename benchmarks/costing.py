"""What the cost benchmarks share: build a recipe's module outside the Trainer, and time a method's calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torchrl.envs import Compose, EnvBase, TransformedEnv

from hcmarl.envs import make_env
from hcmarl.modules.cli import build_cli
from hcmarl.recipes import RECIPES_DIR


def build(recipe: str, overrides: list[str]) -> tuple[Any, tuple[EnvBase, int]]:
    """The module of ``recipe`` with ``overrides`` (built for its env), its training env (with the transforms its
    policies need, e.g. a recurrent state primer, as the datamodule wraps it) and rollout length."""
    cli = build_cli(["--config", str(RECIPES_DIR / f"{recipe}.yaml"), *overrides], run=False)
    dm = cli.datamodule
    env = make_env(dm.env_name, dm.num_envs, 0, torch.device("cpu"), **dm.env_kwargs)
    cli.model.build(env.info)
    transforms = cli.model.env_transforms()
    return cli.model, (TransformedEnv(env, Compose(*transforms)) if transforms else env, dm.rollout_steps)


def timed(record: dict[str, list[float]], name: str, fn: Callable) -> Callable:
    """``fn`` that adds its wall time to ``record[name]``'s last entry."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        record[name][-1] += time.perf_counter() - start
        return out

    return wrapper
