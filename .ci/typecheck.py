"""Type-check the ``hcmarl`` package as it is installed, with mypy and the ``[tool.mypy]`` settings of pyproject.toml.

pyproject's ``package-dir`` maps the top-level folders ``modules/``, ``datamodules/`` and ``recipes/`` into
``hcmarl.modules``, ``hcmarl.datamodules`` and ``hcmarl.recipes``. mypy finds modules by their place on disk and
cannot follow such a mapping (nor the import hook of an editable install), so ``mypy -p hcmarl`` would see neither
those packages nor their imports. This script gives mypy every file of every mapped folder with its installed
module name, then runs it as the ``mypy`` command would; errors name the files as they are in the repository.

Usage: ``python .ci/typecheck.py [mypy options]`` from anywhere; exit status 0 when clean, 1 on type errors,
2 on a blocking error (as mypy's).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mypy import util
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def installed_sources(root: Path) -> list[BuildSource]:
    """Each ``.py`` file under each folder of ``package-dir``, named by the module it is installed as."""
    package_dir: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    sources = []
    for package, folder in package_dir.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            sources.append(BuildSource(str(path.relative_to(root)), ".".join((package, *parts))))
    return sources


def main(args: list[str]) -> int:
    os.chdir(ROOT)
    fscache = FileSystemCache()
    # The target given here only satisfies mypy's command line; the sources are replaced below.
    _, options = process_options([*args, "hcmarl"], fscache=fscache)
    sources = installed_sources(ROOT)
    _, messages, blockers = run_build(sources, options, fscache, time.time(), sys.stdout, sys.stderr)
    n_errors, n_notes, n_files = util.count_stats(messages)
    formatter = util.FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    if n_errors:
        print(formatter.format_error(n_errors, n_files, len(sources), blockers=blockers, use_color=options.color_output))
    else:
        print(formatter.format_success(len(sources), options.color_output))
    if messages and n_notes < len(messages):
        return 2 if blockers else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
