"""``hcmarl sweep``: one recipe over a grid of seeds x override values, each grid point one ``hcmarl fit`` run.

    hcmarl sweep --config mappo/coordsum_3x10 --seeds 0-4 --set model.learner.init_args.lr=1e-3,5e-4 \\
        --parallel 2 --out sweeps --frames 1000000 -- --data.num_envs 32

The grid is the cartesian product of every ``--set`` key's values, times the seeds. Run
``(values, seed)`` logs into ``<out>/<recipe>[/<key>=<value>,...]/seed<seed>/version_K`` (``key`` is
the last part of the dotted name unless two keys share it), which ``hcmarl report <out>`` reads
back. Each run is ``python -m hcmarl.modules.cli fit ...`` in its own process with ``--threads`` torch
threads (``OMP_NUM_THREADS``, default 1), ``--parallel`` at a time, its output appended to ``fit.log`` beside its
versions. A run counts as trained only when its ``final_eval.json`` reports the requested frames; one that
SIGTERM stopped (exit code ``STOPPED_BY_SIGTERM``) is reported as stopped, and the sweep ends with an error
naming it. A SIGTERM to the sweep itself is passed on to the runs under way (each stops after its iteration and
checkpoint), starts no further run, and ends the sweep with ``STOPPED_BY_SIGTERM``. The sweep is resumable: a run whose ``final_eval.json`` (in any version) reports at least
the requested frames is skipped, a run with a ``last.ckpt`` continues from it in the same version
(its ``metrics.csv`` continued after the checkpoint's iteration), and the others start afresh in a
new version. The run folders need the CSV logger of recipes/base.yaml. The command line is read by
:mod:`hcmarl.sweep_arguments`.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from hcmarl.errors import STOPPED_BY_SIGTERM, ConfigError, SweepError, SweepStopped
from hcmarl.recipes import RECIPES_DIR
from hcmarl.report.runs import RETURN, curves_from_rows, read_final_eval, read_metrics, version_dirs
from hcmarl.sweep_arguments import build_parser, check_extra, parse_seeds, parse_set

RESUME_HINT = "run the same hcmarl sweep again to continue from each run's last.ckpt"
"""The fix for stopped runs: a sweep resumes every unfinished run from its last checkpoint."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_print_lock = threading.Lock()


def say(message: str) -> None:
    """Print one line whole, also when runs finish at once in several threads."""
    with _print_lock:
        print(message, flush=True)


def resolve_recipe(config: str) -> tuple[str, Path]:
    """``(recipe name, path)`` of ``--config``: a YAML file, or a shipped recipe's name such as ``mappo/coordsum_3x10``."""
    path = Path(config)
    if path.is_file():
        return f"{path.resolve().parent.name}/{path.stem}", path.resolve()
    shipped = RECIPES_DIR / f"{config.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return config.removesuffix(".yaml"), shipped
    raise ConfigError(f"--config {config}: no such file, nor a shipped recipe; give a YAML path or a name such as mappo/coordsum_3x10")


def _recipe_frames(path: Path) -> int:
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if "total_frames" not in data:
        raise ConfigError(f"{path} sets no data.total_frames, so the sweep cannot tell finished runs; give --frames")
    return int(data["total_frames"])


