"""Tests of the SMAX family (``smax/<map>``, DESIGN.md "Conventions"; ``hcmarl.envs.smax``).

References: JaxMARL's own SMAX functions applied to the jax state the wrapper holds
(``get_obs``, ``get_world_state``, ``get_avail_actions``), TorchRL's ``check_env_specs``, and
the rules of the layout in ``hcmarl.envs.base``. One env is shared by the module because
compiling SMAX's step takes tens of seconds.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from conftest import assert_fast_reset_equals_generic
from torchrl.envs.utils import check_env_specs, step_mdp

from hcmarl.datamodules.episodes import episode_returns, first_episode_end, rollout_first_episodes
from hcmarl.envs import make_env
from hcmarl.envs.base import ACTION, ACTION_MASK, OBSERVATION, REWARD, STATE
from hcmarl.errors import MissingDependencyError, UnknownEnvError
from hcmarl.nn.distributions import masked_categorical

HAS_JAXMARL = importlib.util.find_spec("jaxmarl") is not None
requires_jaxmarl = pytest.mark.skipif(not HAS_JAXMARL, reason="jaxmarl is not installed (pip install 'hcmarl[smax]')")

E = 4
STOP = 4  # SMAX's no-op: actions 0-3 move, 4 stops, 5+ attack an enemy


@pytest.fixture(scope="module")
def env():
    return make_env("smax/3s5z", num_envs=E, seed=0)


def _jax_battle(env, index: int):
    """The jax state of battle ``index`` of the wrapper."""
    import jax

    return jax.tree.map(lambda x: x[index], env.battle_states)


def _masked_random_policy(td):
    mask = td[ACTION_MASK]
    td[ACTION] = masked_categorical(torch.zeros(mask.shape), mask).sample()
    return td


@pytest.fixture(scope="module")
def rollout(env):
    """150 steps (> max_steps = 100, so every battle ends at least once) with a masked uniform policy."""
    torch.manual_seed(0)
    env.reset()
    return env.rollout(150, policy=_masked_random_policy, break_when_any_done=False)


@requires_jaxmarl
def test_info_matches_jaxmarl(env) -> None:
    smax, info = env._smax, env.info
    assert info.name == "smax/3s5z"
    assert (info.n_agents, info.obs_dim, info.state_dim) == (8, smax.obs_size, smax.state_size) == (8, 205, 192)
    assert info.categorical and info.action_dim == smax.num_ally_actions == 8 + 5  # 5 moves/stop + 8 enemies
    assert info.has_action_mask and info.has_win and info.max_steps == smax.max_steps == 100


@requires_jaxmarl
def test_shapes_and_dtypes(env) -> None:
    info = env.info
    td = env.reset()
    assert td.batch_size == (E,)
    assert td[OBSERVATION].shape == (E, info.n_agents, info.obs_dim) and td[OBSERVATION].dtype == torch.float32
    assert td[ACTION_MASK].shape == (E, info.n_agents, info.action_dim) and td[ACTION_MASK].dtype == torch.bool
    assert td[STATE].shape == (E, info.state_dim) and td[STATE].dtype == torch.float32
    td[ACTION] = torch.full((E, info.n_agents), STOP)
    nxt = env.step(td)["next"]
    assert nxt[REWARD].shape == (E, 1) and nxt[REWARD].dtype == torch.float32
    for key in ("done", "terminated", "truncated", "win"):
        assert nxt[key].shape == (E, 1) and nxt[key].dtype == torch.bool, key


@requires_jaxmarl
def test_check_env_specs(env) -> None:
    check_env_specs(env)


@requires_jaxmarl
def test_layout_equals_jaxmarl_functions(env) -> None:
    td = env.reset()
    td[ACTION] = torch.full((E, 8), STOP)
    td = env.step(td)["next"]
    smax = env._smax
    for i in range(E):
        battle = _jax_battle(env, i)
        obs, avail = smax.get_obs(battle), smax.get_avail_actions(battle)
        np.testing.assert_allclose(td[STATE][i].numpy(), np.asarray(smax.get_world_state(battle)), rtol=1e-6)
        np.testing.assert_allclose(td[OBSERVATION][i].numpy(), np.stack([np.asarray(obs[a]) for a in smax.agents]), rtol=1e-6)
        np.testing.assert_array_equal(td[ACTION_MASK][i].numpy(), np.stack([np.asarray(avail[a]) for a in smax.agents]).astype(bool))


@requires_jaxmarl
def test_same_seed_same_battles() -> None:
    def first_states(seed: int) -> torch.Tensor:
        e = make_env("smax/3s5z", num_envs=E, seed=seed)  # compiled already: the module cache
        return e.reset()[STATE]

    torch.testing.assert_close(first_states(3), first_states(3))
    assert not torch.equal(first_states(3), first_states(4))
    assert not torch.equal(first_states(3)[0], first_states(3)[1])  # each battle has its own key


@requires_jaxmarl
def test_masked_policy_takes_only_available_actions(rollout) -> None:
    actions, mask = rollout[ACTION], rollout[ACTION_MASK]
    assert mask.gather(-1, actions.unsqueeze(-1)).all()
    assert mask[..., STOP].all()  # stopping is always available
    assert (actions >= 5).any()  # enemies come into range and are attacked
    assert not mask[..., 5:].all()  # ... but not every enemy is always in range
    dead = ~mask[..., 0]  # a dead unit cannot move: only the no-op remains
    assert dead.any() and (mask[dead].sum(-1) == 1).all()


@requires_jaxmarl
def test_episode_ends(rollout) -> None:
    nxt = rollout["next"]
    done, terminated, truncated, win = (nxt[k].squeeze(-1) for k in ("done", "terminated", "truncated", "win"))
    torch.testing.assert_close(done, terminated | truncated)
    assert not (terminated & truncated).any()
    assert not (win & ~terminated).any()
    assert done.any(dim=1).all()  # 150 steps > max_steps: every battle has ended
    assert terminated.any()  # random allies lose battles before the time limit
    for e in range(E):  # no episode outlasts max_steps, and truncation happens exactly there
        ends = done[e].nonzero().flatten().tolist()
        lengths = np.diff([-1, *ends])
        assert (lengths <= 100).all()
        assert all(bool(truncated[e, t]) == (length == 100) for t, length in zip(ends, lengths, strict=False))
    after = torch.zeros_like(done)
    after[:, 1:] = done[:, :-1]  # the step after an end starts a new battle: every unit alive, so all can move
    assert rollout[ACTION_MASK][after][..., :4].all()
    returns, lengths = episode_returns(nxt[REWARD], nxt["done"])
    assert (returns > 0).all() and torch.isfinite(returns).all()  # damage dealt to enemies is rewarded
    assert (lengths == done.float().argmax(dim=1) + 1).all()


@requires_jaxmarl
def test_an_evaluation_rollout_stops_when_every_first_battle_has_ended(env) -> None:
    """``rollout_first_episodes`` is TorchRL's uncut rollout, step for step, until the end of the chunk in which
    the last env's first battle ends, and stops there: each env's first battle (return, length, win) is the same."""
    rollouts = []
    for cut in (False, True):
        env.set_seed(3)
        torch.manual_seed(0)
        if cut:
            rollouts.append(rollout_first_episodes(env, _masked_random_policy, 150, chunk=8))
        else:
            rollouts.append(env.rollout(150, policy=_masked_random_policy, break_when_any_done=False))
    full, cut = rollouts
    done = full["next", "done"].squeeze(-1)
    steps_needed = int(done.to(torch.uint8).argmax(dim=1).max()) + 1
    assert cut.shape == (E, 8 * math.ceil(steps_needed / 8)) and cut.shape[1] < full.shape[1]
    for key in (ACTION, ("next", REWARD), ("next", "done"), ("next", OBSERVATION)):
        torch.testing.assert_close(cut[key], full[key][:, : cut.shape[1]], rtol=0, atol=0)
    outcomes = [(*episode_returns(r["next", REWARD], r["next", "done"]), first_episode_end(r["next", "win"], r["next", "done"])) for r in (cut, full)]
    for a, b in zip(*outcomes, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@requires_jaxmarl
def test_win_and_loss_are_terminations(env) -> None:
    """Battle 0 with every enemy dead is won, battle 1 with every ally dead is lost (JaxMARL's rules)."""
    td = env.reset()
    battles = env.battle_states.state
    health = battles.unit_health.at[0, 8:].set(0.0).at[1, :8].set(0.0)
    env.battle_states = env.battle_states.replace(state=battles.replace(unit_health=health, unit_alive=health > 0))
    td[ACTION] = torch.full((E, 8), STOP)
    nxt = env.step(td)["next"]
    assert nxt["win"].flatten().tolist() == [True, False, False, False]
    assert nxt["terminated"].flatten().tolist() == [True, True, False, False]
    assert not nxt["truncated"].any()
    assert nxt[REWARD][0].item() >= 1.0  # JaxMARL's won_battle_bonus


@requires_jaxmarl
@pytest.mark.parametrize("at_limit", [[0], [0, 2, 3]], ids=["one", "more than an eighth"])
def test_time_limit_truncates_and_restarts_at_max_steps(env, at_limit: list[int]) -> None:
    """Battles at step ``max_steps - 1`` are truncated by the next step and restarted there, not one step later.

    JaxMARL's ``dones["__all__"]`` ends a battle one step late; restarting on it left a battle
    that was reported truncated running on, to be truncated again one step later. One ended
    battle is restarted through the step's few-slot path, three of four through the whole batch.
    """
    td = env.reset()
    battles = env.battle_states.state
    env.battle_states = env.battle_states.replace(state=battles.replace(step=battles.step.at[np.array(at_limit)].set(env.max_steps - 1)))
    td[ACTION] = torch.full((E, 8), STOP)
    td, td_next = env.step_and_maybe_reset(td)
    ended = [e in at_limit for e in range(E)]
    assert td["next", "truncated"].flatten().tolist() == ended
    assert env.battle_states.state.step.tolist() == [0 if end else 1 for end in ended]
    td_next[ACTION] = torch.full((E, 8), STOP)
    td, _ = env.step_and_maybe_reset(td_next)
    assert not td["next", "done"].any()
    assert env.battle_states.state.step.tolist() == [1 if end else 2 for end in ended]


@requires_jaxmarl
def test_maybe_reset_equals_torchrls_generic_reset(env) -> None:
    """``SmaxEnv.maybe_reset`` (the fast path after a step) gives what ``EnvBase.maybe_reset`` gives from the same battles."""
    torch.manual_seed(1)
    td = env.reset()
    for _ in range(200):
        td = env.step(_masked_random_policy(td))
        if td["next", "done"].any() and not td["next", "done"].all():
            break
    assert td["next", "done"].any() and not td["next", "done"].all()
    after_step = step_mdp(td)
    assert_fast_reset_equals_generic(env, after_step)


@requires_jaxmarl
def test_partial_reset_restarts_only_chosen_envs(env) -> None:
    td = env.reset()
    for _ in range(3):
        td[ACTION] = torch.full((E, 8), STOP)
        td = step_mdp(env.step(td))
    before = td[STATE].clone()
    td["_reset"] = torch.tensor([[True], [False], [False], [False]])
    td = env.reset(td)
    steps = env.battle_states.state.step.tolist()
    assert steps == [0, 3, 3, 3]
    assert not torch.equal(td[STATE][0], before[0])
    torch.testing.assert_close(td[STATE][1:], before[1:])
    assert not td["done"].any()


@requires_jaxmarl
def test_reset_after_done_returns_the_restarted_battle(env) -> None:
    """The step restarts a finished battle; the following ``reset`` returns it without another jax call."""
    td = env.reset()
    for _ in range(200):
        td = env.step(_masked_random_policy(td))
        if td["next", "done"].any():
            break
    done = td["next", "done"].clone()
    assert done.any()
    td = step_mdp(td)
    td["_reset"] = done
    td = env.reset(td)
    steps = torch.as_tensor(np.asarray(env.battle_states.state.step))
    assert (steps[done.flatten()] == 0).all() and (steps[~done.flatten()] > 0).all()
    for i in done.flatten().nonzero().flatten().tolist():
        np.testing.assert_allclose(td[STATE][i].numpy(), np.asarray(env._smax.get_world_state(_jax_battle(env, i))))


@requires_jaxmarl
def test_unknown_map_lists_valid_names() -> None:
    with pytest.raises(UnknownEnvError) as err:
        make_env("smax/3s5zz")
    message = str(err.value)
    for name in ("smax/3s5z", "smax/5m_vs_6m", "smax/10m_vs_11m", "smax/27m_vs_30m", "smax/3s5z_vs_3s6z", "smax/6h_vs_8z", "smax/smacv2_5_units"):
        assert name in message, name


def test_missing_jaxmarl_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "jaxmarl" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError) as err:
        make_env("smax/3s5z")
    assert "'jaxmarl'" in str(err.value) and "pip install 'hcmarl[smax]'" in str(err.value)


@requires_jaxmarl
def test_byte_packing_round_trips_every_dtype() -> None:
    import jax.numpy as jnp

    from hcmarl.envs.smax_batched import byte_packing

    state = {
        "alive": jnp.array([True, False, True]),
        "kind": jnp.array([[0, 7], [255, 1]], dtype=jnp.uint8),
        "step": jnp.array(-3, dtype=jnp.int32),
        "health": jnp.array([[0.5, -1.25e-8], [3.0e7, jnp.inf]], dtype=jnp.float32),
    }
    pack, unpack = byte_packing(state)
    packed = pack(state)
    assert packed.dtype == jnp.uint8 and packed.shape == (3 + 4 + 4 + 16,)
    restored = unpack(packed)
    for name, leaf in state.items():
        assert restored[name].dtype == leaf.dtype and restored[name].shape == leaf.shape
        np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(leaf))
