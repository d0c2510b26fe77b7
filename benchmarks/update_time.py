"""Median time of one iteration's update (advantages + every stage) on one fixed rollout, for A/B runs of two checkouts.

One process per measurement, one torch thread; the rollout comes from the recipe's behaviour policy with seed 0
and each update starts from the same parameters and the same seed, so two checkouts time the same work. To
compare the working tree with an older commit, alternate the two in rounds (the machine's load then falls on
both alike), each running its own checkout's copy of this file (copy it into an older checkout's ``benchmarks/``,
next to its ``costing.py``), the older one from a worktree put first on ``PYTHONPATH``::

    git worktree add /tmp/before <commit>; for d in modules datamodules recipes; do ln -sfn ../$d /tmp/before/hcmarl/$d; done
    for round in 1 2 3; do
      (cd /tmp && PYTHONPATH=/tmp/before python /tmp/before/benchmarks/update_time.py hcpo/smax_3s5z)
      (cd /tmp && python ~/hcmarl/benchmarks/update_time.py hcpo/smax_3s5z)
    done

(``docs/benchmarks.md``, "The iteration as stages", was measured this way.)

``--flops`` also counts the update's floating-point operations (matrix products, as ``torch.utils.flop_counter``
counts them: forward and backward) and prints the update's arithmetic floor: that count at this core's rate for a
large matrix product, measured in the same process. The ratio of the median update to that floor is how far the
update is from being bound by arithmetic alone (``docs/benchmarks.md``, "Against BenchMARL and against the hardware
floor").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from costing import build
from tensordict import TensorDictBase
from torch.utils.flop_counter import FlopCounterMode

from hcmarl.modules.marl import MARLModule
from hcmarl.optim import GradientStep


def one_update(module: MARLModule, rollout: TensorDictBase, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """One iteration's update on ``rollout`` (which it writes advantages into: pass a copy)."""
    module.compute_advantages(rollout)
    module.update_roles(rollout, [GradientStep(optimizer) for optimizer in optimizers])


def count_flops(module: MARLModule, batch: TensorDictBase, optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """The floating-point operations of the matrix products in one update on a copy of ``batch`` (forward and backward),
    by ``FlopCounterMode``."""
    rollout = batch.clone()
    torch.manual_seed(1)
    with FlopCounterMode(display=False) as counter:
        one_update(module, rollout, optimizers)
    return counter.get_total_flops()


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """This core's floating-point operations per second for one ``size`` x ``size`` matrix product (2 size^3 operations),
    the best of ``repeats``: the rate an update's arithmetic could reach at best."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main(argv: list[str] | None = None) -> float:
    """Print and return the median update time; arguments other than ``--updates`` are the recipe's CLI overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="family/recipe, e.g. hcpo/smax_3s5z; any further --key value is a CLI override")
    parser.add_argument("--updates", type=int, default=3, help="measured updates (after one warm-up)")
    parser.add_argument("--flops", action="store_true", help="also count the update's operations and print its arithmetic floor")
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module, (env, steps) = build(args.recipe, overrides)
    batch = env.rollout(steps, module.behaviour_policy(), break_when_any_done=False)
    optimizers = module.configure_optimizers()
    seconds = []
    for _ in range(args.updates + 1):
        rollout = batch.clone()
        torch.manual_seed(1)
        start = time.perf_counter()
        one_update(module, rollout, optimizers)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[1:])
    print(f"{args.recipe} {' '.join(overrides)}: median update {median:.4f} s over {args.updates}")
    if args.flops:
        flops, rate = count_flops(module, batch, optimizers), matmul_rate()
        floor = flops / rate
        print(
            f"flops: {flops / 1e9:.4g} GFLOP per update of {batch.numel():,} frames, {flops / median / 1e9:.1f} GFLOP/s achieved; "
            f"at this core's large-product rate ({rate / 1e9:.1f} GFLOP/s) the arithmetic alone takes {floor:.3f} s "
            f"({batch.numel() / floor:,.0f} frames/s), the median update {median / floor:.1f}x that"
        )
    return median


if __name__ == "__main__":
    main()
