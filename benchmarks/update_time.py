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
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from costing import build

from hcmarl.optim import GradientStep


def main(argv: list[str] | None = None) -> float:
    """Print and return the median update time; arguments other than ``--updates`` are the recipe's CLI overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="family/recipe, e.g. hcpo/smax_3s5z; any further --key value is a CLI override")
    parser.add_argument("--updates", type=int, default=3, help="measured updates (after one warm-up)")
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
        module.compute_advantages(rollout)
        module.update_roles(rollout, [GradientStep(optimizer) for optimizer in optimizers])
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[1:])
    print(f"{args.recipe} {' '.join(overrides)}: median update {median:.4f} s over {args.updates}")
    return median


if __name__ == "__main__":
    main()
