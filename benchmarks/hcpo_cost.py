"""Cost of one HCPO iteration's update against one HATRPO update on the same batch, and its growth with K.

For each configuration (HATRPO, then HCPO with each K) the recipe is built with ``build_cli``,
one rollout of the recipe's batch size is collected with that module's behaviour policy, and
the update (``compute_advantages`` + ``update_roles``: conductor, agents, critic, local
conductors) is timed on a copy of that batch. Configurations run in interleaved rounds and
each reports its median, so the load of a shared machine affects all alike. The conductor's
own parts (its trust-region step, the agents' initial factor, the local-conductor
distillation, the diagnostics) are timed separately.

    OMP_NUM_THREADS=1 python benchmarks/hcpo_cost.py --task coordsum_3x10 --ks 2 5 10 20 --rounds 5 \\
        --out docs/benchmarks/hcpo_cost.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from costing import build, timed

from hcmarl.optim import GradientStep

CONDUCTOR_PARTS = ("update", "agent_weights", "update_local", "diagnostics")
PART_NAMES = {
    "learner": "agents' steps",
    "critic": "critic",
    "update": "conductor step",
    "agent_weights": "factor",
    "update_local": "local distillation",
    "diagnostics": "diagnostics",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="coordsum_3x10", help="recipe stem shared by hatrpo/ and hcpo/")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    args = parser.parse_args()
    configs = {"HATRPO": ("hatrpo", [])} | {f"HCPO K={k}": ("hcpo", ["--model.conductor.init_args.n_instructions", str(k)]) for k in args.ks}
    modules, batches = {}, {}
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in configs}
    for name, (algorithm, overrides) in configs.items():
        torch.manual_seed(0)
        module, (env, steps) = build(f"{algorithm}/{args.task}", overrides)
        batches[name] = env.rollout(steps, module.behaviour_policy(), break_when_any_done=False)
        roles = {"learner": module.learner, "critic": module.critic}
        if module.conductor is not None:
            roles |= dict.fromkeys(CONDUCTOR_PARTS, module.conductor)
        for part, role in roles.items():
            method = "update" if part in ("learner", "critic") else part
            parts[name][part] = []
            setattr(role, method, timed(parts[name], part, getattr(role, method)))
        modules[name] = module
    seconds: dict[str, list[float]] = defaultdict(list)
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, module in modules.items():
            for record in parts[name].values():
                record.append(0.0)
            batch = batches[name].clone()
            steps = [GradientStep(opt) for opt in module.configure_optimizers()]
            start = time.perf_counter()
            module.compute_advantages(batch)
            module.update_roles(batch, steps)
            if round_ > 0:
                seconds[name].append(time.perf_counter() - start)
    frames = batches["HATRPO"].numel()
    base = statistics.median(seconds["HATRPO"])
    lines = [
        f"HCPO update cost on `{args.task}` ({frames:,} frames per batch, median of {args.rounds} interleaved rounds, one process):",
        "",
        "| configuration | update (s) | relative to HATRPO | " + " | ".join(f"{v} (s)" for v in PART_NAMES.values()) + " |",
        "|---|---|---|" + "---|" * len(PART_NAMES),
    ]
    for name in configs:
        median = statistics.median(seconds[name])
        cells = [f"{statistics.median(parts[name][p][1:]):.3f}" if p in parts[name] else "-" for p in PART_NAMES]
        lines.append(f"| {name} | {median:.3f} | {median / base:.2f}x | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
