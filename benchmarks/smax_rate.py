"""SMAX step rate: JaxMARL's jitted, vmapped step alone against the same battles through hcmarl's env.

Four loops step ``num_envs`` battles of one map with uniformly random available actions:

1. raw: one ``jax.jit`` function per step that samples the actions from the available-action
   mask, runs ``jax.vmap(env.step)`` (JaxMARL's step with its auto-reset) and computes the next
   masks, with no torch at all;
2. jit: the same with hcmarl's own jitted step (``Batched.step``: packed states, one output
   row, only ended battles restarted) in place of JaxMARL's, still with no torch;
3. hcmarl env: ``SmaxEnv.step_and_maybe_reset`` (what TorchRL's collector calls on the env
   ``make_env`` returns), the actions drawn in torch uniformly among those
   ``("agents", "action_mask")`` allows. Only the env call is timed: drawing the actions is the
   policy's work, which the other loops do inside their jit;
4. wrapped env: the same env in TorchRL's ``TransformedEnv`` with a ``RewardSum``, as training
   stepped it before the datamodule summed episode returns itself (``RunningReturns``); a
   recurrent actor's training env is still wrapped (for its state primer). Its reset after a
   step is TorchRL's generic one.

hcmarl env / raw is the issue's measure; hcmarl env / jit is what the torch side (DLPack
hand-over, TensorDicts, TorchRL's step and reset) costs on top of hcmarl's own jitted step.

Rates are frames/s; frames are battle steps (``num_envs`` per step). Compilation is excluded
from all. The loops run in many short interleaved blocks, and each rate is its frames over its
summed time, so that the load of a shared machine (whose noise moves a single block's rate by a
third) falls on all alike.

    OMP_NUM_THREADS=1 python benchmarks/smax_rate.py --map 3s5z --num-envs 64 512 --steps 25 --rounds 40
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torchrl.envs import EnvBase, RewardSum, TransformedEnv

from hcmarl.envs import make_env
from hcmarl.envs.base import ACTION, ACTION_MASK, REWARD


def pipelined_run(step: Callable, carry: tuple) -> Callable[[int], float]:
    """``run(steps)``: ``carry = step(*carry)`` that many times, jax queueing each call behind the last; returns the seconds taken."""
    import jax

    state = [carry]

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            state[0] = step(*state[0])
        jax.block_until_ready(state[0])
        return time.perf_counter() - start

    return run


def raw_stepper(map_name: str, num_envs: int) -> Callable[[int], float]:
    """``run(steps)``: JaxMARL's own vmapped step, random available actions sampled in jax; returns the seconds taken."""
    import jax
    import jax.numpy as jnp

    from hcmarl.envs.smax import _smax_env

    env, _ = _smax_env(map_name, {})
    allies = env.agents

    def masks(states):
        avail = jax.vmap(env.get_avail_actions)(states)
        return jnp.stack([avail[a] for a in allies], axis=1)

    @jax.jit
    def step(key, states, avail):
        key, act_key, step_key = jax.random.split(key, 3)
        actions = jax.random.categorical(act_key, jnp.log(avail.astype(jnp.float32)))
        actions = {a: actions[:, i] for i, a in enumerate(allies)}
        obs, states, rewards, dones, _ = jax.vmap(env.step)(jax.random.split(step_key, num_envs), states, actions)
        return key, states, masks(states), obs, rewards, dones

    key = jax.random.PRNGKey(0)
    _, states = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return pipelined_run(lambda *carry: step(*carry)[:3], (key, states, masks(states)))  # obs, rewards, dones computed, not kept


def jitted_stepper(map_name: str, num_envs: int) -> Callable[[int], float]:
    """``run(steps)``: hcmarl's jitted step alone, random available actions sampled in jax; returns the seconds taken."""
    import jax
    import jax.numpy as jnp

    env = make_env(f"smax/{map_name}", num_envs=num_envs, seed=1)
    batched, battles = env._fns, env._envs
    n_masks = env.n_agents * env.n_actions

    @jax.jit
    def step(key, packed, masks, act_key):
        act_key, sub = jax.random.split(act_key)
        actions = jax.random.categorical(sub, jnp.log(masks)).astype(jnp.int32)
        key, packed, rows = batched.step(key, packed, actions)
        return key, packed, rows[:, -n_masks:].reshape(masks.shape), act_key  # the masks of the next row

    masks = battles.rows[:, -n_masks:].reshape(num_envs, env.n_agents, env.n_actions).numpy()
    return pipelined_run(step, (battles.key, battles.packed, jnp.asarray(masks), jax.random.PRNGKey(1)))


def env_stepper(env: EnvBase) -> Callable[[int], float]:
    """``run(steps)``: ``env`` stepped as TorchRL's collector steps it, random available actions; returns the env's seconds."""
    td = [env.reset()]

    def run(steps: int) -> float:
        seconds = 0.0
        for _ in range(steps):
            mask = td[0][ACTION_MASK]
            td[0][ACTION] = torch.rand(mask.shape).masked_fill_(~mask, -1.0).argmax(-1)  # uniform over available
            start = time.perf_counter()
            td[0] = env.step_and_maybe_reset(td[0])[1]
            seconds += time.perf_counter() - start
        return seconds

    return run


def interleaved_rates(runs: dict[str, Callable[[int], float]], num_envs: int, steps: int, rounds: int) -> dict[str, float]:
    """Frames/s of each ``run`` over ``rounds`` blocks of ``steps``, the runs' blocks interleaved (a noisy machine)."""
    for run in runs.values():
        run(2)  # compilation and first-call costs
    seconds = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            seconds[name] += run(steps)
    return {name: num_envs * steps * rounds / total for name, total in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", default="3s5z")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=25, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=40, help="timed blocks per loop, interleaved")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("| map | num_envs | raw jax | hcmarl jit | hcmarl env | wrapped env | hcmarl env / raw | wrapped env / raw | hcmarl env / jit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for num_envs in args.num_envs:
        runs = {
            "raw": raw_stepper(args.map, num_envs),
            "jit": jitted_stepper(args.map, num_envs),
            "env": env_stepper(make_env(f"smax/{args.map}", num_envs=num_envs, seed=0)),
            "wrapped": env_stepper(TransformedEnv(make_env(f"smax/{args.map}", num_envs=num_envs, seed=2), RewardSum(in_keys=[REWARD]))),
        }
        rates = interleaved_rates(runs, num_envs, args.steps, args.rounds)
        raw, jit, env, wrapped = (rates[name] for name in ("raw", "jit", "env", "wrapped"))
        print(
            f"| {args.map} | {num_envs} | {raw:,.0f} | {jit:,.0f} | {env:,.0f} | {wrapped:,.0f} "
            f"| {env / raw:.0%} | {wrapped / raw:.0%} | {env / jit:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
