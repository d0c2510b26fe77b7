"""HCPO as a whole (ALGORITHMS.md section 3): the iteration, K = 1 equals HATRPO, local conductors, execution modes."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from conftest import final_eval, run_dirs
from tensordict import TensorDict

from hcmarl.constraints import ClipPPO, Distill, soft_target_cross_entropy
from hcmarl.envs import make_env
from hcmarl.envs.base import EnvInfo
from hcmarl.errors import ConfigError
from hcmarl.keys import (
    ACTION,
    ACTION_MASK,
    AGENT_INSTRUCTION,
    CONDUCTOR_LOG_PROB,
    CONDUCTOR_PROBS,
    INSTRUCTION,
    STATE,
)
from hcmarl.modules import Conductor, Critic, Learner, MARLModule
from hcmarl.nn import AgentValue, CentralValue, ConductorNetwork, InstructionCritic, LocalConductors, MLPActor
from hcmarl.optim import GradientStep
from hcmarl.roles.conductor import EXECUTION_MODES, shared_seed_instruction
from hcmarl.schedules import Sequential, Simultaneous
from hcmarl.stages import IterationContext
from hcmarl.trust_region import TrustRegion

INFO = EnvInfo(name="toy", n_agents=3, obs_dim=4, state_dim=12, action_kind="categorical", action_dim=5, max_steps=10)


def _conductor(k: int, **kwargs) -> Conductor:
    return Conductor(ConductorNetwork(), LocalConductors(), TrustRegion(max_kl=0.01), Distill(epochs=2, minibatches=2), n_instructions=k, **kwargs)


def _module(k: int | None, info: EnvInfo) -> MARLModule:
    """HATRPO (``k`` None) or HCPO with ``k`` instructions, built for ``info``."""
    learner = Learner(MLPActor(share_params=False), TrustRegion(max_kl=0.01), Sequential("random"))
    network = CentralValue() if k is None else InstructionCritic()
    module = MARLModule(learner, Critic(network, epochs=2, minibatches=2), None if k is None else _conductor(k))
    module.build(info)
    return module


def _rollout(module: MARLModule, steps: int = 24) -> TensorDict:
    env = make_env("coordsum/3x10", num_envs=8, seed=3)
    torch.manual_seed(3)
    return env.rollout(steps, module.behaviour_policy(), break_when_any_done=False)


def _update(module: MARLModule, batch: TensorDict, seed: int) -> dict[str, torch.Tensor]:
    return _update_in_context(module, batch, seed)[0]


def _update_in_context(module: MARLModule, batch: TensorDict, seed: int) -> tuple[dict[str, torch.Tensor], IterationContext]:
    """One iteration's update, and the context its stages passed values through (the conductor's factor and KL weights)."""
    module.compute_advantages(batch)
    torch.manual_seed(seed)
    context = IterationContext(batch, dict(zip(module.optimizer_roles(), (GradientStep(opt) for opt in module.configure_optimizers()), strict=True)))
    return module.plan.run_stages(context), context


def test_hcpo_with_one_instruction_equals_hatrpo() -> None:
    env_info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    hcpo, hatrpo = _module(1, env_info), _module(None, env_info)
    hatrpo.learner.load_state_dict(hcpo.learner.state_dict())
    hatrpo.critic.network.load_state_dict(hcpo.critic.network.state_dict())  # one head: the same MLP as V(s)
    batch = _rollout(hcpo)
    assert bool((batch.get(CONDUCTOR_PROBS) == 1).all()) and bool((batch.get(INSTRUCTION) == 0).all())
    initial = copy.deepcopy(hcpo.learner.state_dict())
    hcpo_metrics, hatrpo_metrics = _update(hcpo, batch.clone(), seed=11), _update(hatrpo, batch.clone(), seed=11)
    assert hcpo_metrics["learner/accepted"] > 0 and hatrpo_metrics["learner/accepted"] > 0
    moved = False
    for (name, value), reference in zip(hcpo.learner.state_dict().items(), hatrpo.learner.state_dict().values(), strict=True):
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-4, msg=f"learner {name}")
        moved |= not torch.equal(value, initial[name])
    assert moved, "the update changed nothing, so the comparison proves nothing"
    for (name, value), reference in zip(hcpo.critic.network.state_dict().items(), hatrpo.critic.network.state_dict().values(), strict=True):
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-4, msg=f"critic {name}")


def test_iteration_moves_the_conductor_within_delta1_and_hands_its_ratio_to_the_agents() -> None:
    env_info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    module = _module(5, env_info)
    batch = _rollout(module)
    before = copy.deepcopy(module.conductor.network)
    metrics, context = _update_in_context(module, batch, seed=2)
    assert metrics["conductor/accepted"] == 1.0 and 0 < metrics["conductor/kl"] <= 0.01
    with torch.no_grad():
        flat = batch.reshape(-1)
        new, old = module.conductor.network(flat), before(flat)
        torch.testing.assert_close(old.log_prob(flat[INSTRUCTION]), flat[CONDUCTOR_LOG_PROB], atol=1e-5, rtol=0)
        true_kl = torch.distributions.kl_divergence(old, new).mean()
        torch.testing.assert_close(true_kl, metrics["conductor/kl"], atol=1e-5, rtol=1e-4)
        expected_factor = (new.log_prob(flat[INSTRUCTION]) - flat[CONDUCTOR_LOG_PROB]).exp()
    torch.testing.assert_close(context.factor.reshape(-1), expected_factor)
    assert not torch.allclose(expected_factor, torch.ones_like(expected_factor))
    usage = torch.stack([metrics[f"conductor/usage_{k}"] for k in range(5)])
    torch.testing.assert_close(usage.sum(), torch.tensor(1.0))
    assert 0.0 <= metrics["local/agreement"] <= 1.0


def test_paper_weighting_uses_new_conductor_probability_and_local_kl_weights() -> None:
    conductor = _conductor(4, paper_weighting=True)
    conductor.build(INFO)
    td = _toy_td(64)
    conductor.behave(td)
    factor, kl_weight = conductor.agent_weights(td, conductor.central(td))
    with torch.no_grad():
        torch.testing.assert_close(factor.squeeze(-1), conductor.network(td).probs.gather(-1, td[INSTRUCTION][:, None]).squeeze(-1))
        local = conductor.local(td).probs
    for agent in range(3):
        torch.testing.assert_close(kl_weight[:, agent], local[torch.arange(64), agent, td[INSTRUCTION]])


def test_local_conductors_distil_the_central_one() -> None:
    torch.manual_seed(0)
    info = EnvInfo(name="toy", n_agents=3, obs_dim=6, state_dim=6, action_kind="categorical", action_dim=5, max_steps=10)
    central, local = ConductorNetwork(), LocalConductors(share_params=False)
    central.build(info, 6)
    local.build(info, 6)
    with torch.no_grad():
        central.net[-1].weight.mul_(300.0)  # a peaked central conductor, far from the near-uniform init
    state = torch.randn(512, 6)
    td = TensorDict({STATE: state, "agents": TensorDict({"observation": state[:, None].expand(512, 3, 6)}, batch_size=(512, 3))}, batch_size=(512,))
    with torch.no_grad():
        target = central(td).probs[:, None].expand(512, 3, 6)
    entropy = torch.special.entr(target).sum(-1).mean()

    def gap() -> torch.Tensor:
        with torch.no_grad():
            return soft_target_cross_entropy(target, local(td).logits).mean() - entropy

    initial = gap()
    optimizer = torch.optim.Adam(local.parameters(), lr=3e-3)
    metrics, policy = Distill(epochs=300, minibatches=4).update(lambda idx: local(td[idx]), target, GradientStep(optimizer))
    assert initial > 0.3
    assert gap() < 0.05 * initial, f"cross-entropy gap {float(gap()):.4f} (initially {float(initial):.4f})"
    torch.testing.assert_close(metrics["kl"], gap())
    with torch.no_grad():
        torch.testing.assert_close(policy.logits, local(td).logits)  # the prediction after the last step


def _toy_td(batch: int, with_state: bool = True) -> TensorDict:
    torch.manual_seed(4)
    mask = torch.rand(batch, 3, 5) > 0.4
    mask[..., 0] = True
    agents = TensorDict({"observation": torch.randn(batch, 3, 4), "action_mask": mask}, batch_size=(batch, 3))
    fields = {"agents": agents} | ({STATE: torch.randn(batch, 12)} if with_state else {})
    return TensorDict(fields, batch_size=(batch,))


@pytest.mark.parametrize("mode", [m for m in EXECUTION_MODES if m != "none"])
def test_every_execution_mode_gives_valid_actions_and_instructions(mode: str) -> None:
    module = _module(6, INFO)
    td = _toy_td(256)
    out = module.deployment_policy(mode)(td)
    action, instruction = out.get(ACTION), out.get(AGENT_INSTRUCTION)
    assert action.shape == (256, 3) and instruction.shape == (256, 3)
    assert bool(out.get(ACTION_MASK).gather(-1, action.unsqueeze(-1)).all()), "an unavailable action was taken"
    assert 0 <= int(instruction.min()) and int(instruction.max()) < 6
    if mode in ("central", "random"):
        assert bool((instruction == instruction[:, :1]).all()), "one instruction per env, broadcast"


def test_none_mode_needs_one_instruction_and_gives_instruction_zero() -> None:
    with pytest.raises(ConfigError, match="n_instructions=1"):
        _conductor(4, execution="none")
    module = MARLModule(
        Learner(MLPActor(share_params=False), TrustRegion(), Sequential()), Critic(InstructionCritic()), _conductor(1, execution="none")
    )
    module.build(INFO)
    out = module.deployment_policy()(_toy_td(16, with_state=False))
    assert bool((out.get(AGENT_INSTRUCTION) == 0).all())


def test_local_deployment_reads_no_global_state() -> None:
    module = _module(6, INFO)
    td = _toy_td(32, with_state=False)  # per-agent inputs only: no "state", nothing outside the "agents" group
    assert td.keys() == {"agents"}
    for mode in ("local", "local_argmax", "shared_seed"):
        module.deployment_policy(mode)(td.clone())
    with pytest.raises(KeyError, match="global state"):
        module.deployment_policy("central")(td.clone())  # the central conductor needs the global state


def test_shared_seed_agrees_when_local_distributions_agree() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(500, 1, 6), -1).expand(500, 3, 6)
    uniform = torch.rand(500)
    chosen = shared_seed_instruction(probs, uniform)
    assert bool((chosen == chosen[:, :1]).all())
    cdf = probs[:, 0].cumsum(-1)
    reference = torch.tensor([int((cdf[i] < uniform[i]).sum()) for i in range(500)]).clamp_max(5)
    assert torch.equal(chosen[:, 0], reference)
    independent = torch.distributions.Categorical(probs=probs).sample()
    assert not bool((independent == independent[:, :1]).all())  # plain local sampling disagrees sometimes


def test_paper_weighting_reaches_the_agents_kl() -> None:
    env_info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    module = _module(4, env_info)
    module.conductor.paper_weighting = True
    received: list[torch.Tensor | None] = []
    update = module.learner.constraint.update

    def recording_update(evaluate, data, step):
        received.append(data.kl_weight)
        return update(evaluate, data, step)

    module.learner.constraint.update = recording_update
    batch = _rollout(module, steps=8)
    _, context = _update_in_context(module, batch, seed=0)
    assert context.kl_weight is not None and context.kl_weight.shape == (8, 8, 3)
    flat_weights = context.kl_weight.reshape(-1, 3)
    assert len(received) == 3 and all(w is not None and w.shape == (64, 1) for w in received)
    assert any(torch.equal(w, flat_weights[:, agent : agent + 1]) for w in received for agent in range(3))


def test_conductor_needs_a_central_or_instruction_critic_and_the_other_way_round() -> None:
    learner = Learner(MLPActor(share_params=False), TrustRegion(), Sequential())
    with pytest.raises(ConfigError, match="InstructionCritic"):
        MARLModule(learner, Critic(AgentValue()), _conductor(4)).build(INFO)
    MARLModule(copy.deepcopy(learner), Critic(CentralValue()), _conductor(4)).build(INFO)  # the paper's V(s): a plan
    with pytest.raises(ConfigError, match="no model.conductor"):
        MARLModule(copy.deepcopy(learner), Critic(InstructionCritic()), None).build(INFO)


def test_hcpo_recipe_logs_conductor_diagnostics_and_both_evaluations(run_cli, tmp_path, capsys: pytest.CaptureFixture) -> None:
    run_cli("fit", "hcpo/coordsum_3x10", "--data.total_frames", "64", "--data.eval_every", "1", "--model.conductor.init_args.n_instructions", "4")
    (run_dir,) = run_dirs(tmp_path)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    expected = {"conductor/kl", "conductor/entropy", "local/agreement", "local/kl", "learner/kl_agent0", "eval/return", "eval/central/return"}
    assert expected | {f"conductor/usage_{k}" for k in range(4)} <= logged
    assert "conductor/usage_4" not in logged
    result = final_eval(run_dir)
    assert math.isfinite(result["eval/return"]) and math.isfinite(result["eval/central/return"])
    (ckpt,) = run_dir.rglob("last.ckpt")
    capsys.readouterr()
    run_cli("validate", "hcpo/coordsum_3x10", "--ckpt_path", str(ckpt), "--model.conductor.init_args.n_instructions", "4")
    printed = capsys.readouterr().out
    assert "eval/return" in printed and "eval/central/return" in printed


def test_conductor_diagnostics_are_those_of_the_conductors_after_their_steps() -> None:
    """``conductor/entropy`` is the mean entropy of the updated w_Psi(.|s_t) on the batch (the one forward pass the
    stage also hands the agents and the local conductors), not the rollout's w_old; ``local/agreement`` compares its
    argmax with the local conductors' after their distillation (the prediction the distillation ends with)."""
    module = _module(4, make_env("coordsum/3x10", num_envs=1, seed=0).info)
    batch = _rollout(module)
    with torch.no_grad():
        local_before = module.conductor.local(batch).probs.argmax(dim=-1)
    before = torch.distributions.Categorical(probs=batch.get(CONDUCTOR_PROBS)).entropy().mean()
    metrics, _ = _update_in_context(module, batch, seed=0)
    assert metrics["conductor/accepted"] == 1.0  # w_Psi moved, so its entropy changed
    with torch.no_grad():
        central = module.conductor.network(batch)
        local_after = module.conductor.local(batch).probs.argmax(dim=-1)
    torch.testing.assert_close(metrics["conductor/entropy"], central.entropy().mean())
    assert abs(float(central.entropy().mean() - before)) > 1e-6
    agreement = lambda local: (local == central.probs.argmax(dim=-1).unsqueeze(-1)).float().mean()  # noqa: E731
    torch.testing.assert_close(metrics["local/agreement"], agreement(local_after))
    assert agreement(local_after) != agreement(local_before)  # the distillation moved the local conductors' argmax


