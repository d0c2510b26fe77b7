"""MAGPO, CTDS and MAT as compositions (ALGORITHMS.md sections 2 and 4): who collects, the joint update, evaluation."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import TransformedEnv

from hcmarl.constraints import ClipPPO, Distill, Evaluation, SurrogateBatch, evaluate_actions
from hcmarl.envs import make_env
from hcmarl.errors import ConfigError
from hcmarl.guided import GuidedClip, GuidedImitation, GuidedTrustRegion
from hcmarl.keys import ACTION, ADVANTAGE, AGENT_INSTRUCTION, IS_INIT, LOG_PROB, OBSERVATION, STATE, VALUE_TARGET
from hcmarl.modules import Conductor, Critic, Guider, Learner, MARLModule
from hcmarl.nn import CentralValue, ConductorNetwork, InstructionCritic, LocalConductors, MATGuider, MLPActor, SableGuider
from hcmarl.nn.distributions import detach_distribution
from hcmarl.optim import GradientStep
from hcmarl.schedules import Sequential, Simultaneous, Upstream
from hcmarl.stages import IterationContext, JointGuidedStage
from hcmarl.trust_region import TrustRegion

ENV = "coordsum/3x10"


def _guider(delta: float = 1.3, epochs: int = 1, minibatches: int = 1) -> Guider:
    rule = GuidedClip(eps=0.2, delta=delta, epochs=epochs, minibatches=minibatches)
    return Guider(MATGuider(embed_dim=16, n_blocks=1, n_heads=1), rule, lr=1e-3)


def _learner(lam: float = 2.0, epochs: int | None = None) -> Learner:
    imitation = GuidedImitation(lam=lam, eps=0.2, epochs=epochs, minibatches=None if epochs is None else 2)
    return Learner(MLPActor(share_params=True, agent_id=True), imitation, Simultaneous(), lr=1e-3)


def _trust_region_guider() -> Guider:
    return Guider(MATGuider(embed_dim=16, n_blocks=1, n_heads=1), GuidedTrustRegion(delta=1.3, fisher_fraction=0.5))


def _magpo(delta: float = 1.3, lam: float = 2.0, **kwargs) -> MARLModule:
    torch.manual_seed(0)
    module = MARLModule(learner=_learner(lam), guider=_guider(delta, **kwargs))
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    return module


def _conductor() -> Conductor:
    return Conductor(ConductorNetwork(), LocalConductors(), TrustRegion(), Distill(), n_instructions=4)


def _rollout(module: MARLModule, steps: int = 16) -> TensorDict:
    torch.manual_seed(1)
    return make_env(ENV, num_envs=8, seed=3).rollout(steps, module.behaviour_policy(), break_when_any_done=False)


def test_the_guider_collects_and_its_log_prob_is_stored() -> None:
    module = _magpo()
    batch = _rollout(module)
    guider_dist, _ = module.guider.network(batch)
    torch.testing.assert_close(batch.get(LOG_PROB), guider_dist.log_prob(batch.get(ACTION)), atol=1e-5, rtol=0)
    learner_log_prob = module.learner.actor(batch).log_prob(batch.get(ACTION))
    assert not torch.allclose(batch.get(LOG_PROB), learner_log_prob, atol=1e-3)


def test_a_sable_guider_replays_each_rollout_from_the_state_it_started_with() -> None:
    """Across two collected rollouts, the second starts mid-episode: its stored log mu equals the parallel replay from
    the memory's rollout-start state, and not the replay from zeros; a joint update then runs on env minibatches."""
    torch.manual_seed(0)
    module = MARLModule(learner=_learner(), guider=Guider(SableGuider(embed_dim=16, n_blocks=1, n_heads=2), GuidedClip(minibatches=2)))
    env = make_env(ENV, num_envs=4, seed=3)
    module.build(env.info)
    env = TransformedEnv(env)
    for transform in module.env_transforms():
        env.append_transform(transform)
    policy = module.behaviour_policy()
    rollouts = iter(Collector(env, policy, frames_per_batch=4 * 8, total_frames=-1, trust_policy=True, auto_register_policy_transforms=False))
    policy.begin_rollout()
    next(rollouts)
    policy.begin_rollout()
    second = next(rollouts)
    start = module.guider.rollout_start_state()
    assert not bool(second.get(IS_INIT)[:, 0].any()) and start is not None
    replayed, _ = module.guider.network(second, start)
    torch.testing.assert_close(replayed.log_prob(second.get(ACTION)), second.get(LOG_PROB), atol=1e-4, rtol=0)
    from_zeros, _ = module.guider.network(second, None)
    assert not torch.allclose(from_zeros.log_prob(second.get(ACTION)), second.get(LOG_PROB), atol=1e-3)
    module.compute_advantages(second)
    opt_guider, opt_learner = module.guider.make_optimizer(), module.learner.make_optimizer()
    stage = JointGuidedStage(module.guider, module.learner, train_value=True)
    metrics = stage.run(IterationContext(second, {"guider": GradientStep(opt_guider), "learner": GradientStep(opt_learner)}))
    assert metrics and all(torch.isfinite(v) for v in metrics.values())


