"""``hcmarl report PATH... [--out DIR]``: the command-line entry point of :func:`hcmarl.report.report`."""

from __future__ import annotations

import argparse

from hcmarl.errors import ConfigError
from hcmarl.report.build import report
from hcmarl.report.stats import CONFIDENCE, RESAMPLES
from hcmarl.report.tables import LAST_EVALUATIONS, SCORES


def parse_bounds(items: list[str]) -> dict[str, tuple[float, float]]:
    """``["coordsum/3x10=0:200"]`` -> ``{"coordsum/3x10": (0.0, 200.0)}``."""
    bounds = {}
    for item in items:
        task, _, values = item.rpartition("=")
        low, _, high = values.partition(":")
        try:
            bounds[task] = (float(low), float(high))
        except ValueError:
            raise ConfigError(f"--bounds '{item}' is not TASK=MIN:MAX, e.g. --bounds coordsum/3x10=0:200") from None
        if not task:
            raise ConfigError(f"--bounds '{item}' names no task; write TASK=MIN:MAX, e.g. --bounds coordsum/3x10=0:200")
    return bounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcmarl report",
        description="Tables (HCPO: median of the last evaluations; MAGPO: normalised IQM with bootstrap intervals and "
        "probability of improvement), learning curves and a Markdown page from finished runs.",
    )
    parser.add_argument("paths", nargs="+", help="run folders (searched for metrics.csv), exported .csv files or marl-eval .json files")
    parser.add_argument("--out", default="report", help="folder for report.md and the figures (default: report)")
    parser.add_argument(
        "--metric", default="auto", help="auto (win rate where logged, else return), return, win_rate, or a column such as eval/guider/return"
    )
    parser.add_argument(
        "--last", type=int, default=LAST_EVALUATIONS, help="evaluations per seed whose median the HCPO table reports (default: %(default)s)"
    )
    parser.add_argument(
        "--band", choices=("ci", "std"), default="ci", help="learning-curve band: bootstrap interval of the mean, or std (default: ci)"
    )
    parser.add_argument(
        "--bounds",
        action="append",
        default=[],
        metavar="TASK=MIN:MAX",
        help="normalisation bounds of a task instead of the observed min and max (repeatable)",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE, help="interval level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's random generator (default: 0)")
    parser.add_argument("--title", default="Results", help="the page's title")
    parser.add_argument(
        "--export", default=None, metavar="CSV", help="also write every run's evaluations into this compact CSV, readable back by hcmarl report"
    )
    parser.add_argument(
        "--score",
        choices=SCORES,
        default="auto",
        help="the per-seed score of the MAGPO aggregate and of the published comparison: auto (the absolute metric on "
        "tasks where every run has one, else the final evaluation), final, absolute, or median (of the last --last "
        "evaluations, HCPO's score) (default: auto)",
    )
    parser.add_argument(
        "--marl-eval",
        default=None,
        metavar="JSON",
        help="also write the runs of the hcmarl run folders among PATH into this file in marl-eval's JSON layout",
    )
    parser.add_argument(
        "--published",
        default=None,
        metavar="CSV",
        help="a CSV of published values (task, algorithm, mean, std, seeds, frames, source) to set beside the runs' scores",
    )
    parser.add_argument(
        "--label",
        nargs=2,
        action="append",
        default=[],
        metavar=("ALGORITHM", "LABEL"),
        help="name ALGORITHM (as the page would name it, e.g. a sweep's long override list) LABEL instead (repeatable)",
    )
    parser.add_argument(
        "--wandb", default=None, metavar="PROJECT", help="also log the figures and the page to this W&B project (offline without an API key)"
    )
    return parser


def main(argv: list[str]) -> None:
    """Parse ``argv`` (the words after ``hcmarl report``), write the report and print the files written."""
    args = build_parser().parse_args(argv)
    if args.last < 1:
        raise ConfigError(f"--last {args.last}: the HCPO score needs at least one evaluation per seed, e.g. --last 10")
    labelled = [algorithm for algorithm, _ in args.label]
    if repeated := [algorithm for algorithm in labelled if labelled.count(algorithm) > 1]:
        raise ConfigError(f"--label {repeated[0]!r} is given more than once; give each algorithm one label")
    written = report(
        args.paths,
        args.out,
        metric=args.metric,
        last=args.last,
        band=args.band,
        bounds=parse_bounds(args.bounds),
        resamples=args.resamples,
        confidence=args.confidence,
        seed=args.seed,
        title=args.title,
        export=args.export,
        score=args.score,
        published=args.published,
        marl_eval=args.marl_eval,
        labels=dict(args.label),
    )
    print("hcmarl report wrote:")
    for path in written:
        print(f"  {path}")
    if args.wandb is not None:
        from hcmarl.report.wandb_upload import log_report

        print(f"W&B run with the figures: {log_report(written, args.wandb, args.title)}")
