"""Learning benchmark: train a recipe over several seeds and write a table and a curve plot into docs/.

Not a test: it trains for minutes to hours. Example:

    python benchmarks/learning.py --recipe mappo/coordsum_3x10 --seeds 0 1 2 --frames 5000000 --parallel 2

Each seed runs ``hcmarl fit`` in its own process (one torch thread each) through
``hcmarl.sweep``, which also resumes or skips; the evaluation curves are read back from each
run's ``metrics.csv`` by ``hcmarl.report.runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hcmarl.report.discovery import discover
from hcmarl.report.runs import version_dirs
from hcmarl.sweep import execute, expand_grid

ROOT = Path(__file__).resolve().parent.parent


def eval_curve(seed_dir: Path) -> list[tuple[float, float]]:
    """(frames, eval/return) pairs of a seed over all its (resumed) versions, in frame order."""
    (run,), _ = discover([seed_dir])
    return list(zip(*(values.tolist() for values in run.curve("eval/return")), strict=False))


def final_result(seed_dir: Path) -> dict:
    return json.loads((version_dirs(seed_dir)[-1] / "final_eval.json").read_text())


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


EXTRA_EVALUATIONS = {"central": "central conductor", "guider": "guider, centralised"}
"""Second evaluations a module may log beside the deployment policy's (``eval/<mode>/return``), and their column names."""


def summarise(recipe: str, runs: dict[int, Path], out_md: Path, out_png: Path) -> str:
    results = {seed: final_result(d) for seed, d in runs.items()}
    finals = {seed: r["eval/return"] for seed, r in results.items()}
    # HCPO also evaluates its central conductor, MAGPO and CTDS their guider: one more column each
    extras = {
        mode: {seed: r[f"eval/{mode}/return"] for seed, r in results.items()}
        for mode in EXTRA_EVALUATIONS
        if all(f"eval/{mode}/return" in r for r in results.values())
    }
    curves = {seed: eval_curve(d) for seed, d in runs.items()}
    first = {seed: c[0][1] for seed, c in curves.items() if c}
    mean = statistics.mean(finals.values())
    std = _std(list(finals.values()))
    frames = max(r["frames"] for r in results.values())
    episodes = int(min(r["eval/episodes"] for r in results.values()))
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, curve in curves.items():
        ax.plot([f / 1e6 for f, _ in curve], [r for _, r in curve], label=f"seed {seed}")
    ax.set_xlabel("environment frames (millions)")
    ax.set_ylabel(f"evaluation return ({episodes} episodes)")
    ax.set_title(recipe)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    also = "".join(f" and with the {EXTRA_EVALUATIONS[mode]}" for mode in extras)
    lines = [
        f"### {recipe}",
        "",
        f"{len(runs)} seed{'s' if len(runs) > 1 else ''}, {frames:,} frames each; evaluation over {episodes} episodes "
        f"with the deployment policy{also}.",
        "",
        "| seed | first evaluation | final evaluation |" + "".join(f" final evaluation, {EXTRA_EVALUATIONS[m]} |" for m in extras),
        "|---|---|---|" + "---|" * len(extras),
        *[f"| {s} | {first.get(s, float('nan')):.2f} | {finals[s]:.2f} |" + "".join(f" {extras[m][s]:.2f} |" for m in extras) for s in sorted(runs)],
        f"| **mean (std)** | {statistics.mean(first.values()):.2f} | **{mean:.2f} ({std:.2f})** |"
        + "".join(f" **{statistics.mean(v.values()):.2f} ({_std(list(v.values())):.2f})** |" for v in extras.values()),
        "",
        f"![{recipe} learning curves]({out_png.name})",
        "",
    ]
    text = "\n".join(lines)
    out_md.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="e.g. mappo/coordsum_3x10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=2, help="seeds trained at once")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hcmarl-bench"), help="where runs are written")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("overrides", nargs="*", help="extra hcmarl fit arguments, after --")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    grid = expand_grid(args.recipe, args.seeds, [], args.work / "runs", args.frames)
    execute(grid, args.overrides, args.parallel)
    runs = {run.seed: run.folder for run in grid}
    stem = args.recipe.replace("/", "_")
    print(summarise(args.recipe, runs, args.docs / f"{stem}.md", args.docs / f"{stem}.png"))


if __name__ == "__main__":
    main()
