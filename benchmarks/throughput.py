"""Throughput against the hardware floor, on BenchMARL 1.5.2's MAPPO defaults for ``vmas/balance``.

Measures, in one process and one run (so the ratios are comparable on a noisy machine):
1. ``hcmarl bench``: collection, update and end-to-end frames/s with 6000 frames per batch
   from 10 envs, 45 passes over the batch x 15 minibatches of 400 (BenchMARL's
   ``on_policy_n_minibatch_iters: 45``: 675 actor and critic steps per iteration),
   MLP 256x256 tanh, 4 agents, 100 steps per episode;
2. the floor of the update: the same number of bare PyTorch forward/backward/Adam steps on
   the same actor and critic networks and minibatch sizes, with no hcmarl code;
3. the floor of collection: the VMAS simulator stepped alone for the same frames with random
   actions, so collection time outside the simulator = (1) collection - (3).

    python benchmarks/throughput.py --iterations 3 --out docs/benchmarks/throughput.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hcmarl.modules.cli import build_cli

ROOT = Path(__file__).resolve().parent.parent
N_AGENTS, NUM_ENVS, STEPS, EPOCHS, MINIBATCHES, HIDDEN = 4, 10, 600, 45, 15, [256, 256]
FRAMES = NUM_ENVS * STEPS


def benchmarl_like_overrides() -> list[str]:
    return [
        "--data.env",
        "vmas/balance",
        "--data.env_kwargs",
        "{n_agents: 4, max_steps: 100}",
        "--data.num_envs",
        str(NUM_ENVS),
        "--data.rollout_steps",
        str(STEPS),
        "--model.learner.init_args.actor.init_args.hidden_sizes",
        str(HIDDEN),
        "--model.learner.init_args.actor.init_args.agent_id",
        "false",
        "--model.learner.init_args.constraint.init_args.epochs",
        str(EPOCHS),
        "--model.learner.init_args.constraint.init_args.minibatches",
        str(MINIBATCHES),
        "--model.critic.init_args.network.init_args.hidden_sizes",
        str(HIDDEN),
        "--model.critic.init_args.epochs",
        str(EPOCHS),
        "--model.critic.init_args.minibatches",
        str(MINIBATCHES),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
    ]


def hcmarl_bench(iterations: int) -> dict[str, float]:
    cli = build_cli(
        ["bench", "--config", str(ROOT / "recipes/mappo/vmas_balance.yaml"), "--iterations", str(iterations), *benchmarl_like_overrides()]
    )
    return cli.trainer.bench_result


def bare_update_seconds(obs_dim: int, state_dim: int, act_dim: int) -> float:
    """Same networks, minibatches and optimiser steps as the update, in plain PyTorch."""

    def mlp(i: int, o: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(
            torch.nn.Linear(i, HIDDEN[0]), torch.nn.Tanh(), torch.nn.Linear(HIDDEN[0], HIDDEN[1]), torch.nn.Tanh(), torch.nn.Linear(HIDDEN[1], o)
        )

    actor, critic = mlp(obs_dim, act_dim), mlp(state_dim, 1)
    log_std = torch.zeros(act_dim, requires_grad=True)
    actor_opt = torch.optim.Adam([*actor.parameters(), log_std], lr=5e-5)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=5e-5)
    mb = FRAMES // MINIBATCHES
    obs, state = torch.randn(FRAMES, N_AGENTS, obs_dim), torch.randn(FRAMES, state_dim)
    action, adv, old_lp, target = (
        torch.randn(FRAMES, N_AGENTS, act_dim),
        torch.randn(FRAMES, N_AGENTS),
        torch.randn(FRAMES, N_AGENTS),
        torch.randn(FRAMES, 1),
    )
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for idx in torch.randperm(FRAMES).split(mb):
            dist = torch.distributions.Normal(actor(obs[idx]), log_std.exp())
            ratio = (dist.log_prob(action[idx]).sum(-1) - old_lp[idx]).exp()
            loss = -torch.min(ratio * adv[idx], ratio.clamp(0.8, 1.2) * adv[idx]).mean()
            actor_opt.zero_grad()
            loss.backward()
            actor_opt.step()
    for _ in range(EPOCHS):
        for idx in torch.randperm(FRAMES).split(mb):
            loss = torch.nn.functional.huber_loss(critic(state[idx]), target[idx], delta=10.0)
            critic_opt.zero_grad()
            loss.backward()
            critic_opt.step()
    return time.perf_counter() - start


def simulator_seconds() -> float:
    """The VMAS simulator alone, stepping the same number of frames with random actions."""
    import vmas

    env = vmas.make_env("balance", num_envs=NUM_ENVS, n_agents=N_AGENTS, max_steps=100, continuous_actions=True, seed=0)
    env.reset()
    actions = [torch.rand(NUM_ENVS, 2) * 2 - 1 for _ in range(N_AGENTS)]
    start = time.perf_counter()
    for _ in range(STEPS):
        _, _, dones, _ = env.step(actions)
        if dones.all():
            env.reset()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    args = parser.parse_args()
    bench = hcmarl_bench(args.iterations)
    from hcmarl.envs import make_env

    info = make_env("vmas/balance", n_agents=N_AGENTS).info
    floor_update = min(bare_update_seconds(info.obs_dim, info.state_dim, info.action_dim) for _ in range(args.iterations))
    simulator = min(simulator_seconds() for _ in range(args.iterations))
    rows = [
        ("frames per iteration", f"{FRAMES}"),
        ("hcmarl collection s / iteration", f"{bench['collect_s']:.2f}"),
        ("VMAS simulator alone s / iteration", f"{simulator:.2f}"),
        ("collection outside the simulator / simulator", f"{(bench['collect_s'] - simulator) / simulator:.2f} (target <= 0.5)"),
        ("hcmarl update s / iteration", f"{bench['update_s']:.2f}"),
        ("bare PyTorch update floor s / iteration", f"{floor_update:.2f}"),
        ("update / floor", f"{bench['update_s'] / floor_update:.2f} (target <= 1.2)"),
        ("hcmarl end-to-end s / iteration", f"{bench['iteration_s']:.2f}"),
        ("hcmarl end-to-end frames/s", f"{bench['end_to_end_fps']:.0f}"),
        ("peak resident memory MiB", f"{bench['peak_rss_mib']:.0f}"),
    ]
    table = "\n".join(["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])
    print(table)
    if args.out:
        args.out.write_text(
            "# Throughput on BenchMARL's MAPPO defaults (vmas/balance)\n\n"
            f"`python benchmarks/throughput.py --iterations {args.iterations}`, CPU, torch threads {torch.get_num_threads()}.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
