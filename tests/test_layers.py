"""The layers of DESIGN.md: the library (``hcmarl``) loads no Lightning, and the datamodule and the module meet
through declared protocols (``hcmarl.datamodules.PolicySource`` and ``RolloutSource``)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import recipe

from hcmarl.datamodules import OnPolicyDataModule, PolicySource, RolloutSource, require_policy_source, require_rollout_source
from hcmarl.datamodules.protocols import missing_members, protocol_members
from hcmarl.errors import ConfigError

LIGHTNING_LAYERS = ("hcmarl.modules", "hcmarl.datamodules", "hcmarl.recipes")
"""The top-level folders mapped into the ``hcmarl`` namespace (pyproject's package-dir): not the library layer."""

OPTIONAL_DEPENDENCIES = (
    "vmas", "wandb", "matplotlib", "jax", "jaxlib", "jaxmarl", "gymnasium", "gymnasium_robotics", "mujoco", "mpe2",
    "pettingzoo", "imageio", "imageio_ffmpeg", "smac", "pysc2",
)  # fmt: skip
"""Top-level packages of pyproject's optional extras (and what they pull in): a library module whose import fails
for one of these missing is skipped, any other import error fails the test."""

IMPORT_LIBRARY = r"""
import importlib, json, pkgutil, sys

excluded, optional = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
LIGHTNING = ("lightning", "pytorch_lightning")


def walk(package, path):
    # every module below package, without importing a package before its name is checked against `excluded`
    for info in pkgutil.iter_modules(path, package + "."):
        if any(info.name == e or info.name.startswith(e + ".") for e in excluded):
            continue
        yield info.name
        if info.ispkg:
            yield from walk(info.name, info.module_finder.find_spec(info.name).submodule_search_locations)


import hcmarl

imported, skipped, culprit = ["hcmarl"], {}, None
for name in walk("hcmarl", hcmarl.__path__):
    try:
        importlib.import_module(name)
    except ImportError as err:  # hcmarl's MissingDependencyError is an ImportError too
        missing = (err.name or "").split(".")[0]
        if missing not in optional:
            raise
        skipped[name] = missing
        continue
    imported.append(name)
    if culprit is None and any(m.split(".")[0] in LIGHTNING for m in sys.modules):
        culprit = name
loaded = sorted(m for m in sys.modules if m.split(".")[0] in LIGHTNING and "." not in m)
print(json.dumps({"imported": imported, "skipped": skipped, "lightning": loaded, "culprit": culprit}))
"""


def import_library() -> dict:
    """Import every module of the library layer in a fresh interpreter; what it imported, skipped and loaded."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_LIBRARY, json.dumps(LIGHTNING_LAYERS), json.dumps(OPTIONAL_DEPENDENCIES)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"importing the library layer failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_library_layer_loads_no_lightning() -> None:
    report = import_library()
    assert "hcmarl.envs" in report["imported"] and "hcmarl.nn" in report["imported"], report
    assert not any(name.startswith(LIGHTNING_LAYERS) for name in report["imported"])
    assert report["lightning"] == [], (
        f"importing {report['culprit']} (or a module it imports) loaded {', '.join(report['lightning'])}: the library layer (hcmarl/) must not "
        "import Lightning, nor hcmarl.modules or hcmarl.datamodules (DESIGN.md, Layers)"
    )


# ---- the datamodule's side: what it needs from a module -----------------------------------------------------


def test_marl_module_is_a_policy_source() -> None:
    from hcmarl.modules import MARLModule
    from hcmarl.modules.cli import build_cli

    assert issubclass(MARLModule, PolicySource)
    module = build_cli(["--config", recipe("hcpo/coordsum_3x10")], run=False).model
    assert isinstance(module, PolicySource) and missing_members(module, PolicySource) == []
    assert require_policy_source(module) is module


class _PartialModule(L.LightningModule):
    """A module with three of PolicySource's four methods: no ``evaluation_modes``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def behaviour_policy(self): ...

    def env_transforms(self) -> list:
        return []

    def deployment_policy(self, execution=None): ...

    def training_step(self, batch, batch_idx): ...

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_module_lacking_a_method_is_a_config_error_naming_it(tmp_path) -> None:
    assert protocol_members(PolicySource) == ("behaviour_policy", "env_transforms", "deployment_policy", "evaluation_modes")
    assert not isinstance(_PartialModule(), PolicySource)
    data = OnPolicyDataModule(env="coordsum/3x10", num_envs=4, rollout_steps=8, total_frames=64)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ConfigError) as error:
        trainer.fit(_PartialModule(), datamodule=data)
    message = str(error.value)
    assert "_PartialModule lacks evaluation_modes" in message and "hcmarl.datamodules.PolicySource" in message
    assert data.train_env is None and data.eval_env is None  # refused before any env was made


# ---- the module's side: what it reads from the datamodule ---------------------------------------------------


def test_onpolicy_datamodule_is_a_rollout_source() -> None:
    data = OnPolicyDataModule(env="coordsum/3x10", num_envs=4, rollout_steps=8, total_frames=64)
    assert isinstance(data, RolloutSource) and missing_members(data, RolloutSource) == []
    assert set(protocol_members(RolloutSource)) == {
        "protocol", "env_info", "num_envs", "frames_per_batch", "global_frames_per_batch", "frames", "last_collect_seconds",
    }  # fmt: skip
    without_frames = SimpleNamespace(**{name: 0 for name in protocol_members(RolloutSource) if name != "frames"})
    assert not isinstance(without_frames, RolloutSource) and missing_members(without_frames, RolloutSource) == ["frames"]
    assert require_rollout_source(data) is data
    with pytest.raises(ConfigError, match="data: SimpleNamespace lacks frames, which hcmarl.modules.MARLModule reads"):
        require_rollout_source(without_frames)
    with pytest.raises(ConfigError, match="there is none"):
        require_rollout_source(None)
