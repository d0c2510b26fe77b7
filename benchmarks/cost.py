"""The cost table: collection, update and end-to-end frames/s of every algorithm family, and hours to its paper's budget.

Each family's recipe runs ``hcmarl bench`` on ``coordsum/3x10`` (3 agents), ``coordsum/8x15`` (8 agents)
and ``smax/3s5z`` (8 agents), one configuration per subprocess with one torch thread, so one
configuration's memory and threads do not touch the next. A family's own ``smax_3s5z`` recipe is used
where it has one (its batch size, networks and paper settings), else its ``coordsum_3x10`` recipe with
``--data.env`` changed. Results are appended to ``<work>/cost.jsonl`` as they come, so an interrupted
run resumes where it stopped; ratios to MAPPO are taken on the same env within the run.

Paper budgets (frames): CoordSum 20M (MAGPO, ``reference/magpo/params.csv``: 1,220 updates x 2 lanes x 64
envs x 128 steps); SMAX 3s5z 10M (HCPO paper, Appendix C, SMAC).

    python benchmarks/cost.py --work /tmp/hcmarl-cost --out docs/benchmarks/cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hcmarl.recipes import RECIPES_DIR

FAMILIES = ["mappo", "ippo", "happo", "hatrpo", "haa2c", "a2po", "hcpo", "magpo", "magpo_sable", "ctds", "mat", "sable"]
ENVS = ["coordsum/3x10", "coordsum/8x15", "smax/3s5z"]
PAPER_BUDGET = {"coordsum": 20_000_000, "smax": 10_000_000}


def recipe_and_overrides(family: str, env: str) -> tuple[Path, list[str]]:
    """The recipe a family runs ``env`` with: its own recipe for that env if it has one, else its 3x10 one with the env changed."""
    own = RECIPES_DIR / family / f"{env.replace('/', '_')}.yaml"
    if own.exists():
        return own, []
    return RECIPES_DIR / family / "coordsum_3x10.yaml", ["--data.env", env]


def bench_one(family: str, env: str, iterations: int, warmup: int, compiled: bool) -> dict[str, float]:
    """``hcmarl bench`` of one family on one env, in this process (``compiled``: with ``--model.compile true``)."""
    import torch

    from hcmarl.modules.cli import build_cli

    torch.set_num_threads(1)
    recipe, overrides = recipe_and_overrides(family, env)
    cli = build_cli(
        [
            "bench",
            "--config",
            str(recipe),
            *overrides,
            "--iterations",
            str(iterations),
            "--warmup",
            str(warmup),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            *(["--model.compile", "true"] if compiled else []),
        ]
    )
    return cli.trainer.bench_result


def measure(work: Path, families: list[str], envs: list[str], iterations: int, warmup: int, compiled: bool) -> list[dict]:
    """Bench every (family, env) not yet in ``work/cost.jsonl`` (``cost-compiled.jsonl``), each in a subprocess; return
    all rows. A row's ``seconds`` is its whole subprocess: start, compilation (if any), warm-up and measured iterations."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / ("cost-compiled.jsonl" if compiled else "cost.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["family"], r["env"]) for r in rows}
    for env in envs:
        for family in families:
            if (family, env) in done:
                continue
            print(f"cost: {family} on {env}", flush=True)
            command = [sys.executable, __file__, "--one", family, env, "--iterations", str(iterations), "--warmup", str(warmup)]
            start = time.perf_counter()
            out = subprocess.run(
                [*command, *(["--compile"] if compiled else [])], capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
            )
            seconds = time.perf_counter() - start
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-4000:], sep="\n", file=sys.stderr)
                raise SystemExit(f"cost: {family} on {env} failed (exit {out.returncode})")
            row = {"family": family, "env": env, "seconds": seconds, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return [r for r in rows if r["family"] in families and r["env"] in envs]


def table(rows: list[dict]) -> str:
    """The Markdown cost table: figures, ratios to MAPPO on the same env, hours to the paper's budget."""
    mappo = {r["env"]: r for r in rows if r["family"] == "mappo"}
    lines = [
        "| family | env | frames / iteration | collect frames/s | update frames/s | end-to-end frames/s | update time x MAPPO "
        "| end-to-end x MAPPO | paper budget | hours at this rate | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = mappo.get(r["env"])
        update_ratio = f"{base['update_fps'] / r['update_fps']:.2f}" if base else "-"
        e2e_ratio = f"{r['end_to_end_fps'] / base['end_to_end_fps']:.2f}" if base else "-"
        budget = PAPER_BUDGET[r["env"].split("/")[0]]
        lines.append(
            f"| {r['family']} | {r['env']} | {int(r['frames_per_iteration']):,} | {r['collect_fps']:,.0f} | {r['update_fps']:,.0f} "
            f"| {r['end_to_end_fps']:,.0f} | {update_ratio} | {e2e_ratio} | {budget / 1e6:.0f}M | {budget / r['end_to_end_fps'] / 3600:.1f} "
            f"| {r['peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hcmarl-cost"), help="resumable work folder (cost.jsonl)")
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    parser.add_argument("--iterations", type=int, default=2, help="measured iterations per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="iterations run first and not measured")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--compile", action="store_true", help="bench with --model.compile true (rows kept apart)")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "ENV"), help=argparse.SUPPRESS)  # the subprocess of one configuration
    args = parser.parse_args(argv)
    if args.one:
        result = bench_one(*args.one, args.iterations, args.warmup, args.compile)
        print(json.dumps({k: float(v) for k, v in result.items()}))
        return
    text = table(measure(args.work, args.families, args.envs, args.iterations, args.warmup, args.compile))
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