@dataclass(frozen=True)
class SweepRun:
    """One grid point: a recipe, its override values and a seed, trained for ``frames``."""

    recipe: str
    config: Path
    seed: int
    overrides: tuple[tuple[str, str], ...]
    frames: int
    out: Path
    tag: str = ""

    @property
    def name(self) -> str:
        """The logger name, which is also the run's folder below ``out``."""
        return "/".join(p for p in (self.recipe, self.tag, f"seed{self.seed}") if p)

    @property
    def folder(self) -> Path:
        return self.out / self.name

    def finished(self) -> str | None:
        """Why the run needs no more training (a version's ``final_eval.json`` reports at least ``frames``), or None if
        it does."""
        done = max((final.get("frames", 0) for v in version_dirs(self.folder) if (final := read_final_eval(v))), default=None)
        return f"finished, final_eval.json reports {done:,} frames >= {self.frames:,}" if done is not None and done >= self.frames else None

    def progress(self) -> str | None:
        """Where an unfinished run stands, from its newest ``metrics.csv``: the frames reached, its evaluations (the
        last one's return) and what the next start resumes from; None when nothing was logged yet."""
        logged = [v for v in version_dirs(self.folder) if (v / "metrics.csv").exists()]
        if not logged:
            return None
        rows = read_metrics(logged[-1])
        frames = max((float(r["frames"]) for r in rows if r.get("frames")), default=0.0)
        returns = curves_from_rows(rows, str(logged[-1] / "metrics.csv")).get(RETURN, {})
        evaluations = f"{len(returns)} evaluations, the last {RETURN} {returns[max(returns)]:.2f}" if returns else "no evaluation"
        checkpoint = self.last_checkpoint()
        resumes = f"resumes from {checkpoint}" if checkpoint else "no checkpoint, starts again"
        return f"at {frames:,.0f} of {self.frames:,} frames ({evaluations}); {resumes}"

    def last_checkpoint(self) -> Path | None:
        """The newest version's ``checkpoints/last.ckpt``, if any."""
        found = [c for v in version_dirs(self.folder) if (c := v / "checkpoints" / "last.ckpt").exists()]
        return found[-1] if found else None

    def command(self, extra: Sequence[str]) -> list[str]:
        """The ``hcmarl fit`` command: resuming from the last checkpoint in that checkpoint's version if there is one,
        else a new version."""
        versions = version_dirs(self.folder)
        checkpoint = self.last_checkpoint()
        if checkpoint is not None:
            version = int(checkpoint.parent.parent.name.split("_")[1])
        else:
            version = int(versions[-1].name.split("_")[1]) + 1 if versions else 0
        return [
            sys.executable,
            "-m",
            "hcmarl.modules.cli",
            "fit",
            "--config",
            str(self.config),
            "--seed_everything",
            str(self.seed),
            "--data.total_frames",
            str(self.frames),
            "--trainer.logger.init_args.save_dir",
            str(self.out),
            "--trainer.logger.init_args.name",
            self.name,
            "--trainer.logger.init_args.version",
            str(version),
            "--trainer.enable_progress_bar",
            "false",
            *[arg for key, value in self.overrides if key != "data.total_frames" for arg in (f"--{key}", value)],
            *(["--ckpt_path", str(checkpoint)] if checkpoint else []),
            *extra,
        ]


def _frames(value: str) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise ConfigError(f"--set data.total_frames={value}: not a number of frames; e.g. --set data.total_frames=100000,200000") from None


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last dotted part, or the whole key where two keys share that part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def expand_grid(config: str, seeds: Sequence[int], sets: Sequence[tuple[str, list[str]]], out: Path, frames: int | None = None) -> list[SweepRun]:
    """Every (override values, seed) of the grid, override combinations outermost, in the order given."""
    recipe, path = resolve_recipe(config)
    keys = [k for k, _ in sets]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--set names a key twice ({', '.join(k for k in keys if keys.count(k) > 1)}); give its values once, comma-separated")
    if frames is not None and "data.total_frames" in keys:
        raise ConfigError("both --frames and --set data.total_frames give the run length; keep one")
    if not seeds:
        raise ConfigError("--seeds names no seed; e.g. --seeds 0-4")
    short = _short_keys(keys)
    fixed_frames = None if "data.total_frames" in keys else frames if frames is not None else _recipe_frames(path)
    runs: list[SweepRun] = []
    tags: dict[str, tuple[tuple[str, str], ...]] = {}
    for values in itertools.product(*[v for _, v in sets]):
        overrides = tuple(zip(keys, values, strict=True))
        tag = ",".join(f"{short[k]}={_UNSAFE.sub('-', v)}" for k, v in overrides)
        if tags.setdefault(tag, overrides) != overrides:
            raise ConfigError(f"the overrides {tags[tag]} and {overrides} give one folder name '{tag}'; use values that differ in letters or digits")
        run_frames = _frames(dict(overrides)["data.total_frames"]) if fixed_frames is None else fixed_frames
        runs += [SweepRun(recipe, path, seed, overrides, run_frames, out.resolve(), tag) for seed in seeds]
    return runs


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``skipped`` (already finished), ``finished``, ``stopped`` (by SIGTERM, to be
    continued), ``not started`` (the sweep was stopped first) or ``failed``."""

    run: SweepRun
    status: str
    log: Path | None = None


class FitProcesses:
    """The ``hcmarl fit`` processes a sweep has running, so that a SIGTERM to the sweep reaches them.

    A scheduler or a user may signal the sweep's process alone (``kill <pid>``); its runs would then train on,
    orphaned. :meth:`stop`, the sweep's SIGTERM handler, passes the signal on to every run under way (Lightning ends
    each after its iteration and checkpoint, exit code ``STOPPED_BY_SIGTERM``) and lets no further run start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def run(self, command: list[str], log: Path, env: dict[str, str]) -> int | None:
        """Run ``command`` with its output appended to ``log``; its exit code, or None if the sweep is stopping."""
        with self._lock:
            if self.stopping.is_set():
                return None
            with open(log, "a") as f:
                process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
            self._running.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self, signum: int, frame: object) -> None:
        """The SIGTERM handler: start no run, and send SIGTERM to each one running."""
        self.stopping.set()
        with self._lock:
            for process in self._running:
                process.send_signal(signal.SIGTERM)


