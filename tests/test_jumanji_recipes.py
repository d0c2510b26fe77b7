"""The recipes of the jumanji suites (``rware``, ``lbf``, ``connector``; issue 24) hold their params.csv rows.

MAGPO and CTDS on every task with a ``magpo`` row, HAPPO on every task with a ``happo`` row, and HCPO and HATRPO on
one task per suite. Every value written in a recipe is checked against its source, read from the recipe file itself
(``tests/test_cli.py`` builds every recipe through the CLI):

- MAGPO and CTDS: ``test_magpo_paper_recipes.expected`` (the official code's settings from the row and its defaults),
  except that Connector's networks take no agent id (the code's ``connector.yaml``: ``implicit_agent_id: True``);
- HAPPO: its row, and for what the row does not set the official code's recurrent MAPPO defaults, with HAPPO's own
  per-agent actors and sequential updates;
- recurrent MAPPO (no ``mappo`` rows outside CoordSum) on one task per suite: the task's HAPPO row and defaults, with
  MAPPO's one shared actor (an agent id except on Connector) and simultaneous updates;
- HCPO and HATRPO (no rows): every value of ``recipes/<alg>/smax_3s5z.yaml`` (the HCPO paper's settings), on the task.

Each header names its row (or says there is none) and lists its deliberate differences.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_magpo_paper_recipes import CODE_DEFAULTS, PARAMS, TERMINAL_ENDS, Check, expected, flatten, header, read_rows, resolved, same

from hcmarl.recipes import RECIPES_DIR

SUITES = ("rware", "lbf", "connector")
ONE_TASK = {"rware": "tiny-2ag", "lbf": "2s-8x8-2p-2f-coop", "connector": "con-5x5x3a"}
HC_TOTAL_FRAMES = 20_000_000  # 6,250 iterations of the HCPO paper's 16 envs x 200 steps: the MAGPO paper's budget
TERMINAL = "as terminal (model.truncation terminal), as the code's done = timestep.last() does"

pytestmark = pytest.mark.skipif(not PARAMS.exists(), reason=f"{PARAMS} is absent (the steering repo's shared/ folder is not beside this checkout)")


def _rows() -> dict[tuple[str, str, str], dict[str, str]]:
    return {key: row for key, row in read_rows().items() if key[1] in SUITES} if PARAMS.exists() else {}


ROWS = _rows()
RECIPES = sorted(
    [f"{alg}/{env}_{task}" for (system, env, task) in ROWS if system == "magpo" for alg in ("magpo", "ctds")]
    + [f"happo/{env}_{task}" for (system, env, task) in ROWS if system == "happo"]
    + [f"{alg}/{env}_{task}" for env, task in ONE_TASK.items() for alg in ("hcpo", "hatrpo", "rec_mappo")]
)


def _magpo_checks(recipe: str) -> list[Check]:
    checks = expected(recipe, read_rows())
    if "/connector_" not in recipe:
        return checks
    source = "liyheng/MAGPO d2ac38b mava/configs/env/connector.yaml: implicit_agent_id True (add_agent_id off)"
    return [dataclasses.replace(c, value=False, source=source) if c.key.endswith(".agent_id") else c for c in checks]


def _happo_checks(env: str, task: str) -> list[Check]:
    row = ROWS[("happo", env, task)]
    src, lanes, rollout = f"params.csv happo,{task},{env}", CODE_DEFAULTS["update_batch_size"], CODE_DEFAULTS["rollout_length"]
    default = "liyheng/MAGPO d2ac38b system/ppo/rec_mappo.yaml, network/rnn.yaml (the code has no HAPPO)"
    eps, epochs, minibatches, grad = float(row["clip_eps"]), int(row["ppo_epochs"]), int(row["num_minibatches"]), float(row["max_grad_norm"])
    lr_, c = "model.learner.init_args", "model.critic.init_args"
    return [
        Check("seed_everything", 0, "hcmarl: seed 0"),
        Check("model.gamma", CODE_DEFAULTS["gamma"], default),
        Check("model.gae_lambda", CODE_DEFAULTS["gae_lambda"], default),
        Check("model.advantage_norm", "none", f"{default}: advantages per minibatch and lane only"),
        Check("model.truncation", "terminal", TERMINAL_ENDS),
        Check("model.learner.class_path", "hcmarl.modules.Learner", "hcmarl: the learner role"),
        Check(f"{lr_}.lr", float(row["actor_lr"]), f"{src}: actor_lr"),
        Check(f"{lr_}.actor.class_path", "hcmarl.nn.GRUActor", f"{src}: recurrent_chunk_size (a recurrent actor)"),
        Check(f"{lr_}.actor.init_args.hidden_size", CODE_DEFAULTS["hidden_state_dim"], default),
        Check(f"{lr_}.actor.init_args.post_hidden_sizes", CODE_DEFAULTS["torso"], default),
        Check(f"{lr_}.actor.init_args.activation", "relu", default),
        Check(f"{lr_}.actor.init_args.share_params", False, "HAPPO (HARL): one actor per agent"),
        Check(f"{lr_}.actor.init_args.agent_id", False, "HAPPO (HARL): separate actors need no id"),
        Check(f"{lr_}.constraint.class_path", "hcmarl.constraints.ClipPPO", "HAPPO: PPO's clip"),
        Check(f"{lr_}.constraint.init_args.eps", eps, f"{src}: clip_eps"),
        Check(f"{lr_}.constraint.init_args.epochs", epochs, f"{src}: ppo_epochs"),
        Check(f"{lr_}.constraint.init_args.minibatches", minibatches, f"{src}: num_minibatches"),
        Check(f"{lr_}.constraint.init_args.ent_coef", float(row["ent_coef"]), f"{src}: ent_coef"),
        Check(f"{lr_}.constraint.init_args.max_grad_norm", grad, f"{src}: max_grad_norm"),
        Check(f"{lr_}.constraint.init_args.lanes", lanes, f"{default}: update_batch_size"),
        Check(f"{lr_}.constraint.init_args.advantage_norm", "minibatch", default),
        Check(f"{lr_}.schedule.class_path", "hcmarl.schedules.Sequential", "HAPPO: agents one after another"),
        Check(f"{lr_}.schedule.init_args.order", "random", "HAPPO (HARL): a new random order each iteration"),
        Check("model.critic.class_path", "hcmarl.modules.Critic", "hcmarl: the critic role"),
        Check(f"{c}.lr", float(row["critic_lr"]), f"{src}: critic_lr"),
        Check(f"{c}.epochs", epochs, f"{src}: ppo_epochs"),
        Check(f"{c}.minibatches", minibatches, f"{src}: num_minibatches"),
        Check(f"{c}.loss", "mse", default),
        Check(f"{c}.clip_value", eps, f"{src}: clip_eps (the value clip)"),
        Check(f"{c}.value_norm", False, default),
        Check(f"{c}.max_grad_norm", grad, f"{src}: max_grad_norm"),
        Check(f"{c}.vf_coef", CODE_DEFAULTS["vf_coef"], default),
        Check(f"{c}.value_loss_scale", 0.5, default),
        Check(f"{c}.lanes", lanes, f"{default}: update_batch_size"),
        Check(f"{c}.network.class_path", "hcmarl.nn.RecurrentCentralValue", f"{default}: a central recurrent critic"),
        Check(f"{c}.network.init_args.hidden_size", CODE_DEFAULTS["hidden_state_dim"], default),
        Check(f"{c}.network.init_args.post_hidden_sizes", CODE_DEFAULTS["torso"], default),
        Check(f"{c}.network.init_args.activation", "relu", default),
        Check("data.env", f"{env}/{task}", f"{src}: task"),
        Check("data.num_envs", lanes * int(row["num_envs"]), f"{src}: num_envs x update_batch_size"),
        Check("data.rollout_steps", rollout, default),
        Check("data.total_frames", int(row["num_updates"]) * lanes * int(row["num_envs"]) * rollout, f"{src}: num_updates x 2 x num_envs x 128"),
        Check("data.protocol", "magpo", f"{src}: num_evaluation {row['num_evaluation']}"),
    ]


def _mappo_checks(env: str, task: str) -> list[Check]:
    """The HAPPO row's checks with MAPPO's own: one actor shared by the agents, simultaneous updates."""
    a, implicit_id = "model.learner.init_args.actor.init_args", env == "connector"
    mappo = {
        f"{a}.share_params": Check(f"{a}.share_params", True, "MAPPO: one actor shared by the agents"),
        f"{a}.agent_id": Check(f"{a}.agent_id", not implicit_id, "the code's add_agent_id (connector.yaml: implicit_agent_id True)"),
        "model.learner.init_args.schedule.class_path": Check("model.learner.init_args.schedule.class_path", "hcmarl.schedules.Simultaneous", "MAPPO"),
    }
    return [mappo.get(c.key, c) for c in _happo_checks(env, task) if c.key != "model.learner.init_args.schedule.init_args.order"]


def _hc_checks(alg: str, env: str, task: str) -> list[Check]:
    source = RECIPES_DIR / alg / "smax_3s5z.yaml"
    values = dict(flatten(yaml.safe_load(source.read_text())))
    values |= {"data.env": f"{env}/{task}", "data.total_frames": HC_TOTAL_FRAMES}
    return [Check(key, value, f"recipes/{alg}/smax_3s5z.yaml") for key, value in values.items() if not key.startswith("data.env_kwargs")]


def _checks(recipe: str) -> list[Check]:
    alg, name = recipe.split("/")
    env, task = name.split("_", 1)
    if alg in ("magpo", "ctds"):
        return _magpo_checks(recipe)
    if alg == "happo":
        return _happo_checks(env, task)
    if alg == "rec_mappo":
        return _mappo_checks(env, task)
    return _hc_checks(alg, env, task)


def test_every_row_has_its_recipes() -> None:
    assert {system for system, _, _ in ROWS} == {"magpo", "happo"}
    assert len(RECIPES) == 2 * 26 + 26 + 9  # 15 RWARE, 7 LBF and 4 Connector tasks have both rows
    missing = [r for r in RECIPES if not (RECIPES_DIR / f"{r}.yaml").exists()]
    assert not missing, f"recipes missing: {missing}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_matches_its_source(recipe: str) -> None:
    path = RECIPES_DIR / f"{recipe}.yaml"
    config = yaml.safe_load(path.read_text())
    checks = _checks(recipe)
    wrong = [f"{c.key} = {resolved(config, c.key)!r}, want {c.value!r} ({c.source})" for c in checks if not same(resolved(config, c.key), c.value)]
    assert not wrong, f"{recipe} drifted from its source:\n" + "\n".join(wrong)
    unchecked = {key for key, _ in flatten(config)} - {c.key for c in checks}
    assert not unchecked, f"{recipe}: values no check covers: {sorted(unchecked)}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_header_names_its_row_and_differences(recipe: str) -> None:
    alg, name = recipe.split("/")
    env, task = name.split("_", 1)
    text = header(Path(RECIPES_DIR / f"{recipe}.yaml"))
    if alg in ("hcpo", "hatrpo"):
        assert f"params.csv has no {alg.upper()} row" in text and "Deliberate differences" in text
    else:
        assert f"row {'happo' if alg in ('happo', 'rec_mappo') else 'magpo'},{task},{env} of ../shared/reference/magpo/params.csv" in text
        assert "Deliberate differences: " in text and TERMINAL in text
        assert ("params.csv has no MAPPO row for this task" in text) == (alg == "rec_mappo")
        chunk = ROWS[("happo", env, task)]["recurrent_chunk_size"] if alg in ("happo", "rec_mappo") else "128"
        assert (f"recurrent_chunk_size {chunk}: hcmarl trains" in text) == (chunk != "128")
    assert f"Run: hcmarl fit --config recipes/{recipe}.yaml" in text
