"""HCPO as its paper ran it (ALGORITHMS.md section 3, "Paper (Algorithm 1, literal)" and "Paper settings").

The global V(s) critic (both advantages are A^GAE from it), ``paper_weighting``'s literal constraint, HARL's bounded
Gaussian std, and the paper's settings table as data, checked against every HCPO recipe that says it runs them and
against the shared settings of the baselines the paper compares with.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict
from test_hcpo import _rollout  # the same fixed CoordSum rollout as the instruction-critic tests

from hcmarl.advantages import generalized_advantage_estimate, normalize_advantage
from hcmarl.constraints import Distill
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.keys import ADVANTAGE, CONDUCTOR_ADVANTAGE, VALUE, VALUE_TARGET
from hcmarl.modules import Conductor, Critic, Learner, MARLModule
from hcmarl.nn import CentralValue, ConductorNetwork, LocalConductors, MLPActor
from hcmarl.nn.distributions import bounded_std
from hcmarl.optim import GradientStep
from hcmarl.schedules import Sequential
from hcmarl.stages import IterationContext
from hcmarl.trust_region import TrustRegion
from hcmarl.value_sources import CriticValues


def _module(k: int | None, behaviour: str = "central") -> MARLModule:
    """HATRPO (``k`` None) or HCPO with ``k`` instructions and the paper's global V(s) critic, on coordsum/3x10."""
    learner = Learner(MLPActor(share_params=False), TrustRegion(max_kl=0.01), Sequential("random"))
    conductor = None
    if k is not None:
        conductor = Conductor(
            ConductorNetwork(), LocalConductors(), TrustRegion(max_kl=0.01), Distill(epochs=2, minibatches=2), n_instructions=k, behaviour=behaviour
        )
    module = MARLModule(learner, Critic(CentralValue(), epochs=2, minibatches=2), conductor)
    module.build(make_env("coordsum/3x10", num_envs=1, seed=0).info)
    return module


def _iteration(module: MARLModule, batch: TensorDict, seed: int) -> dict[str, torch.Tensor]:
    module.compute_advantages(batch)
    torch.manual_seed(seed)
    steps = dict(zip(module.optimizer_roles(), (GradientStep(opt) for opt in module.configure_optimizers()), strict=True))
    return module.plan.run_stages(IterationContext(batch, steps))


# ---- 1. the V(s) critic ---------------------------------------------------------------------------------------------


def test_v_critic_random_conductor_with_one_instruction_equals_hatrpo() -> None:
    hcpo, hatrpo = _module(1, behaviour="random"), _module(None)
    assert type(hcpo.plan.advantages.values) is CriticValues
    hatrpo.learner.load_state_dict(hcpo.learner.state_dict())
    hatrpo.critic.load_state_dict(hcpo.critic.state_dict())
    batch = _rollout(hcpo)
    initial = copy.deepcopy(hcpo.state_dict())
    hcpo_metrics, hatrpo_metrics = _iteration(hcpo, batch.clone(), seed=11), _iteration(hatrpo, batch.clone(), seed=11)
    assert hcpo_metrics["learner/accepted"] > 0 and hatrpo_metrics["learner/accepted"] > 0
    moved = set()
    for role in ("learner", "critic"):
        mine, reference = getattr(hcpo, role).state_dict(), getattr(hatrpo, role).state_dict()
        assert list(mine) == list(reference)
        for name, value in mine.items():
            torch.testing.assert_close(value, reference[name], atol=1e-5, rtol=1e-4, msg=f"{role} {name}")
            if not torch.equal(value, initial[f"{role}.{name}"]):
                moved.add(role)
    assert moved == {"learner", "critic"}, "an iteration that moves nothing proves nothing"


def test_v_critic_gives_the_conductor_and_the_agents_the_same_gae_advantage() -> None:
    module = _module(5)
    batch = _rollout(module)
    module.compute_advantages(batch)
    with torch.no_grad():
        value, next_value = module.critic.value(batch), module.critic.value(batch.get("next"))
    gae = generalized_advantage_estimate(
        batch["next", "reward"], value, next_value, batch["next", "terminated"], batch["next", "done"], module.gamma, module.gae_lambda
    )
    torch.testing.assert_close(batch.get(VALUE), value)
    torch.testing.assert_close(batch.get(VALUE_TARGET), value + gae)  # the critic regresses V(s_t) on the lambda-return
    torch.testing.assert_close(batch.get(ADVANTAGE), normalize_advantage(gae))
    torch.testing.assert_close(batch.get(CONDUCTOR_ADVANTAGE), normalize_advantage(gae[..., 0]))
    torch.testing.assert_close(batch.get(CONDUCTOR_ADVANTAGE), batch.get(ADVANTAGE)[..., 0])
    metrics = _iteration(module, batch, seed=0)
    assert metrics["conductor/accepted"] == 1.0 and 0 < metrics["conductor/kl"] <= 0.01