def run_one(run: SweepRun, extra: Sequence[str], processes: FitProcesses, threads: int = 1) -> Outcome:
    """Train one grid point unless finished, with ``threads`` torch threads; its output goes to ``<folder>/fit.log``."""
    if finished := run.finished():
        say(f"skip   {run.name}: {finished}")
        return Outcome(run, "skipped")
    if processes.stopping.is_set():
        return Outcome(run, "not started")
    checkpoint = run.last_checkpoint()
    run.folder.mkdir(parents=True, exist_ok=True)
    log = run.folder / "fit.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.monotonic()
    say(f"start  {run.name}" + (f" (resuming from {checkpoint})" if checkpoint else ""))
    code = processes.run(run.command(extra), log, env)
    elapsed = time.monotonic() - started
    if code is None:
        return Outcome(run, "not started")
    if code == STOPPED_BY_SIGTERM:
        say(f"STOPPED {run.name} by SIGTERM after {elapsed:.0f} s; its log says how far it got: {log}")
        return Outcome(run, "stopped", log)
    if code != 0:
        say(f"FAILED {run.name} (exit code {code} after {elapsed:.0f} s); log: {log}")
        return Outcome(run, "failed", log)
    if not run.finished():
        say(f"FAILED {run.name}: it exited 0 after {elapsed:.0f} s but no final_eval.json reports {run.frames:,} frames; log: {log}")
        return Outcome(run, "failed", log)
    say(f"done   {run.name} in {elapsed:.0f} s")
    return Outcome(run, "finished", log)


def execute(runs: Sequence[SweepRun], extra: Sequence[str], parallel: int = 1, threads: int = 1) -> list[Outcome]:
    """Run the grid ``parallel`` at a time, ``threads`` torch threads each; raises :class:`SweepError` naming the logs of failed and stopped runs, or
    :class:`SweepStopped` if the sweep itself received SIGTERM (from the main thread, where its handler is set)."""
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: give at least 1")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: give at least 1")
    cores = os.cpu_count() or 1
    if parallel * threads > cores:
        print(
            f"hcmarl sweep: warning: --parallel {parallel} x --threads {threads} exceeds the {cores} CPU cores "
            "(os.cpu_count()); runs will share cores and each will be slower",
            file=sys.stderr,
        )
    processes = FitProcesses()
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGTERM, processes.stop) if in_main_thread else None
    try:
        with ThreadPoolExecutor(parallel) as pool:
            outcomes = list(pool.map(lambda r: run_one(r, extra, processes, threads), runs))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    failed = [o for o in outcomes if o.status == "failed"]
    stopped = [o for o in outcomes if o.status == "stopped"]
    if processes.stopping.is_set():
        waiting = [o for o in outcomes if o.status == "not started"]
        raise SweepStopped(
            f"stopped by SIGTERM: {len(stopped)} of {len(runs)} runs stopped after their iteration under way "
            f"({', '.join(o.run.name for o in stopped) or 'none'}), {len(waiting)} not started"
            + (f", {len(failed)} failed ({', '.join(str(o.log) for o in failed)})" if failed else "")
            + f"; {RESUME_HINT}"
        )
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(runs)} runs failed; see their logs: {', '.join(str(o.log) for o in failed)}")
    if stopped:
        problems.append(
            f"{len(stopped)} of {len(runs)} runs were stopped by SIGTERM before their last frame "
            f"({', '.join(o.run.name for o in stopped)}); {RESUME_HINT}"
        )
    if problems:
        raise SweepError("; ".join(problems))
    return outcomes


def main(argv: list[str]) -> None:
    """Parse ``argv`` (the words after ``hcmarl sweep``; after ``--``, extra ``hcmarl fit`` arguments) and run the grid."""
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = build_parser().parse_args(argv[:split]), argv[split + 1 :]
    check_extra(extra)
    runs = expand_grid(args.config, parse_seeds(args.seeds), [parse_set(s) for s in args.sets], args.out, args.frames)
    print(f"hcmarl sweep: {len(runs)} runs of {runs[0].recipe} into {runs[0].out}")
    if args.dry_run:
        for run in runs:
            finished = run.finished()
            if finished:
                print(f"# skip {run.name}: {finished}")
                continue
            progress = run.progress()
            print(*([f"# {run.name}: {progress}"] if progress else []), shlex.join(run.command(extra)), sep="\n")
        return
    outcomes = execute(runs, extra, args.parallel, args.threads)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "skipped")}
    print(f"hcmarl sweep: {counts['finished']} trained, {counts['skipped']} already finished. Report: hcmarl report {args.out}")
