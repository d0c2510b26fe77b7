"""The shipped recipes (YAML files beside this module), at ``recipes/<algorithm>/<family>_<task>.yaml``."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_paths() -> list[Path]:
    """Every shipped recipe, sorted."""
    return sorted(RECIPES_DIR.glob("*/*.yaml"))
