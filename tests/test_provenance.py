"""The software record of a run (``hcmarl.provenance``): the git commit, the env family's packages, ``final_eval.json``."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import final_eval, run_dirs

import hcmarl
from hcmarl.envs import FAMILY_MODULES
from hcmarl.provenance import FAMILY_PACKAGES, describe, software_versions, source_commit

FAMILY_EXTRAS = {"rware": "jumanji", "lbf": "jumanji", "connector": "jumanji"}
"""Families whose pip extra is not named after them (the jumanji suites share one)."""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_source_commit_is_the_checkouts_commit_marked_when_tracked_files_differ(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    commit = _git(repo, "rev-parse", "HEAD")
    assert source_commit(repo) == commit[:12]
    (repo / "notes.txt").write_text("untracked\n")  # untracked files are not the code that ran
    assert source_commit(repo) == commit[:12]
    (repo / "a.py").write_text("x = 2\n")
    assert source_commit(repo) == commit[:12] + "+modified"
    (repo / "sub").mkdir()
    assert source_commit(repo / "sub") is None  # not the top of a checkout: hcmarl installed inside another repo
    assert source_commit(tmp_path) is None  # no checkout at all (an installed wheel)


def test_software_record_names_hcmarl_python_torch_and_the_familys_packages() -> None:
    record = software_versions("smax/3s5z")
    assert list(record) == ["hcmarl", "python", "torch", "jaxmarl", "jax"]
    assert re.fullmatch(rf"{re.escape(hcmarl.__version__)}( \(git [0-9a-f]{{12}}(\+modified)?\))?", record["hcmarl"])
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["jaxmarl"] == metadata.version("jaxmarl") and record["jax"] == metadata.version("jax")
    assert list(software_versions("coordsum/3x10")) == ["hcmarl", "python", "torch"]  # hcmarl's own env
    assert describe({"torch": "2.13.0", "jaxmarl": "0.2.0"}) == "torch 2.13.0, jaxmarl 0.2.0"


def _extra_packages(extra: str) -> list[str]:
    """The distributions hcmarl's pip extra ``extra`` installs, from its installed metadata (pyproject's extras)."""
    marker = f'extra == "{extra}"'
    requirements = [r.split(";")[0] for r in metadata.requires("hcmarl") or [] if r.endswith(marker)]
    return sorted(re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements)


def test_family_packages_are_their_pip_extras() -> None:
    """Each family's recorded packages are what its pip extra installs (smac's smacv2 and pysc2 come from git)."""
    assert set(FAMILY_PACKAGES) == set(FAMILY_MODULES) - {"coordsum"}
    for family, packages in FAMILY_PACKAGES.items():
        if family != "smac":
            assert sorted(packages) == _extra_packages(FAMILY_EXTRAS.get(family, family)), family


def test_a_run_records_its_software_in_final_eval(run_cli, tmp_path: Path) -> None:
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", "64")
    (run_dir,) = run_dirs(tmp_path)
    assert final_eval(run_dir)["software"] == software_versions("coordsum/3x10")


def test_the_software_is_recorded_when_training_begins(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record names the code the process imported: taken before training, not from the checkout at the end (a
    long run's checkout may have moved on)."""
    monkeypatch.setattr("hcmarl.modules.cli.software_versions", lambda env: {"checkpoint_written": str(any(tmp_path.rglob("last.ckpt")))})
    run_cli("fit", "mappo/coordsum_3x10", "--data.total_frames", "64")
    (run_dir,) = run_dirs(tmp_path)
    assert final_eval(run_dir)["software"] == {"checkpoint_written": "False"}