# ---- 2. HARL's bounded Gaussian std ---------------------------------------------------------------------------------

GAUSSIAN_INFO = EnvInfo(name="toy", n_agents=2, obs_dim=3, state_dim=6, action_kind="continuous", action_dim=4, max_steps=10)


def _gaussian_td(batch: int = 16) -> TensorDict:
    torch.manual_seed(5)
    agents = TensorDict({"observation": torch.randn(batch, 2, 3)}, batch_size=(batch, 2))
    return TensorDict({"agents": agents}, batch_size=(batch,))


def test_bounded_std_starts_at_harls_value_and_stays_below_its_bound() -> None:
    actor = MLPActor(hidden_sizes=[8], share_params=False, std="bounded", std_x_coef=1.0, std_y_coef=0.5)
    actor.build(GAUSSIAN_INFO)
    torch.testing.assert_close(actor.log_std.detach(), torch.ones(2, 4))  # HARL: raw = ones * x_coef
    dist = actor(_gaussian_td())
    torch.testing.assert_close(dist.base_dist.scale, torch.full((16, 2, 4), 0.5 / (1.0 + math.exp(-1.0))))  # 0.3655
    raw = torch.tensor([-50.0, -1.0, 0.0, 2.0, 50.0])
    for x_coef, y_coef in [(1.0, 0.5), (2.0, 1.5)]:
        expected = [y_coef / (1.0 + math.exp(-v / x_coef)) for v in raw.tolist()]
        torch.testing.assert_close(bounded_std(raw, x_coef, y_coef), torch.tensor(expected))
        assert bool((bounded_std(raw, x_coef, y_coef) <= y_coef).all())
    default = MLPActor(hidden_sizes=[8], log_std_init=-0.5)
    default.build(GAUSSIAN_INFO)
    torch.testing.assert_close(default(_gaussian_td()).base_dist.scale, torch.full((16, 2, 4), math.exp(-0.5)))  # exp stays the default


def test_bounded_std_gradient_matches_the_written_formula_and_finite_differences() -> None:
    torch.manual_seed(0)
    actor = MLPActor(hidden_sizes=[8], share_params=False, std="bounded", std_x_coef=1.5, std_y_coef=0.7)
    actor.build(GAUSSIAN_INFO)
    actor.double()
    with torch.no_grad():
        actor.log_std.add_(torch.randn_like(actor.log_std))
    td = _gaussian_td().apply(lambda t: t.double())
    action = torch.randn(16, 2, 4, dtype=torch.float64)

    def loss_of(raw: torch.Tensor) -> torch.Tensor:
        mean = actor.net(actor.inputs(td)).detach()
        std = torch.sigmoid(raw / 1.5) * 0.7  # the formula, written out
        return torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(action).sum()

    actor(td).log_prob(action).sum().backward()
    raw = actor.log_std.detach().clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(loss_of(raw), raw)
    torch.testing.assert_close(actor.log_std.grad, reference)
    # d log N(a; m, s) / d raw = (-1/s + (a - m)^2 / s^3) * s * (1 - sigmoid) / x_coef, summed; and finite differences
    eps = 1e-6
    numeric = torch.zeros_like(raw)
    for index in range(raw.numel()):
        step = torch.zeros_like(raw).view(-1)
        step[index] = eps
        step = step.view_as(raw)
        numeric.view(-1)[index] = (loss_of(raw.detach() + step) - loss_of(raw.detach() - step)) / (2 * eps)
    torch.testing.assert_close(actor.log_std.grad, numeric, atol=1e-6, rtol=1e-6)


def test_a_recipe_with_the_bounded_std_trains(run_cli, tmp_path) -> None:
    std = "--model.learner.init_args.actor.init_args.std"
    run_cli("fit", "hatrpo/vmas_balance", std, "bounded", "--data.total_frames", "64", "--data.eval_every", "1")
    (run_dir,) = run_dirs(tmp_path)
    (ckpt,) = run_dir.rglob("last.ckpt")
    raw = torch.load(ckpt, weights_only=False)["state_dict"]["learner.actor.log_std"]
    assert raw.shape[-1] == 2 and not torch.equal(raw, torch.ones_like(raw)), "the bounded std's parameter did not move"
    assert math.isfinite(final_eval(run_dir)["eval/return"])


