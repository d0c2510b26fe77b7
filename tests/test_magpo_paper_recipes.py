"""The MAGPO paper's recipes hold the official settings: every value of every such recipe is checked against its row of
``../shared/reference/magpo/params.csv`` (the official per-task settings, liyheng/MAGPO ``experiment_data/params.csv``)
and against the official code's defaults for what the row does not set, so a recipe cannot drift from the paper
silently (issue 22).

The recipes: MAGPO, CTDS, MAT, Sable, MAPPO and IPPO on the four CoordSum tasks, MAGPO and CTDS on the ten SMAX maps of
params.csv. CTDS has no row: it is MAGPO's row with delta = infinity and lambda = 0 (ALGORITHMS.md section 4).

Every setting of the official code is expressible in hcmarl since issue 22: each recipe's header says "Deliberate
differences: none.", and a recipe that departs from its row fails here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcmarl.modules.cli import build_cli
from hcmarl.recipes import RECIPES_DIR

PARAMS = RECIPES_DIR.parent.parent / "shared" / "reference" / "magpo" / "params.csv"
"""``../shared/reference/magpo/params.csv`` beside the repository root (the steering repo's shared folder)."""
CODE = "liyheng/MAGPO d2ac38b"
COORDSUM_TASKS = ["3x10", "3x30", "5x20", "8x15"]
SMAX_MAPS = ["10m_vs_11m", "27m_vs_30m", "smacv2_10_units", "smacv2_5_units", "6h_vs_8z", "5m_vs_6m", "3s5z_vs_3s6z", "3s5z", "3s_vs_5z", "2s3z"]
FOLDERS = {"mappo": "rec_mappo", "ippo": "rec_ippo"}
"""The recipe folder of a system whose row is recurrent: Mava's names, so that reports and marl-eval files name them as the
MAGPO authors' data does; ``recipes/mappo`` and ``recipes/ippo`` stay hcmarl's MLP MAPPO and IPPO (the quick start's)."""
SYSTEMS = {folder: system for system, folder in FOLDERS.items()}
RECIPES = [
    *(f"{FOLDERS.get(alg, alg)}/coordsum_{task}" for alg in ("magpo", "ctds", "mat", "sable", "mappo", "ippo") for task in COORDSUM_TASKS),
    *(f"{alg}/smax_{task}" for alg in ("magpo", "ctds") for task in SMAX_MAPS),
]

CONFIG_FILES = {
    "magpo": "mava/configs/system/gpo/rec_magpo.yaml, mava/configs/network/magpo.yaml",
    "mat": "mava/configs/system/mat/mat.yaml, mava/configs/network/transformer.yaml",
    "sable": "mava/configs/system/sable/rec_sable.yaml, mava/configs/network/rec_retention.yaml",
    "mappo": "mava/configs/system/ppo/rec_mappo.yaml, mava/configs/network/rnn.yaml",
    "ippo": "mava/configs/system/ppo/rec_ippo.yaml, mava/configs/network/rnn.yaml",
}
"""Where each system's defaults come from (``CODE``; CTDS runs MAGPO's code)."""
CODE_DEFAULTS: dict[str, Any] = {
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "vf_coef": 0.5,
    "rollout_length": 128,
    "update_batch_size": 2,
    "add_agent_id": True,
    "hidden_state_dim": 128,  # the recurrent networks' GRU (magpo.yaml, rnn.yaml)
    "torso": [128],  # pre- and post-torso layer sizes, ReLU, no layer norm (magpo.yaml, rnn.yaml)
    "learner_ent_coef": 0.0,  # rec_magpo.py: the learner's loss is alpha * PPO + KL, no entropy term
    "value_loss": "0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-clip_eps), unnormalised returns",
    "sable_memory": {"timestep_positional_encoding": True, "timestep_chunk_size": None},  # rec_retention.yaml, magpo.yaml
}
"""The official code's values the rows do not set, identical in every system's config (``CONFIG_FILES``) and code."""
TERMINAL_ENDS = f"{CODE} rec_magpo.py and every system's GAE: done = timestep.last(), so every episode end is terminal"
SABLE_PAPER = {
    "norm": "rms",
    "feed_forward": "swiglu",
    "feed_forward_init": "zeros",
    "positional_encoding": "timestep",
    "retention_gate": "source",
    "retention_head_norm": "mava",
    "mava_details": True,
}
"""Mava's Sable (``hcmarl.nn.sable.PAPER_SETTINGS`` less the sizes): RMSNorm, SwiGLU zero-initialised as Mava does (it then
never trains), the timestep encoding, the gate on the key/value input, Mava's GroupNorm of the retention heads'
outputs (``MultiScaleRetention``: ``nn.GroupNorm(num_groups=n_head)`` on each head's row of channels), and Mava's layers
(``SimpleRetention``'s N(0, 1/E^2) weights and unscaled keys, orthogonal embeddings and heads, no observation bias, tanh
GELU, the encoder's input norm before every block)."""


@dataclass(frozen=True)
class Check:
    """One recipe value: the hcmarl key (dotted, as in the recipe file), its value, and where the value comes from."""

    key: str
    value: Any
    source: str


def read_rows() -> dict[tuple[str, str, str], dict[str, str]]:
    with open(PARAMS) as f:
        return {(r["system_name"], r["env_name"], r["task"]): {k: v.strip() for k, v in r.items()} for r in csv.DictReader(f)}


def number(text: str) -> float:
    return float(text)


def expected(recipe: str, rows: dict[tuple[str, str, str], dict[str, str]]) -> list[Check]:
    """Every value the recipe must hold: from its params.csv row, the code's defaults, and hcmarl's blocks for each."""
    folder, name = recipe.split("/")
    alg = SYSTEMS.get(folder, folder)
    env, task = name.split("_", 1)
    row_alg = "magpo" if alg == "ctds" else alg
    row = rows[(row_alg, env, task)]
    src = f"params.csv {row_alg},{task},{env}"
    default = f"{CODE} {CONFIG_FILES[row_alg]}"
    eps = number(row["clip_eps"])
    envs, updates, rollout, lanes = int(row["num_envs"]), int(row["num_updates"]), CODE_DEFAULTS["rollout_length"], CODE_DEFAULTS["update_batch_size"]
    assert row["num_evaluation"] == "122", f"{src}: num_evaluation {row['num_evaluation']} is not the magpo protocol's 122"
    checks = [
        Check("seed_everything", 0, "hcmarl: seed 0 (params.csv has no seed; runs pass --seed_everything)"),
        Check("model.gamma", CODE_DEFAULTS["gamma"], f"{default}: gamma"),
        Check("model.gae_lambda", CODE_DEFAULTS["gae_lambda"], f"{default}: gae_lambda (the paper's Table 2 says 0.9: the code's is used)"),
        Check("data.env", f"{env}/{task}", f"{src}: task"),
        Check("data.num_envs", lanes * envs, f"{src}: num_envs, x update_batch_size {lanes} ({default})"),
        Check("data.rollout_steps", rollout, f"{default}: rollout_length"),
        Check("data.total_frames", updates * lanes * envs * rollout, f"{src}: num_updates x num_envs x rollout_length x update_batch_size"),
        Check("data.protocol", "magpo", f"{src}: num_evaluation 122 (Mava's evaluation: 32 episodes, sampled, absolute metric)"),
        Check("model.truncation", "terminal", TERMINAL_ENDS),
    ]
    value_loss = f"{default}: value loss {CODE_DEFAULTS['value_loss']}"
    per_minibatch = f"{default}: advantages normalised per minibatch (and lane) only"
    if alg in ("magpo", "ctds", "mat", "sable"):
        lr = number(row["actor_lr"] or row["critic_lr"])  # the code's one lr (actor_lr) for every Adam; coordsum rows give it as critic_lr
        g = "model.guider.init_args"
        network_class = "hcmarl.nn.MATGuider" if alg == "mat" else "hcmarl.nn.SableGuider"
        checks += [
            Check("model.guider.class_path", "hcmarl.modules.Guider", "hcmarl: the guider role"),
            Check(f"{g}.lr", lr, f"{src}: actor_lr/critic_lr (the code's actor_lr)"),
            Check("model.advantage_norm", "none", per_minibatch),
            Check(f"{g}.vf_coef", CODE_DEFAULTS["vf_coef"], f"{default}: vf_coef"),
            Check(f"{g}.value_loss_scale", 0.5, value_loss),
            Check(f"{g}.value_loss", "mse", value_loss),
            Check(f"{g}.clip_value", eps, f"{src}: clip_eps (the value clip)"),
            Check(f"{g}.value_norm", False, value_loss),
            Check(f"{g}.network.class_path", network_class, f"{default}: the {'MAT transformer' if alg == 'mat' else 'Sable (retention)'} network"),
            Check(f"{g}.network.init_args.embed_dim", int(row["n_embd"]), f"{src}: n_embd"),
            Check(f"{g}.network.init_args.n_blocks", int(row["n_block"]), f"{src}: n_block"),
            Check(f"{g}.network.init_args.n_heads", int(row["n_head"]), f"{src}: n_head"),
            Check(f"{g}.network.init_args.agent_id", CODE_DEFAULTS["add_agent_id"], f"{default}: add_agent_id"),
            Check(f"{g}.constraint.class_path", "hcmarl.guided.GuidedClip", "hcmarl: MAGPO's guider rule (PPO when delta is infinite)"),
            Check(f"{g}.constraint.init_args.eps", eps, f"{src}: clip_eps"),
            Check(
                f"{g}.constraint.init_args.delta",
                number(row["delta"]) if alg == "magpo" else math.inf,
                f"{src}: delta" if alg == "magpo" else "delta = infinity",
            ),
            Check(f"{g}.constraint.init_args.epochs", int(row["ppo_epochs"]), f"{src}: ppo_epochs"),
            Check(f"{g}.constraint.init_args.minibatches", int(row["num_minibatches"]), f"{src}: num_minibatches"),
            Check(f"{g}.constraint.init_args.ent_coef", number(row["ent_coef"]), f"{src}: ent_coef"),
            Check(f"{g}.constraint.init_args.max_grad_norm", number(row["max_grad_norm"]), f"{src}: max_grad_norm"),
            Check(f"{g}.constraint.init_args.lanes", lanes, f"{default}: update_batch_size"),
            Check(f"{g}.constraint.init_args.advantage_norm", "minibatch", per_minibatch),
        ]
        if alg != "mat":
            checks.append(Check(f"{g}.constraint.init_args.agent_order", "random", f"{CODE} rec_magpo.py, rec_sable.py: agent_perm each epoch"))
        if alg != "mat":
            checks.append(Check(f"{g}.network.init_args.decay_scaling", number(row["decay_scaling_factor"]), f"{src}: decay_scaling_factor"))
            checks += [Check(f"{g}.network.init_args.{k}", v, f"{default}: Mava's Sable ({k})") for k, v in SABLE_PAPER.items()]
        else:
            checks.append(Check(f"{g}.network.init_args.mava_details", True, f"{CODE} mava/networks/mat_network.py, attention.py: Mava's MAT layers"))
        if alg in ("magpo", "ctds"):
            lr_ = "model.learner.init_args"
            checks += [
                Check("model.learner.class_path", "hcmarl.modules.Learner", "hcmarl: the learner role"),
                Check(f"{lr_}.lr", lr, f"{src}: actor_lr/critic_lr (the code's one actor_lr for both Adams)"),
                Check(f"{lr_}.actor.class_path", "hcmarl.nn.GRUActor", f"{default}: a recurrent learner"),
                Check(f"{lr_}.actor.init_args.hidden_size", CODE_DEFAULTS["hidden_state_dim"], f"{default}: hidden_state_dim and pre_torso [128]"),
                Check(f"{lr_}.actor.init_args.post_hidden_sizes", CODE_DEFAULTS["torso"], f"{default}: post_torso [128]"),
                Check(f"{lr_}.actor.init_args.activation", "relu", f"{default}: torso activation"),
                Check(f"{lr_}.actor.init_args.share_params", True, f"{default}: one learner network shared by the agents"),
                Check(f"{lr_}.actor.init_args.agent_id", CODE_DEFAULTS["add_agent_id"], f"{default}: add_agent_id"),
                Check(f"{lr_}.constraint.class_path", "hcmarl.guided.GuidedImitation", "hcmarl: MAGPO's learner rule"),
                Check(
                    f"{lr_}.constraint.init_args.lam",
                    number(row["alpha"]) if alg == "magpo" else 0.0,
                    f"{src}: alpha (lambda)" if alg == "magpo" else "CTDS: lambda = 0",
                ),
                Check(f"{lr_}.constraint.init_args.eps", eps, f"{src}: clip_eps"),
                Check(f"{lr_}.constraint.init_args.kl_direction", "guider_learner", f"{CODE} rec_magpo.py: KL(mu || pi)"),
                Check(f"{lr_}.constraint.init_args.ent_coef", CODE_DEFAULTS["learner_ent_coef"], f"{CODE} rec_magpo.py: no learner entropy"),
                Check(f"{lr_}.constraint.init_args.max_grad_norm", number(row["max_grad_norm"]), f"{src}: max_grad_norm (both optimisers)"),
                Check(f"{lr_}.schedule.class_path", "hcmarl.schedules.Simultaneous", "hcmarl: one shared learner steps at once"),
            ]
    else:  # recurrent MAPPO / IPPO
        assert int(row["recurrent_chunk_size"]) == rollout, (
            f"{src}: recurrent_chunk_size {row['recurrent_chunk_size']} (hcmarl trains whole rollouts)"
        )
        lr_, c = "model.learner.init_args", "model.critic.init_args"
        checks.append(Check("model.advantage_norm", "none", per_minibatch))
        critic_class = "hcmarl.nn.RecurrentCentralValue" if alg == "mappo" else "hcmarl.nn.RecurrentAgentValue"
        checks += [
            Check("model.learner.class_path", "hcmarl.modules.Learner", "hcmarl: the learner role"),
            Check(f"{lr_}.lr", number(row["actor_lr"]), f"{src}: actor_lr"),
            Check(
                f"{lr_}.actor.class_path",
                "hcmarl.nn.GRUActor",
                f"{src}: recurrent_chunk_size {row['recurrent_chunk_size']} (a recurrent actor, whole rollouts)",
            ),
            Check(f"{lr_}.actor.init_args.hidden_size", CODE_DEFAULTS["hidden_state_dim"], f"{default}: hidden_state_dim and pre_torso [128]"),
            Check(f"{lr_}.actor.init_args.post_hidden_sizes", CODE_DEFAULTS["torso"], f"{default}: post_torso [128]"),
            Check(f"{lr_}.actor.init_args.activation", "relu", f"{default}: torso activation"),
            Check(f"{lr_}.actor.init_args.share_params", True, f"{default}: parameters shared by the agents"),
            Check(f"{lr_}.actor.init_args.agent_id", CODE_DEFAULTS["add_agent_id"], f"{default}: add_agent_id"),
            Check(f"{lr_}.constraint.class_path", "hcmarl.constraints.ClipPPO", "hcmarl: PPO's clip"),
            Check(f"{lr_}.constraint.init_args.eps", eps, f"{src}: clip_eps"),
            Check(f"{lr_}.constraint.init_args.epochs", int(row["ppo_epochs"]), f"{src}: ppo_epochs"),
            Check(f"{lr_}.constraint.init_args.minibatches", int(row["num_minibatches"]), f"{src}: num_minibatches"),
            Check(f"{lr_}.constraint.init_args.ent_coef", number(row["ent_coef"]), f"{src}: ent_coef"),
            Check(f"{lr_}.constraint.init_args.max_grad_norm", number(row["max_grad_norm"]), f"{src}: max_grad_norm"),
            Check(f"{lr_}.constraint.init_args.lanes", lanes, f"{default}: update_batch_size"),
            Check(f"{lr_}.constraint.init_args.advantage_norm", "minibatch", per_minibatch),
            Check(f"{lr_}.schedule.class_path", "hcmarl.schedules.Simultaneous", "hcmarl: every agent at once"),
            Check("model.critic.class_path", "hcmarl.modules.Critic", "hcmarl: the critic role"),
            Check(f"{c}.lr", number(row["critic_lr"]), f"{src}: critic_lr"),
            Check(f"{c}.epochs", int(row["ppo_epochs"]), f"{src}: ppo_epochs (the critic steps in the same loop)"),
            Check(f"{c}.minibatches", int(row["num_minibatches"]), f"{src}: num_minibatches"),
            Check(f"{c}.loss", "mse", value_loss),
            Check(f"{c}.clip_value", eps, f"{src}: clip_eps (the value clip)"),
            Check(f"{c}.value_norm", False, value_loss),
            Check(f"{c}.max_grad_norm", number(row["max_grad_norm"]), f"{src}: max_grad_norm (the critic's own clip)"),
            Check(f"{c}.vf_coef", CODE_DEFAULTS["vf_coef"], f"{default}: vf_coef (before the critic's clip)"),
            Check(f"{c}.value_loss_scale", 0.5, value_loss),
            Check(f"{c}.lanes", lanes, f"{default}: update_batch_size (the critic's minibatches too)"),
            Check(f"{c}.network.class_path", critic_class, f"{default}: {'a central' if alg == 'mappo' else 'a per-agent'} recurrent critic"),
            Check(f"{c}.network.init_args.hidden_size", CODE_DEFAULTS["hidden_state_dim"], f"{default}: hidden_state_dim and critic pre_torso [128]"),
            Check(f"{c}.network.init_args.post_hidden_sizes", CODE_DEFAULTS["torso"], f"{default}: critic post_torso [128]"),
            Check(f"{c}.network.init_args.activation", "relu", f"{default}: critic torso activation"),
        ]
        if alg == "ippo":
            checks += [
                Check(f"{c}.network.init_args.share_params", True, f"{default}: one critic shared by the agents"),
                Check(f"{c}.network.init_args.agent_id", CODE_DEFAULTS["add_agent_id"], f"{default}: add_agent_id"),
            ]
    return checks


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted leaf keys of a config mapping (lists are leaves)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def resolved(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def same(got: Any, want: Any) -> bool:
    """Equal, booleans only to booleans (True is not 1 here)."""
    return got is want if isinstance(got, bool) or isinstance(want, bool) else got == want


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return " ".join(lines)


pytestmark = pytest.mark.skipif(not PARAMS.exists(), reason=f"{PARAMS} is absent (the steering repo's shared/ folder is not beside this checkout)")


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str, str], dict[str, str]]:
    return read_rows()