def test_a_conductor_instructs_the_guider_and_the_learner() -> None:
    """Conductor-guided MAGPO (issue 8's hybrid 1): the central conductor's M_t is stored with the guider's behaviour, both
    the guider and the learner read it, and the deployed learner is instructed by the local conductors."""
    torch.manual_seed(0)
    module = MARLModule(learner=_learner(), critic=Critic(InstructionCritic()), guider=_guider(minibatches=2), conductor=_conductor())
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    assert AGENT_INSTRUCTION in module.guider.network.in_keys and AGENT_INSTRUCTION in module.learner.actor.in_keys
    batch = _rollout(module)
    guider_dist, _ = module.guider.network(batch)
    torch.testing.assert_close(batch.get(LOG_PROB), guider_dist.log_prob(batch.get(ACTION)), atol=1e-5, rtol=0)
    other = batch.clone()
    other.set(AGENT_INSTRUCTION, (batch.get(AGENT_INSTRUCTION) + 1) % 4)
    assert not torch.allclose(module.guider.network(other)[0].log_prob(batch.get(ACTION)), batch.get(LOG_PROB), atol=1e-4)
    assert set(module.evaluation_modes()) == {"eval", "eval/guider", "eval/central"}
    module.compute_advantages(batch)
    metrics = module.update_roles(batch, [GradientStep(opt) for opt in module.configure_optimizers()])
    assert {"conductor/kl", "guider/mask_frac", "learner/imitation_kl", "critic/value_loss", "local/cross_entropy"} <= set(metrics)
    deployed = module.deployment_policy()
    td = make_env(ENV, num_envs=2, seed=5).reset()
    td.set(STATE, torch.full_like(td.get(STATE), float("nan")))
    action = deployed(td).get(ACTION)
    assert action.shape == (2, 3) and td.get(AGENT_INSTRUCTION).shape == (2, 3)


def test_both_roles_step_from_the_same_pre_update_parameters() -> None:
    """One minibatch of the joint loop equals: the guider's step with the learner frozen, and the learner's step
    against the guider *before* its step (a reference built from copies, stepped one after the other)."""
    module = _magpo()
    batch = _rollout(module)
    module.compute_advantages(batch)
    flat = batch.reshape(-1)
    guider, learner = copy.deepcopy(module.guider), copy.deepcopy(module.learner)
    g_opt, l_opt = guider.make_optimizer(), learner.make_optimizer()
    # reference: the guider's loss and step first; then the learner against the *old* guider's copy
    old_guider = copy.deepcopy(guider)
    target = flat.get(VALUE_TARGET)
    guider.value_norm.update(target)
    dist, value = guider.network(flat)
    log_prob = dist.log_prob(flat.get(ACTION))
    learner_dist = learner.actor(flat)
    data = SurrogateBatch(flat.get(LOG_PROB), flat.get(ADVANTAGE))
    guider_eval = Evaluation(log_prob, dist.entropy(), dist, detach_distribution(learner_dist), learner_dist.log_prob(flat.get(ACTION)).detach())
    loss, _ = guider.constraint.loss(guider_eval, data)
    loss = loss + guider.vf_coef * torch.nn.functional.huber_loss(value, guider.value_norm.normalize(target), delta=10.0)
    GradientStep(g_opt)(loss, 0.5)
    old_dist, _ = old_guider.network(flat)
    learner_eval = evaluate_actions(learner.actor(flat), flat.get(ACTION), old_dist)
    learner_loss, _ = learner.constraint.loss(learner_eval, data)
    GradientStep(l_opt)(learner_loss, 0.5)

    learner_before = module.learner.state_dict()["actor.net.0.weight"].clone()
    module.update_roles(batch, [GradientStep(opt) for opt in module.configure_optimizers()])
    assert not torch.equal(module.learner.state_dict()["actor.net.0.weight"], learner_before)
    for name, value in module.guider.state_dict().items():
        torch.testing.assert_close(value, guider.state_dict()[name], atol=1e-6, rtol=1e-5, msg=name)
    for name, value in module.learner.state_dict().items():
        torch.testing.assert_close(value, learner.state_dict()[name], atol=1e-6, rtol=1e-5, msg=name)


