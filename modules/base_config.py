"""The base under every run: ``recipes/base.yaml`` and the recipe's logger name, put before the user's arguments.

The ``hcmarl`` command parses ``fit --config recipes/mappo/coordsum_3x10.yaml --trainer.devices 2`` as::

    fit --config <hcmarl.recipes.BASE_CONFIG> --config '{"trainer": {"logger": {"init_args": {"name": "mappo/${data.env}"}}}}'
        --config recipes/mappo/coordsum_3x10.yaml --trainer.devices 2

so each recipe, a later ``--config`` file and the command line override the base key by key, in that
order, and ``--print_config`` shows the whole resolved config, the base's trainer block included. The name
goes in as a config string, not as ``--trainer.logger.init_args.name``: jsonargparse resolves a command-line
value's ``${data.env}`` relative to the wrong node.

The logger name comes from the first ``--config`` file that exists: for ``recipes/<algorithm>/<file>.yaml``
(the shipped folder or any folder named ``recipes``) it is ``<algorithm>/${data.env}``, so runs go to
``runs/<algorithm>/<family>/<task>/version_K``; for a file laid out otherwise it is ``<file name without
.yaml>/${data.env}``; with no config file, the base's own ``hcmarl/${data.env}``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from hcmarl.recipes import BASE_CONFIG, recipe_algorithm


def config_files(args: Sequence[str]) -> list[str]:
    """The ``--config`` (``-c``) values in ``args``, in order."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("-c", "--config", action="append", default=[])
    return finder.parse_known_args(list(args))[0].config


def logger_name(configs: Sequence[str | os.PathLike]) -> str | None:
    """The logger name for a run of ``configs``: ``<algorithm>/${data.env}`` when the first existing file is a
    recipe at ``recipes/<algorithm>/``, ``<file stem>/${data.env}`` for another file, None when no file exists
    (a ``--config`` may also be a YAML string)."""
    path = next((Path(os.fspath(c)) for c in configs if Path(os.fspath(c)).is_file()), None)
    if path is None:
        return None
    return f"{recipe_algorithm(path) or path.stem}/${{data.env}}"


def logger_name_config(name: str) -> str:
    """A config string (JSON, so also YAML) that sets only the logger's name."""
    return json.dumps({"trainer": {"logger": {"init_args": {"name": name}}}})


def with_base(args: Sequence[str], subcommands: Collection[str] | None = None) -> list[str]:
    """``args`` with the base config and the derived logger name put in front of the user's arguments.

    Args:
        args: the command-line words, e.g. ``["fit", "--config", "recipes/mappo/coordsum_3x10.yaml"]``.
        subcommands: the CLI's subcommands; the base goes right after the first word of ``args`` that is one
            (with none in ``args``, e.g. ``hcmarl --help``, ``args`` is returned unchanged). None: a parser
            without subcommands, the base goes first.
    """
    args = list(args)
    start = 0
    if subcommands is not None:
        start = next((i + 1 for i, word in enumerate(args) if word in subcommands), -1)
        if start < 0:
            return args
    name = logger_name(config_files(args[start:]))
    base = ["--config", str(BASE_CONFIG), *(["--config", logger_name_config(name)] if name else [])]
    return [*args[:start], *base, *args[start:]]
