"""docs/extending.md: each template in examples/extending/ runs as the page says, in a tiny setting.

A new surrogate (SPO) against its closed form and through the ``hcmarl`` command with its overlay; a new env family
(named by its module's dotted path) against TorchRL's spec check and its reward rule, and trained through the
``hcmarl`` command; a new role (a reward model, an ``ExtraRole``) in a plan without Lightning, and through the
``hcmarl`` command with its overlay, its metrics logged, its weights checkpointed and resumed.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, recipe, run_dirs
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the templates import as examples.extending.*, from the repository root
    sys.path.insert(0, str(ROOT))

from examples.extending import new_env_family, new_role, new_surrogate  # noqa: E402
from hcmarl.envs import check_env_name, make_env  # noqa: E402
from hcmarl.errors import UnknownEnvError  # noqa: E402
from hcmarl.iteration import IterationPlan, plan_iteration  # noqa: E402
from hcmarl.modules.cli import main  # noqa: E402
from hcmarl.roles import Roles  # noqa: E402

SPO_OVERLAY = ROOT / "examples" / "extending" / "new_surrogate.yaml"
ROLE_OVERLAY = ROOT / "examples" / "extending" / "new_role.yaml"
FAMILY = "examples.extending.new_env_family"  # the family's name in data.env: its module's dotted path


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def _logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


# ---- a new surrogate ---------------------------------------------------------------------------------------------
def test_spo_objective_matches_its_equation_and_peaks_at_the_clip_edge() -> None:
    torch.manual_seed(0)
    log_prob, old_log_prob, advantage = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 3)
    eps, factor = 0.2, torch.rand(6, 1) + 0.5
    ratio = (log_prob - old_log_prob).exp()
    expected = factor * (ratio * advantage - advantage.abs() / (2 * eps) * (ratio - 1) ** 2)
    torch.testing.assert_close(new_surrogate.spo_objective(log_prob, old_log_prob, advantage, eps, factor), expected)

    # gradient ascent on the log-ratio of one sample ends at rho = 1 + eps * sign(A)
    for sign in (1.0, -1.0):
        log_ratio = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.SGD([log_ratio], lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            (-new_surrogate.spo_objective(log_ratio, torch.zeros(()), torch.tensor(sign), eps)).backward()
            optimizer.step()
        assert math.isclose(float(log_ratio.exp()), 1 + sign * eps, abs_tol=1e-3)


@pytest.mark.parametrize("base", ["mappo/coordsum_3x10", "happo/coordsum_3x10"])  # Simultaneous, and Sequential's factor
def test_spo_overlay_trains_through_the_hcmarl_command(base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", recipe(base), "--config", str(SPO_OVERLAY), *TINY, "--data.total_frames", "96"])
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:2] == ("runs", "spo")  # the overlay's logger name
    rows = _metrics(run_dir)
    ratio_dev = _logged(rows, "learner/ratio_dev")  # a diagnostic only SPO writes: the recipe's constraint was replaced
    assert len(ratio_dev) == 3 and all(0.0 < value < 1.0 for value in ratio_dev)
    assert all(math.isfinite(value) for value in _logged(rows, "learner/policy_loss"))


# ---- a new env family ---------------------------------------------------------------------------------------------
def test_the_new_family_is_made_by_make_env_and_passes_torchrls_spec_check() -> None:
    assert new_env_family.FAMILY == FAMILY and check_env_name(f"{FAMILY}/3x4") == (FAMILY, "3x4")
    env = make_env(f"{FAMILY}/3x4", num_envs=5, seed=0)
    check_env_specs(env)
    assert env.info.name == f"{FAMILY}/3x4" and (env.info.n_agents, env.info.action_dim, env.info.obs_dim) == (3, 4, 7)

    rollout = env.rollout(30, break_when_any_done=False)  # random actions; one episode end (T = 25) per env
    n, k = env.n_agents, env.n_actions
    target = rollout.get(("agents", "observation"))[..., 0, :k].argmax(-1)  # the target each step shows
    wanted = (target.unsqueeze(-1) + torch.arange(n)) % k
    expected = (rollout.get(("agents", "action")) == wanted).float().mean(-1, keepdim=True)
    torch.testing.assert_close(rollout.get(("next", "reward")), expected)
    assert rollout.get(("next", "done")).sum() == 5 and bool(rollout.get(("next", "done"))[:, 24].all())


def test_the_new_family_resets_only_the_envs_it_is_told_to() -> None:
    env = make_env(f"{FAMILY}/2x3", num_envs=3, seed=1)
    td = env.reset()
    for _ in range(4):
        td = env.rand_step(td)
    env.reset(TensorDict({"_reset": torch.tensor([[True], [False], [True]])}, batch_size=[3]))
    assert env.step_count.tolist() == [0, 4, 0]


def test_the_new_family_trains_through_the_hcmarl_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", recipe("mappo/coordsum_3x10"), "--data.env", f"{FAMILY}/3x4", *TINY, "--data.total_frames", "64"])
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:4] == ("runs", "mappo", FAMILY, "3x4")  # the logger name mappo/${data.env}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["env"] == f"{FAMILY}/3x4"  # what a resume re-reads
    assert all(math.isfinite(value) for value in _logged(_metrics(run_dir), "learner/policy_loss"))
    assert (run_dir / "final_eval.json").exists()


# ---- a new role ---------------------------------------------------------------------------------------------------
def _record_plan(monkeypatch: pytest.MonkeyPatch) -> tuple[list[IterationPlan], list[torch.Tensor]]:
    """The plan ``new_role.train`` builds, and the reward model's weights then (built, before any iteration)."""
    plans: list[IterationPlan] = []
    initial: list[torch.Tensor] = []

    def recording_plan_iteration(roles: Roles, *args: object, **kwargs: object) -> IterationPlan:
        initial.extend(p.detach().clone() for p in roles.extra[0].parameters())
        plans.append(plan_iteration(roles, *args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(new_role, "plan_iteration", recording_plan_iteration)
    return plans, initial


def test_the_new_role_runs_last_in_a_plan_without_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    plans, initial = _record_plan(monkeypatch)
    history, model = new_role.train(iterations=3, num_envs=4, rollout_steps=16)

    (plan,) = plans
    assert [type(stage).__name__ for stage in plan.stages] == ["LearnerStage", "CriticStage", "RewardModel"]
    assert list(plan.optimizers) == ["learner", "critic", "reward_model"]
    assert len(history) == 3
    for metrics in history:
        assert {"learner/policy_loss", "critic/value_loss", "reward_model/loss", "reward_model/explained_variance"} <= set(metrics)
        assert all(bool(torch.isfinite(value)) for value in metrics.values())
    assert all(not torch.equal(before, after) for before, after in zip(initial, model.parameters(), strict=True)), "the role did not move"


def test_the_new_role_learns_the_reward_of_the_new_family() -> None:
    history, _ = new_role.train(iterations=12, env=f"{FAMILY}/3x4", num_envs=8, rollout_steps=32)
    explained = [float(metrics["reward_model/explained_variance"]) for metrics in history]
    assert explained[0] < 0.2 and explained[-1] > 0.8, explained  # measured on each rollout before fitting it


def test_the_new_role_trains_through_the_hcmarl_command_with_its_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    initial: dict[str, torch.Tensor] = {}
    build = new_role.RewardModel.build

    def recording_build(self: new_role.RewardModel, info: object) -> None:  # the weights the run starts from
        build(self, info)
        initial.update({f"extra_roles.0.{k}": v.detach().clone() for k, v in self.state_dict().items()})

    monkeypatch.setattr(new_role.RewardModel, "build", recording_build)
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", recipe("mappo/coordsum_3x10"), "--config", str(ROLE_OVERLAY), *TINY]
    main([*args, "--data.total_frames", "96"])  # 3 iterations of 4 envs x 8 steps
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:2] == ("runs", "reward_model")  # the overlay's logger name
    rows = _metrics(run_dir)
    for key in ("reward_model/loss", "reward_model/explained_variance", "learner/policy_loss"):
        values = _logged(rows, key)
        assert len(values) == 3 and all(math.isfinite(value) for value in values), (key, values)

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert len(saved["optimizer_states"]) == 3  # learner, critic, reward_model
    assert set(initial) == {k for k in saved["state_dict"] if k.startswith("extra_roles.0.")}
    assert all(not torch.equal(value, saved["state_dict"][key]) for key, value in initial.items()), "the role did not move"

    main([*args, "--data.total_frames", "128", "--ckpt_path", str(checkpoint)])  # its weights and Adam state resume
    (resumed,) = run_dirs(tmp_path)  # the resumed run continues its folder: three iterations and one more
    assert len(_logged(_metrics(resumed), "reward_model/loss")) == 4


def test_an_unknown_task_of_a_users_family_lists_that_familys_tasks() -> None:
    with pytest.raises(UnknownEnvError, match="its tasks: 2x3, 3x4, 5x8"):
        check_env_name("examples.extending.new_env_family/9x9")
