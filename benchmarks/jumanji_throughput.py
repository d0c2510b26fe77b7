"""Throughput of the jumanji families: jumanji's own jitted, vmapped step against the same envs through hcmarl's env.

For one task per family (``rware/tiny-2ag``, ``lbf/2s-8x8-2p-2f-coop``, ``connector/con-5x5x3a`` by default), three
loops step ``num_envs`` envs with uniformly random available actions:

1. raw: one ``jax.jit`` function per step that samples the actions from the action mask and runs jumanji's
   ``VmapAutoResetWrapper(env).step`` (jumanji's vmapped step with its own auto-reset), no torch at all; it returns
   the whole timestep, so that XLA computes the observations rather than dropping them as unused;
2. jit: the same with hcmarl's jitted step (``Batched.step``: the layout's rows, packed states, only ended
   envs restarted) in place of jumanji's, still without torch, returning the whole rows;
3. hcmarl env: ``JumanjiEnv.step_and_maybe_reset`` (what TorchRL's collector calls on the env ``make_env``
   returns), the actions drawn in torch among those ``("agents", "action_mask")`` allows; only the env call is timed.

4. raw, host each step: jumanji's jitted step as in 1, but after every step the observation comes to the host and
   the actions are drawn there (NumPy), as they must be for any policy outside jax; the next step waits for them.

hcmarl env / raw is the issue's measure (target 85%). Loops 1 and 2 queue each jitted call behind the last (a
policy in jax could), so they hide the dispatch and the hand-over that loops 3 and 4 pay at every step; hcmarl env /
host is hcmarl's own cost beyond that hand-over. Rates are frames/s (env steps: ``num_envs`` per step),
compilation excluded, the loops interleaved in short blocks on a shared machine (``smax_rate.py``'s method).

    OMP_NUM_THREADS=1 python benchmarks/jumanji_throughput.py --num-envs 64 512
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from smax_rate import env_stepper, interleaved_rates, pipelined_run

from hcmarl.envs import make_env

ENVS = ["rware/tiny-2ag", "lbf/2s-8x8-2p-2f-coop", "connector/con-5x5x3a"]


def raw_stepper(env_name: str, num_envs: int) -> Callable[[int], float]:
    """``run(steps)``: jumanji's ``VmapAutoResetWrapper`` step, random available actions sampled in jax; returns the seconds taken."""
    import jax
    import jax.numpy as jnp
    from jumanji.wrappers import VmapAutoResetWrapper

    env = VmapAutoResetWrapper(make_env(env_name, num_envs=1, seed=0).task.env)

    @jax.jit
    def step(key, state, mask):
        key, sub = jax.random.split(key)
        actions = jax.random.categorical(sub, jnp.log(mask.astype(jnp.float32))).astype(jnp.int32)
        state, timestep = env.step(state, actions)
        return key, state, timestep.observation.action_mask, timestep

    key = jax.random.PRNGKey(0)
    state, timestep = jax.jit(env.reset)(jax.random.split(key, num_envs))
    return pipelined_run(lambda *carry: step(*carry)[:3], (key, state, timestep.observation.action_mask))  # the timestep computed, not kept


def host_stepper(env_name: str, num_envs: int) -> Callable[[int], float]:
    """``run(steps)``: jumanji's ``VmapAutoResetWrapper`` step (jitted), the observation copied to the host after each
    step and the actions drawn there among the available ones; returns the seconds taken."""
    import time

    import jax
    import numpy as np
    from jumanji.wrappers import VmapAutoResetWrapper

    env = VmapAutoResetWrapper(make_env(env_name, num_envs=1, seed=0).task.env)
    step, rng = jax.jit(env.step), np.random.default_rng(0)
    carry = list(jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), num_envs)))

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            state, timestep = carry
            mask = jax.device_get(timestep.observation).action_mask  # the whole observation, as a policy reads it
            actions = np.where(mask, rng.random(mask.shape), -1.0).argmax(-1).astype(np.int32)
            carry[:] = step(state, actions)
        jax.block_until_ready(carry)
        return time.perf_counter() - start

    return run


def jitted_stepper(env_name: str, num_envs: int) -> Callable[[int], float]:
    """``run(steps)``: hcmarl's jitted step alone, random available actions sampled in jax; returns the seconds taken."""
    import jax
    import jax.numpy as jnp

    env = make_env(env_name, num_envs=num_envs, seed=1)
    batched, envs, task = env._fns, env._envs, env.task
    n_masks = task.n_agents * task.n_actions
    shape = (num_envs, task.n_agents, task.n_actions)

    @jax.jit
    def step(key, packed, masks, act_key):
        act_key, sub = jax.random.split(act_key)
        actions = jax.random.categorical(sub, jnp.log(masks)).astype(jnp.int32)
        key, packed, rows = batched.step(key, packed, actions)
        return key, packed, rows[:, -n_masks:].reshape(shape), act_key, rows  # the masks of the next row, and the rows

    masks = envs.rows[:, -n_masks:].reshape(shape).numpy()
    return pipelined_run(
        lambda *carry: step(*carry)[:4], (envs.key, envs.packed, jnp.asarray(masks), jax.random.PRNGKey(1))
    )  # rows computed, not kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=25, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=40, help="timed blocks per loop, interleaved")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(
        "| env | num_envs | raw jumanji | raw, host each step | hcmarl jit | hcmarl env | hcmarl env / raw | hcmarl env / host | hcmarl env / jit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for env_name in args.envs:
        for num_envs in args.num_envs:
            runs = {
                "raw": raw_stepper(env_name, num_envs),
                "host": host_stepper(env_name, num_envs),
                "jit": jitted_stepper(env_name, num_envs),
                "env": env_stepper(make_env(env_name, num_envs=num_envs, seed=0)),
            }
            rates = interleaved_rates(runs, num_envs, args.steps, args.rounds)
            raw, host, jit, env = (rates[name] for name in ("raw", "host", "jit", "env"))
            print(
                f"| {env_name} | {num_envs} | {raw:,.0f} | {host:,.0f} | {jit:,.0f} | {env:,.0f} | {env / raw:.0%} | {env / host:.0%} | {env / jit:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
