"""The StarCraft Multi-Agent Challenge on StarCraft II (``smac/<map>``) in the hcmarl layout.

DESIGN.md, "Conventions". Each of the ``num_envs`` battles is TorchRL's ``SMACv2Env`` (one
StarCraft II process, from the ``smacv2`` package, which also runs the original SMAC maps),
batched by a TorchRL ``ParallelEnv``. The wrapper renames nothing TorchRL already calls as
hcmarl does (``("agents", "observation")``, ``("agents", "action_mask")``, ``"state"``,
``"reward"``) and derives the rest from SMAC's ``info``:

- ``"win"`` bool ``[E, 1]`` is ``info["battle_won"]``;
- ``truncated`` is ``done`` at SMAC's ``episode_limit``, ``terminated`` is any other end
  (TorchRL's wrapper reports both as termination).

Needs StarCraft II (``SC2PATH``), the SMAC maps and ``smacv2``; ``make`` says at once what is
missing. ``smax/<map>`` (JaxMARL's SMAX, :mod:`hcmarl.envs.smax`) needs none of them.
PyPI's ``smac`` is an unrelated package and is never used.
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, STATE, EnvInfo, masked_categorical_info, set_masked_categorical_specs
from hcmarl.errors import ConfigError, MissingDependencyError

SMAC_MAPS: tuple[str, ...] = (
    "3m", "8m", "25m", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "27m_vs_30m", "MMM", "MMM2",
    "2s3z", "3s5z", "3s5z_vs_3s6z", "3s_vs_3z", "3s_vs_4z", "3s_vs_5z", "1c3s5z", "2m_vs_1z",
    "corridor", "6h_vs_8z", "2s_vs_1sc", "so_many_baneling", "bane_vs_bane", "2c_vs_64zg",
)  # fmt: skip
"""SMAC's maps (``smac/env/starcraft2/maps/smac_maps.py``), all of which smacv2 also runs."""

PURPOSE = "The 'smac/...' environments"
SMACV2_INSTALL = (
    "Install it with: pip install git+https://github.com/oxwhirl/smacv2.git (with StarCraft II, see docs/envs/smax.md), "
    "or use 'smax/<map>' (JaxMARL's SMAX: pip install 'hcmarl[smax]', no StarCraft II needed)."
)
SC2_DOWNLOAD = "https://github.com/Blizzard/s2client-proto#downloads"
SMAC_MAPS_ZIP = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"


def sc2_path() -> Path:
    """Where StarCraft II is looked for: ``$SC2PATH``, else PySC2's Linux default ``~/StarCraftII``."""
    return Path(os.environ.get("SC2PATH", "~/StarCraftII")).expanduser()


def check_installed(map_name: str) -> None:
    """Raise ``MissingDependencyError`` naming the first missing piece: smacv2, StarCraft II, the map file."""
    if importlib.util.find_spec("smacv2") is None:
        raise MissingDependencyError("smacv2", None, PURPOSE, install=SMACV2_INSTALL)
    root = sc2_path()
    if not (root / "Versions").is_dir():
        raise MissingDependencyError(
            "StarCraft II",
            None,
            PURPOSE,
            install=f"No StarCraft II at SC2PATH={root}: download it from {SC2_DOWNLOAD}, unzip it and set SC2PATH "
            "to its folder, or use 'smax/<map>' (JaxMARL's SMAX, no StarCraft II needed).",
        )
    if not list((root / "Maps").glob(f"*/{map_name}.SC2Map")):
        raise MissingDependencyError(
            f"SMAC_Maps ({map_name}.SC2Map)",
            None,
            PURPOSE,
            install=f"Unzip {SMAC_MAPS_ZIP} into {root / 'Maps'} (giving {root / 'Maps' / 'SMAC_Maps'}).",
        )