def test_imitation_alone_moves_the_learner_towards_the_guider() -> None:
    """CTDS's learner (lambda = 0): repeated updates on one batch shrink KL(mu || pi)."""
    module = _magpo(delta=math.inf, lam=0.0, epochs=4, minibatches=2)
    batch = _rollout(module)
    module.compute_advantages(batch)
    module.guider.lr = 0.0  # hold the guider still: only the learner's imitation moves
    steps = [GradientStep(opt) for opt in module.configure_optimizers()]
    first = module.update_roles(batch.clone(), steps)["learner/imitation_kl"]
    for _ in range(5):
        last = module.update_roles(batch.clone(), steps)["learner/imitation_kl"]
    assert float(last) < 0.5 * float(first)


def test_evaluation_deploys_the_learner_alone_and_the_guider_centrally() -> None:
    module = _magpo()
    assert module.evaluation_modes() == {"eval": None, "eval/guider": "guider"}
    td = make_env(ENV, num_envs=4, seed=0).reset()
    only_observations = TensorDict({OBSERVATION: td.get(OBSERVATION)}, batch_size=[4])
    with torch.no_grad():
        for p in module.guider.parameters():
            p.fill_(float("nan"))  # the deployed learner must not touch the guider
    out = module.deployment_policy()(only_observations)
    assert out.get(ACTION).shape == (4, 3) and bool(((out.get(ACTION) >= 0) & (out.get(ACTION) < 10)).all())
    mat = MARLModule(guider=_guider(delta=math.inf))
    mat.build(make_env(ENV, num_envs=1, seed=0).info)
    assert mat.evaluation_modes() == {"eval": None}
    assert mat.deployment_policy().in_keys == mat.guider.network.in_keys


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: MARLModule(critic=Critic(CentralValue())), "model.learner"),
        (lambda: MARLModule(learner=Learner(MLPActor(), ClipPPO(), Simultaneous())), "model.critic"),
        (lambda: MARLModule(learner=_learner(), critic=Critic(CentralValue())), "GuidedImitation"),
        (lambda: MARLModule(learner=Learner(MLPActor(), ClipPPO(), Simultaneous()), guider=_guider()), "GuidedImitation"),
        (lambda: MARLModule(guider=_guider(delta=1.3)), "delta"),
        (lambda: MARLModule(learner=Learner(MLPActor(share_params=False), GuidedImitation(), Sequential()), guider=_guider()), "Simultaneous"),
        (lambda: MARLModule(learner=_learner(), guider=_guider(), conductor=_conductor()), "InstructionCritic"),
        (lambda: MARLModule(critic=Critic(InstructionCritic()), guider=_guider(delta=math.inf), conductor=_conductor()), "model.learner"),
        (lambda: MARLModule(learner=Learner(MLPActor(), GuidedImitation(epochs=4, minibatches=2), Simultaneous()), guider=_guider()), "remove"),
        (lambda: MARLModule(learner=_learner(), guider=_trust_region_guider(), critic=Critic(CentralValue())), "epochs and minibatches"),
        (lambda: MARLModule(learner=_learner(epochs=4), guider=_trust_region_guider()), "add a model.critic"),
    ],
)
def test_impossible_role_combinations_are_config_errors(build, match: str) -> None:
    """Raised when the module is made, before any env or trainer exists."""
    with pytest.raises(ConfigError, match=match):
        build()


def _logged(run_dir) -> set[str]:
    with open(run_dir / "metrics.csv") as f:
        return {k for row in csv.DictReader(f) for k, v in row.items() if v}


