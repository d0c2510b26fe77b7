"""Cost of one MAGPO iteration against one MAPPO iteration at equal batch, and of the guider as agents grow.

Part 1, on one CoordSum task: each configuration (MAPPO as its recipe; MAPPO with MAGPO's epochs
and minibatches; MAGPO; CTDS; MAT) is built with ``build_cli``; one iteration is timed as its two
halves, collection (``env.rollout`` of the recipe's batch with the behaviour policy: the guider
decodes agent by agent) and update (``compute_advantages`` + ``update_roles``). Part 2: the same
guider and loop settings on 3, 5 and 8 agents (``coordsum/3x10``, ``5x20``, ``8x15``), MAGPO against
MAPPO with the same epochs and minibatches. Configurations run in interleaved rounds and report
medians, so the load of a shared machine affects all alike.

    OMP_NUM_THREADS=1 python benchmarks/magpo_cost.py --rounds 3 --out docs/benchmarks/magpo_cost.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from costing import build

from hcmarl.optim import GradientStep


def loop_overrides(algorithm: str, epochs: int, minibatches: int) -> list[str]:
    """Command-line overrides giving ``algorithm``'s recipe these epochs and minibatches (critic included)."""
    if algorithm in ("mappo", "ippo"):
        return [
            "--model.learner.init_args.constraint.init_args.epochs",
            str(epochs),
            "--model.learner.init_args.constraint.init_args.minibatches",
            str(minibatches),
            "--model.critic.init_args.epochs",
            str(epochs),
            "--model.critic.init_args.minibatches",
            str(minibatches),
        ]
    return [
        "--model.guider.init_args.constraint.init_args.epochs",
        str(epochs),
        "--model.guider.init_args.constraint.init_args.minibatches",
        str(minibatches),
    ]


def measure(configs: dict[str, tuple[str, list[str]]], rounds: int) -> dict[str, dict[str, float]]:
    """Median collection and update seconds of one iteration per configuration (interleaved rounds, round 0 warms up)."""
    built: dict[str, Any] = {}
    for name, (recipe, overrides) in configs.items():
        torch.manual_seed(0)
        built[name] = build(recipe, overrides)
    seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for round_ in range(rounds + 1):
        for name, (module, (env, steps)) in built.items():
            start = time.perf_counter()
            batch = env.rollout(steps, module.behaviour_policy(), break_when_any_done=False)
            collected = time.perf_counter()
            module.compute_advantages(batch)
            module.update_roles(batch, [GradientStep(opt) for opt in module.configure_optimizers()])
            if round_ > 0:
                seconds[name]["collect"].append(collected - start)
                seconds[name]["update"].append(time.perf_counter() - collected)
                seconds[name]["frames"].append(batch.numel())
    return {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in seconds.items()}


def table(result: dict[str, dict[str, float]], base: str, title: str) -> list[str]:
    lines = [title, "", "| configuration | collect (s) | update (s) | iteration (s) | relative to " + base + " |", "|---|---|---|---|---|"]
    base_total = result[base]["collect"] + result[base]["update"]
    for name, r in result.items():
        total = r["collect"] + r["update"]
        lines.append(f"| {name} | {r['collect']:.3f} | {r['update']:.3f} | {total:.3f} | {total / base_total:.2f}x |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="coordsum_3x10", help="recipe stem of part 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of part 2 (and of the matched MAPPO in part 1)")
    parser.add_argument("--minibatches", type=int, default=8, help="minibatches of part 2 (and of the matched MAPPO)")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here (markdown)")
    args = parser.parse_args()
    matched = loop_overrides("mappo", args.epochs, args.minibatches)
    part1 = measure(
        {
            "MAPPO (its recipe)": (f"mappo/{args.task}", []),
            f"MAPPO ({args.epochs} epochs x {args.minibatches} minibatches)": (f"mappo/{args.task}", matched),
            "MAGPO": (f"magpo/{args.task}", []),
            "CTDS": (f"ctds/{args.task}", []),
            "MAT": (f"mat/{args.task}", []),
        },
        args.rounds,
    )
    frames = int(next(iter(part1.values()))["frames"])
    lines = table(part1, "MAPPO (its recipe)", f"One iteration on `{args.task}` ({frames:,} frames), each recipe's own settings unless named:")
    guider = [
        "--model.guider.init_args.network.init_args.embed_dim",
        "64",
        "--model.guider.init_args.network.init_args.n_blocks",
        "1",
        "--model.guider.init_args.network.init_args.n_heads",
        "1",
    ]
    part2: dict[str, dict[str, float]] = {}
    for task in ("coordsum_3x10", "coordsum_5x20", "coordsum_8x15"):
        result = measure(
            {
                f"MAPPO {task}": (f"mappo/{task}", matched),
                f"MAGPO {task}": (f"magpo/{task}", [*guider, *loop_overrides("magpo", args.epochs, args.minibatches)]),
            },
            args.rounds,
        )
        part2 |= result
    lines += [
        f"The guider as agents grow (embed 64, 1 block, 1 head; {args.epochs} epochs x {args.minibatches} minibatches for both; 64 envs x 128 steps):",
        "",
        "| agents | MAPPO collect (s) | MAGPO collect (s) | MAPPO update (s) | MAGPO update (s) | MAGPO / MAPPO iteration |",
        "|---|---|---|---|---|---|",
    ]
    for task, n in (("coordsum_3x10", 3), ("coordsum_5x20", 5), ("coordsum_8x15", 8)):
        mappo, magpo = part2[f"MAPPO {task}"], part2[f"MAGPO {task}"]
        ratio = (magpo["collect"] + magpo["update"]) / (mappo["collect"] + mappo["update"])
        lines.append(f"| {n} | {mappo['collect']:.3f} | {magpo['collect']:.3f} | {mappo['update']:.3f} | {magpo['update']:.3f} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        command = f"OMP_NUM_THREADS=1 python benchmarks/magpo_cost.py --rounds {args.rounds} --out {args.out}"
        args.out.write_text(
            f"# MAGPO cost\n\nWritten by `{command}`: medians of {args.rounds} interleaved rounds, one process, one thread.\n\n" + text
        )


if __name__ == "__main__":
    main()