def test_random_conductor_ablation_samples_uniformly_and_trains_no_conductor() -> None:
    env_info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    module = _module(5, env_info)
    module.conductor.behaviour = "random"
    batch = _rollout(module)
    torch.testing.assert_close(batch.get(CONDUCTOR_PROBS), torch.full((8, 24, 5), 0.2))
    before = copy.deepcopy(module.conductor.state_dict())
    metrics, context = _update_in_context(module, batch, seed=0)
    assert "conductor/kl" not in metrics and "local/kl" not in metrics
    for name, value in module.conductor.state_dict().items():
        assert torch.equal(value, before[name]), name
    torch.testing.assert_close(context.factor, torch.ones(8, 24, 1))
    with pytest.raises(ConfigError, match="paper_weighting"):
        _conductor(5, behaviour="random", paper_weighting=True)


def test_conductor_over_shared_actors_hands_its_factor_to_a_simultaneous_update() -> None:
    env_info = make_env("coordsum/3x10", num_envs=1, seed=0).info
    recorded: list[torch.Tensor] = []

    class RecordingClip(ClipPPO):
        def update(self, evaluate, data, step):
            recorded.append(data.factor)
            return super().update(evaluate, data, step)

    learner = Learner(MLPActor(share_params=True, agent_id=True), RecordingClip(epochs=1), Simultaneous())
    module = MARLModule(learner, Critic(InstructionCritic(), epochs=1), _conductor(4))
    module.build(env_info)
    batch = _rollout(module, steps=8)
    metrics, context = _update_in_context(module, batch, seed=0)
    assert torch.isfinite(metrics["learner/policy_loss"])
    torch.testing.assert_close(recorded[0], context.factor.reshape(-1, 1))