def hcmarl_layout(td: TensorDictBase) -> TensorDict:
    """TorchRL ``SMACv2Env`` output (batched ``[E]``, a reset or a step's ``"next"``) in the hcmarl layout."""
    out = TensorDict(
        {
            OBSERVATION: td.get(OBSERVATION).to(torch.float32),
            ACTION_MASK: td.get(ACTION_MASK).to(torch.bool),
            STATE: td.get(STATE).to(torch.float32),
            "win": td.get(("info", "battle_won")).reshape(-1, 1).to(torch.bool),
        },
        batch_size=td.batch_size,
        device=td.device,
    )
    done = td.get("done").reshape(-1, 1).to(torch.bool)
    limit = td.get(("info", "episode_limit")).reshape(-1, 1).to(torch.bool) & done
    out.update({"done": done, "terminated": done & ~limit, "truncated": limit})
    if "reward" in td.keys():
        out.set("reward", td.get("reward").reshape(-1, 1).to(torch.float32))
    return out


class SmacEnv(EnvBase):
    """``num_envs`` StarCraft II battles of one SMAC map, in the hcmarl layout.

    Args:
        map_name: a SMAC map (:data:`SMAC_MAPS`).
        num_envs: battles (StarCraft II processes), stepped in parallel worker processes.
        seed: battle ``i`` is seeded with ``seed + i`` (``None``: SMAC's own).
        device: where the returned tensors live.
        **smac_kwargs: passed to TorchRL's ``SMACv2Env`` and on to SMAC (e.g. ``difficulty``, ``reward_sparse``).
    """

    def __init__(
        self,
        map_name: str,
        num_envs: int = 1,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        **smac_kwargs: Any,
    ) -> None:
        check_installed(map_name)
        from smacv2.env.starcraft2.maps import get_map_params
        from torchrl.envs import ParallelEnv
        from torchrl.envs.libs.smacv2 import SMACv2Env

        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.map_name = map_name
        self.max_steps = int(get_map_params(map_name)["limit"])
        make_one = partial(SMACv2Env, map_name=map_name, categorical_actions=True, **smac_kwargs)
        seeds = [None if seed is None else seed + i for i in range(num_envs)]
        self._battles = ParallelEnv(num_envs, make_one, create_env_kwargs=[{"seed": s} for s in seeds], device=self.device)
        spec = self._battles.observation_spec
        self.n_agents, self.obs_dim = spec[OBSERVATION].shape[-2:]
        self.n_actions = spec[ACTION_MASK].shape[-1]
        self.state_dim = spec[STATE].shape[-1]
        set_masked_categorical_specs(self, self.n_agents, self.obs_dim, self.state_dim, self.n_actions)

    @property
    def info(self) -> EnvInfo:
        """The env's layout, for building networks."""
        return masked_categorical_info(f"smac/{self.map_name}", self)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        request = None if reset is None else TensorDict({"_reset": reset}, batch_size=self.batch_size, device=self.device)
        return hcmarl_layout(self._battles.reset(request))

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = TensorDict({ACTION: tensordict.get(ACTION)}, batch_size=self.batch_size, device=self.device)
        return hcmarl_layout(self._battles.step(action).get("next"))

    def _set_seed(self, seed: int | None) -> None:
        raise ConfigError("SMAC battles are seeded when built and cannot be reseeded: pass seed to make_env('smac/<map>', seed=...)")

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close the StarCraft II processes."""
        self._battles.close(raise_if_closed=raise_if_closed)
        super().close(raise_if_closed=raise_if_closed)


def tasks() -> list[str]:
    """The SMAC maps ``make_env`` knows (``smac/<map>``); a static list, so no package is needed to list them."""
    return list(SMAC_MAPS)


def make(task: str, num_envs: int, seed: int | None, device: torch.device, **kwargs: Any) -> SmacEnv:
    """``make_env``'s entry for ``smac/<map>``: raises ``MissingDependencyError`` at once without smacv2 or StarCraft II."""
    return SmacEnv(task, num_envs=num_envs, seed=seed, device=device, **kwargs)
