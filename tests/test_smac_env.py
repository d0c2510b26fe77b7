"""Tests of the real-SMAC family (``smac/<map>``, DESIGN.md "Conventions"; ``hcmarl.envs.smac``).

StarCraft II is rarely installed, so the missing-dependency messages and the conversion of
TorchRL's ``SMACv2Env`` output (checked on a hand-made batch of that output, with the keys
and shapes TorchRL's wrapper documents) are tested everywhere; a real battle is rolled out
only where smacv2, StarCraft II and the map are present.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from hcmarl.envs import make_env
from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE
from hcmarl.envs.smac import check_installed, hcmarl_layout, tasks
from hcmarl.errors import MissingDependencyError, UnknownEnvError


def _sc2_missing_reason() -> str | None:
    try:
        check_installed("3m")
    except MissingDependencyError as err:
        return f"real SMAC is not available here: {err}"
    return None


def test_tasks_are_static_smac_maps() -> None:
    names = tasks()
    for name in ("3m", "8m", "5m_vs_6m", "MMM2", "3s5z", "3s5z_vs_3s6z", "corridor", "6h_vs_8z", "27m_vs_30m"):
        assert name in names, name


def test_unknown_map_lists_valid_names() -> None:
    with pytest.raises(UnknownEnvError) as err:
        make_env("smac/4m")
    assert "smac/3s5z" in str(err.value) and "smac/corridor" in str(err.value)


def _pretend_installed(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in modules:
            return importlib.machinery.ModuleSpec(name, None)
        return None if name == "smacv2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_smacv2_says_how_to_install_and_names_smax(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_installed(monkeypatch)
    with pytest.raises(MissingDependencyError) as err:
        make_env("smac/3s5z", num_envs=2)
    message = str(err.value)
    assert "'smacv2'" in message and "pip install git+https://github.com/oxwhirl/smacv2.git" in message
    assert "smax/<map>" in message and "pip install 'hcmarl[smax]'" in message
    assert "\n" not in message


def test_missing_starcraft_names_sc2path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _pretend_installed(monkeypatch, "smacv2")
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(MissingDependencyError) as err:
        make_env("smac/3s5z")
    message = str(err.value)
    assert f"SC2PATH={tmp_path / 'nowhere'}" in message and "smax/<map>" in message
    assert "s2client-proto" in message  # where to download StarCraft II


def test_missing_map_says_where_to_unzip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _pretend_installed(monkeypatch, "smacv2")
    (tmp_path / "Versions").mkdir()
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError) as err:
        make_env("smac/3s5z")
    assert "3s5z.SC2Map" in str(err.value) and str(tmp_path / "Maps") in str(err.value)
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    (tmp_path / "Maps" / "SMAC_Maps" / "3s5z.SC2Map").touch()
    check_installed("3s5z")  # everything present (smacv2 pretended): no error


def _smacv2_output(E: int = 3, N: int = 5, A: int = 11, D: int = 80, S: int = 120, step: bool = True) -> TensorDict:
    """A batch of TorchRL ``SMACv2Env`` output: env 0 won, env 1 hit the episode limit, env 2 runs on."""
    td = TensorDict(
        {
            "agents": TensorDict({"observation": torch.randn(E, N, D), "action_mask": torch.rand(E, N, A) > 0.5}, batch_size=(E, N)),
            "state": torch.randn(E, S),
            "info": {
                "battle_won": torch.tensor([True, False, False]),
                "episode_limit": torch.tensor([False, True, False]),
                "dead_allies": torch.tensor([0, 2, 1]),
                "dead_enemies": torch.tensor([5, 1, 0]),
            },
            "done": torch.tensor([[True], [True], [False]]),
            "terminated": torch.tensor([[True], [True], [False]]),
        },
        batch_size=(E,),
    )
    if step:
        td["reward"] = torch.tensor([[20.0], [0.5], [0.1]])
    return td


def test_smacv2_output_in_hcmarl_layout() -> None:
    raw = _smacv2_output()
    out = hcmarl_layout(raw)
    torch.testing.assert_close(out[OBSERVATION], raw[OBSERVATION])
    torch.testing.assert_close(out[ACTION_MASK], raw[ACTION_MASK])
    torch.testing.assert_close(out[STATE], raw[STATE])
    torch.testing.assert_close(out[REWARD], raw["reward"])
    assert out["win"].flatten().tolist() == [True, False, False]
    assert out["done"].flatten().tolist() == [True, True, False]
    assert out["terminated"].flatten().tolist() == [True, False, False]  # the battle ended
    assert out["truncated"].flatten().tolist() == [False, True, False]  # SMAC's time limit
    for key in ("win", "done", "terminated", "truncated"):
        assert out[key].shape == (3, 1) and out[key].dtype == torch.bool


def test_smacv2_reset_output_has_no_reward() -> None:
    raw = _smacv2_output(step=False)
    raw["done"] = raw["terminated"] = torch.zeros(3, 1, dtype=torch.bool)
    raw["info", "battle_won"] = raw["info", "episode_limit"] = torch.zeros(3, dtype=torch.bool)
    out = hcmarl_layout(raw)
    assert REWARD not in out.keys() and not out["done"].any() and not out["win"].any()


@pytest.mark.skipif(_sc2_missing_reason() is not None, reason=str(_sc2_missing_reason()))
def test_real_smac_rollout() -> None:
    from hcmarl.nn.distributions import masked_categorical

    env = make_env("smac/3m", num_envs=2, seed=0)
    info = env.info
    assert (info.n_agents, info.action_dim, info.max_steps) == (3, 9, 60) and info.has_win

    def policy(td):
        td[ACTION] = masked_categorical(torch.zeros(td[ACTION_MASK].shape), td[ACTION_MASK]).sample()
        return td

    try:
        rollout = env.rollout(70, policy=policy, break_when_any_done=False)
        assert rollout[OBSERVATION].shape == (2, 70, 3, info.obs_dim)
        assert rollout[ACTION_MASK].gather(-1, rollout[ACTION].unsqueeze(-1)).all()
        nxt = rollout["next"]
        assert nxt["done"].any(dim=1).all()
        torch.testing.assert_close(nxt["done"], nxt["terminated"] | nxt["truncated"])
    finally:
        env.close()
