"""The shipped recipes (YAML files beside this module), at ``recipes/<algorithm>/<family>_<task>.yaml``.

Every run starts from ``recipes/base.yaml`` (the trainer block all recipes share), which the ``hcmarl``
command applies before the ``--config`` files it is given (``hcmarl.modules.base_config``); a recipe
holds only what differs from it.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent
BASE_CONFIG = RECIPES_DIR / "base.yaml"
"""The shared base: a trainer block (``accelerator: auto``, one device, a CSV logger under ``runs/``)."""


def recipe_paths() -> list[Path]:
    """Every shipped recipe, sorted (the base is not a recipe: it lies beside the algorithm folders)."""
    return sorted(RECIPES_DIR.glob("*/*.yaml"))


def recipe_algorithm(config: str | os.PathLike) -> str | None:
    """The algorithm folder of a recipe laid out as ``recipes/<algorithm>/<file>.yaml`` (``mappo`` for
    ``recipes/mappo/coordsum_3x10.yaml``), in the shipped folder or in any folder named ``recipes``; None for
    a file laid out otherwise."""
    path = Path(os.fspath(config)).absolute()
    return path.parent.name if path.parent.parent.name == "recipes" else None