def test_magpo_recipe_logs_its_diagnostics_and_both_evaluations(run_cli, tmp_path, capsys: pytest.CaptureFixture) -> None:
    few = ["--model.guider.init_args.constraint.init_args.minibatches", "2"]  # a Sable guider's minibatches are env rollouts
    run_cli("fit", "magpo/coordsum_3x10", "--data.total_frames", "64", *few)  # the magpo protocol evaluates each of 2 iterations
    (run_dir,) = run_dirs(tmp_path)
    expected = {
        "guider/mask_frac",
        "guider/kl_guider_learner",
        "guider/kl_learner_guider",
        "guider/clip_frac",
        "guider/inner_clip_frac",
        "guider/value_loss",
        "learner/clip_frac",
        "learner/imitation_kl",
        "eval/return",
        "eval/guider/return",
    }
    assert expected <= _logged(run_dir)
    result = final_eval(run_dir)
    assert math.isfinite(result["eval/return"]) and math.isfinite(result["eval/guider/return"])
    (ckpt,) = run_dir.rglob("last.ckpt")
    capsys.readouterr()
    run_cli("validate", "magpo/coordsum_3x10", "--ckpt_path", str(ckpt), *few)
    printed = capsys.readouterr().out
    assert "eval/return" in printed and "eval/guider/return" in printed


def test_mat_recipe_trains_the_guider_alone(run_cli, tmp_path) -> None:
    run_cli("fit", "mat/coordsum_3x10", "--data.total_frames", "64")
    (run_dir,) = run_dirs(tmp_path)
    logged = _logged(run_dir)
    assert {"guider/policy_loss", "guider/value_loss", "eval/return"} <= logged
    assert not any(k.startswith("learner/") or k.startswith("eval/guider") for k in logged)
    assert math.isfinite(final_eval(run_dir)["eval/return"])


def test_a_trust_region_guider_steps_alone_then_sequential_learners_imitate_the_updated_guider() -> None:
    """Hybrid 2 (recipes/magpo_trust_region/): GuidedTrustRegion moves the guider's policy (not its value head), then each
    learner agent imitates the guider *after* that step, by the Sequential schedule; a reference replays both by hand."""
    torch.manual_seed(0)
    learner = Learner(MLPActor(share_params=False), GuidedImitation(lam=1.0, eps=0.2, epochs=2, minibatches=2), Sequential(), lr=1e-3)
    module = MARLModule(learner=learner, guider=_trust_region_guider(), critic=Critic(CentralValue()))
    module.build(make_env(ENV, num_envs=1, seed=0).info)
    batch = _rollout(module)
    module.compute_advantages(batch)
    reference, guider_before = copy.deepcopy(module), copy.deepcopy(module.guider)
    torch.manual_seed(5)
    metrics = module.update_roles(batch.clone(), [GradientStep(opt) for opt in module.configure_optimizers()])
    assert metrics["guider/accepted"] == 1.0 and "learner/kl_agent2" in metrics and "learner/imitation_kl" in metrics

    steps = dict(zip(reference.optimizer_roles(), [GradientStep(opt) for opt in reference.configure_optimizers()], strict=True))
    flat = batch.reshape(-1)
    torch.manual_seed(5)
    reference.guider.update(flat, steps["guider"], reference.learner)
    with torch.no_grad():
        updated_guider = reference.guider.network(flat)[0]
    reference.learner.update(flat, steps["learner"], Upstream(anchor=updated_guider))
    for role in ("guider", "learner"):
        for name, value in getattr(module, role).state_dict().items():
            torch.testing.assert_close(value, getattr(reference, role).state_dict()[name], atol=1e-6, rtol=1e-5, msg=f"{role}.{name}")
    moved = {name for name, value in module.guider.state_dict().items() if not torch.equal(value, guider_before.state_dict()[name])}
    assert moved and not any(name.startswith("network.value_head") for name in moved)  # the critic role gives the values


def test_a_checkpoint_whose_swiglu_trained_is_refused_by_the_papers_zero_swiglu(run_cli, tmp_path, capsys: pytest.CaptureFixture) -> None:
    """The paper's Sable never computes its zero SwiGLU (``hcmarl.nn.layers.ZeroSwiGLU``), so a checkpoint whose SwiGLU
    trained (``feed_forward_init: default``) must not load into it: exit 2, one message naming the setting."""
    few = ["--model.guider.init_args.constraint.init_args.minibatches", "2", "--data.protocol", "hcmarl"]  # 2 evaluation episodes
    trained = ["--model.guider.init_args.network.init_args.feed_forward_init", "default"]
    run_cli("fit", "sable/coordsum_3x10", "--data.total_frames", "32", *few, *trained)
    (ckpt,) = run_dirs(tmp_path)[0].rglob("last.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("validate", "sable/coordsum_3x10", "--ckpt_path", str(ckpt), *few)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "Traceback" not in captured.err + captured.out
    assert "holds a trained SwiGLU" in captured.err and "feed_forward_init: default" in captured.err
    run_cli("validate", "sable/coordsum_3x10", "--ckpt_path", str(ckpt), *few, *trained)  # with its own setting it loads