def test_every_recipe_has_its_row(rows: dict) -> None:
    """Every CoordSum row of the six systems and every SMAX row of MAGPO has its recipe, and no such recipe is missing."""
    wanted = {
        f"{FOLDERS.get(alg, alg)}/{env}_{task}"
        for (alg, env, task) in rows
        if (env == "coordsum" and alg in CONFIG_FILES) or (env, alg) == ("smax", "magpo")
    }
    wanted |= {name.replace("magpo/", "ctds/") for name in wanted if name.startswith("magpo/")}
    assert wanted == set(RECIPES)
    assert all((RECIPES_DIR / f"{name}.yaml").exists() for name in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_matches_its_row(recipe: str, rows: dict) -> None:
    path = RECIPES_DIR / f"{recipe}.yaml"
    checks = expected(recipe, rows)
    config = build_cli(["--config", str(path)], run=False).config.as_dict()  # as the hcmarl command loads it: base, overrides
    wrong = [f"{c.key} = {resolved(config, c.key)!r}, want {c.value!r} ({c.source})" for c in checks if not same(resolved(config, c.key), c.value)]
    assert not wrong, f"{recipe} drifted from the official settings:\n" + "\n".join(wrong)
    # every value written in the recipe is one of the checked ones
    written = {key for key, _ in flatten(yaml.safe_load(path.read_text()))}
    unchecked = written - {c.key for c in checks}
    assert not unchecked, f"{recipe}: values no check covers (add them to expected()): {sorted(unchecked)}"
    text = header(path)
    assert "Deliberate differences: none." in text and "not yet available in hcmarl" not in text, f"{recipe}: its header lists differences"