# ---- 3. paper_weighting's literal constraint ------------------------------------------------------------------------


def test_paper_weighting_bounds_the_literal_weighted_mean_of_the_kl() -> None:
    """Algorithm 3: agent i's constraint is (1/(B T)) sum_t w_psi_i(M_t|o_i) KL_t, not sum w KL / sum w."""
    module = _module(4)
    module.conductor.paper_weighting = True
    batch = _rollout(module, steps=12)
    old_actor = copy.deepcopy(module.learner.actor)
    module.compute_advantages(batch)
    torch.manual_seed(0)
    steps = dict(zip(module.optimizer_roles(), (GradientStep(opt) for opt in module.configure_optimizers()), strict=True))
    context = IterationContext(batch, steps)
    metrics = module.plan.run_stages(context)
    flat = batch.reshape(-1)
    with torch.no_grad():
        kl = torch.distributions.kl_divergence(old_actor(flat), module.learner.actor(flat))  # [B T, N]
    weight = context.kl_weight.reshape(-1, 3)  # w_psi_i(M_t|o_i) before the distillation (tests/test_hcpo.py checks it)
    assert not torch.allclose(weight, torch.ones_like(weight))
    constraint = [float((weight[:, i] * kl[:, i]).sum()) / weight.shape[0] for i in range(3)]  # (1/(B T)) sum w KL, by hand
    assert all(0.0 <= c <= 0.01 + 1e-6 for c in constraint) and max(constraint) > 1e-3
    torch.testing.assert_close(metrics["learner/kl"], torch.tensor(sum(constraint) / 3), atol=1e-6, rtol=1e-4)


# ---- 6. the paper's settings table (ALGORITHMS.md section 3), as data, against the recipes ----------------------------

PAPER = {  # column: batch (envs, steps), delta2, critic lr, gamma, hidden, value clip, bounded std
    "smac": dict(envs=16, steps=200, delta2=0.06, critic_lr=5e-4, gamma=0.95, hidden=64, clip_value=None, bounded=False),
    "mamujoco": dict(envs=20, steps=200, delta2=0.005, critic_lr=5e-3, gamma=0.99, hidden=128, clip_value=None, bounded=True),
    "mpe": dict(envs=20, steps=200, delta2=0.005, critic_lr=5e-4, gamma=0.99, hidden=64, clip_value=0.2, bounded=False),
}
COMMON = dict(k=10, delta1=0.01, accept_ratio=0.5, backtrack=0.8, loss="huber", huber_delta=10.0, adam_eps=1e-5, max_grad_norm=10.0)
SMAC_EPISODE, SMAC_FRAMES, X_COEF, Y_COEF = 200, 10_000_000, 1.0, 0.5
PAPER_ENVS = {
    "smax_3s5z": "smac",
    "smax_5m_vs_6m": "smac",
    "smax_10m_vs_11m": "smac",
    "mamujoco_halfcheetah_2x3": "mamujoco",
    "mamujoco_walker2d_6x1": "mamujoco",
    "mpe_simple_spread_v3": "mpe",
}
BASELINES = ("hatrpo", "happo", "haa2c", "a2po", "mappo")


def _recipe(name: str):
    from hcmarl.modules.cli import build_cli
    from hcmarl.recipes import RECIPES_DIR

    torch.manual_seed(0)
    cli = build_cli(["--config", str(RECIPES_DIR / f"{name}.yaml")], run=False)
    return cli.model, cli.datamodule


def _check_shared(module, data, column: str) -> list[str]:
    """Every setting HCPO shares with its baselines, against the table; the differences found, as text."""
    paper, wrong = PAPER[column], []

    def check(what: str, got, want) -> None:
        if got != want and not (isinstance(want, float) and isinstance(got, float) and math.isclose(got, want)):
            wrong.append(f"{what}: {got!r}, the paper's is {want!r}")

    check("data.num_envs", data.num_envs, paper["envs"])
    check("data.rollout_steps", data.rollout_steps, paper["steps"])
    check("data.protocol", data.protocol.name, "hcpo")
    check("model.gamma", module.gamma, paper["gamma"])
    critic, actor = module.critic, module.learner.actor
    check("critic network", type(critic.network).__name__, "CentralValue")
    check("critic hidden", critic.network.hidden_sizes, [paper["hidden"]] * 2)
    check("critic activation", critic.network.activation, "relu")
    check("critic lr", critic.lr, paper["critic_lr"])
    check("critic epochs x minibatches", (critic.epochs, critic.minibatches), (5, 1))
    check("critic clip_value", critic.clip_value, paper["clip_value"])
    check("critic loss", (critic.loss, critic.huber_delta), (COMMON["loss"], COMMON["huber_delta"]))
    check("critic max_grad_norm", critic.max_grad_norm, COMMON["max_grad_norm"])
    check("actor hidden", actor.hidden_sizes, [paper["hidden"]] * 2)
    check("actor activation", actor.activation, "relu")
    if column == "mamujoco":
        check("actor std", (actor.std, actor.std_x_coef, actor.std_y_coef), ("bounded", X_COEF, Y_COEF) if paper["bounded"] else "exp")
    else:
        check("actor distribution", actor.distribution_kind, "categorical")
    grad_norm = getattr(module.learner.constraint, "max_grad_norm", COMMON["max_grad_norm"])
    check("learner max_grad_norm", grad_norm, COMMON["max_grad_norm"])
    if column == "smac":
        check("data.env_kwargs.max_steps", data.env_kwargs.get("max_steps"), SMAC_EPISODE)
        check("data.total_frames", data.total_frames, SMAC_FRAMES)
    return wrong


@pytest.mark.parametrize("stem", list(PAPER_ENVS))
def test_hcpo_recipe_holds_the_papers_settings(stem: str) -> None:
    module, data = _recipe(f"hcpo/{stem}")
    column, paper = PAPER_ENVS[stem], PAPER[PAPER_ENVS[stem]]
    wrong = _check_shared(module, data, column)
    conductor, learner = module.conductor, module.learner
    own = {
        "K": (conductor.n_instructions, COMMON["k"]),
        "behaviour": (conductor.behaviour, "central"),
        "paper_weighting": (conductor.paper_weighting, False),
        "delta1": (conductor.constraint.max_kl, COMMON["delta1"]),
        "delta2": (learner.constraint.max_kl, paper["delta2"]),
        "conductor hidden": (conductor.network.hidden_sizes, [paper["hidden"]] * 2),
        "schedule": ((type(learner.schedule).__name__, learner.schedule.order), ("Sequential", "random")),
        "actor share_params": (learner.actor.share_params, False),
    }
    for rule, name in [(conductor.constraint, "conductor"), (learner.constraint, "agents")]:
        own[f"{name} accept ratio, backtrack"] = ((rule.accept_ratio, rule.backtrack), (COMMON["accept_ratio"], COMMON["backtrack"]))
    wrong += [f"{what}: {got!r}, the paper's is {want!r}" for what, (got, want) in own.items() if got != want]
    info = make_env("coordsum/3x10", num_envs=1, seed=0).info  # any env: the optimisers and output layers to inspect
    if column == "mamujoco":
        info = EnvInfo(name="toy", n_agents=2, obs_dim=4, state_dim=8, action_kind="continuous", action_dim=3, max_steps=10)
    module.build(info)
    eps = {opt.defaults.get("eps") for opt in module.configure_optimizers()}
    wrong += [] if eps == {COMMON["adam_eps"]} else [f"Adam eps {eps}, the paper's is 1e-5"]
    assert not wrong, f"recipes/hcpo/{stem}.yaml differs from ALGORITHMS.md section 3:\n" + "\n".join(wrong)


@pytest.mark.parametrize("stem", list(PAPER_ENVS))
@pytest.mark.parametrize("algorithm", BASELINES)
def test_baseline_recipe_holds_the_settings_it_shares_with_hcpo(algorithm: str, stem: str) -> None:
    module, data = _recipe(f"{algorithm}/{stem}")
    column = PAPER_ENVS[stem]
    wrong = _check_shared(module, data, column)
    if algorithm == "hatrpo":
        rule = module.learner.constraint
        got = (rule.max_kl, rule.accept_ratio, rule.backtrack)
        want = (PAPER[column]["delta2"], COMMON["accept_ratio"], COMMON["backtrack"])
        wrong += [] if got == want else [f"trust region (delta, accept, backtrack) {got}, HCPO's agents' {want}"]
    assert not wrong, f"recipes/{algorithm}/{stem}.yaml differs from the HCPO paper's shared settings:\n" + "\n".join(wrong)
