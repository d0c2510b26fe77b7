"""BenchMARL 1.5.2 against hcmarl: MAPPO throughput on VMAS ``balance``, same machine, same run.

BenchMARL is the reference MARL library built on TorchRL. This script runs its MAPPO with its
own yaml defaults for ``vmas/balance`` and hcmarl configured the same way, one after the other,
each in a fresh process, so the figures share the machine's state and can be set side by side.

The configuration, BenchMARL's defaults (``base_experiment.yaml``, ``mappo.yaml``,
``vmas/balance.yaml``, ``layers/mlp.yaml``): 6000 frames per iteration from 10 VMAS envs,
4 agents, 100 steps per episode, MLP 256x256 tanh, and ``on_policy_n_minibatch_iters: 45``
passes over the batch, each split into 15 minibatches of 400 frames: 675 actor and 675 critic
Adam steps per iteration. (``benchmarks/throughput.py`` reads the 45 as 3 epochs x 15
minibatches; here hcmarl gets the 45 x 15 that BenchMARL runs.) The BenchMARL side checks its
defaults are these before it starts.

* BenchMARL runs on CPU with no loggers, no evaluation and no checkpoints. Its own timers
  (``timers/collection_time``, ``timers/training_time``, ``timers/iteration_time``) are read
  off the dict it hands its logger at the end of each iteration.
* hcmarl runs ``hcmarl bench`` with the overrides of ``benchmarks/throughput.py``.

Both run one warm-up iteration that is not measured, then ``--iterations`` measured ones; the
figures are means over the measured iterations, and peak resident memory is the process's
``ru_maxrss``. Collection is one batch from the collector; training is everything from the
batch to the updated policy (advantages, minibatch updates, weight sync).

BenchMARL 1.5.2 needs torchrl < 0.12 while hcmarl uses a newer one, so BenchMARL lives in its own
virtual environment (``/tmp/benchmarl-venv``, created on first use) and is never a dependency
of hcmarl.

    python benchmarks/benchmarl_compare.py --iterations 3 --out docs/benchmarks/benchmarl_compare.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path("/tmp/benchmarl-venv")
VENV_PYTHON = VENV / "bin" / "python"
BENCHMARL_CHILD = Path("/tmp/benchmarl_compare_child.py")

FRAMES, MINIBATCH, PASSES = 6000, 400, 45
BENCHMARL_DEFAULTS = {
    "frames per batch": FRAMES,
    "envs": 10,
    "passes over the batch": PASSES,
    "minibatch size": MINIBATCH,
    "hidden": [256, 256],
    "activation": "Tanh",
    "n_agents": 4,
    "max_steps": 100,
}

# torch is pinned in every pip command so that pip never swaps it for another (CUDA) build.
# BenchMARL 1.5.2 requires torchrl>=0.10,<0.12; torchvision 0.28.0 is the one built for torch 2.13.0;
# vmas is the version hcmarl runs, so both sides step the same simulator.
PINS = {
    "torch": "2.13.0",
    "benchmarl": "1.5.2",
    "torchrl": "0.11.1",
    "tensordict": "0.11.0",
    "torchvision": "0.28.0",
    "vmas": "1.5.2",
}

BENCHMARL_PROGRAM = '''
"""BenchMARL's default MAPPO on vmas/balance; writes its per-iteration timers and peak RSS as JSON.

Usage: python benchmarl_compare_child.py EXPECTED_DEFAULTS_JSON TOTAL_ITERATIONS RESULT_PATH
"""
import json
import resource
import sys
import tempfile

import torch
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig

expected, total_iterations, result_path = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
TIMERS = ("timers/collection_time", "timers/training_time", "timers/iteration_time")

config = ExperimentConfig.get_from_yaml()
task = VmasTask.BALANCE.get_from_yaml()
model_config = MlpConfig.get_from_yaml()
defaults = {
    "frames per batch": config.on_policy_collected_frames_per_batch,
    "envs": config.on_policy_n_envs_per_worker,
    "passes over the batch": config.on_policy_n_minibatch_iters,
    "minibatch size": config.on_policy_minibatch_size,
    "hidden": list(model_config.num_cells),
    "activation": model_config.activation_class.__name__,
    "n_agents": task.config["n_agents"],
    "max_steps": task.config["max_steps"],
}
if defaults != expected:
    sys.exit(f"BenchMARL's defaults {defaults} differ from the configuration hcmarl is run with {expected}")

config.sampling_device = config.train_device = config.buffer_device = "cpu"
config.loggers = []
config.create_json = False
config.evaluation = False
config.render = False
config.checkpoint_interval = 0
config.checkpoint_at_end = False
config.max_n_frames = None
config.max_n_iters = total_iterations

with tempfile.TemporaryDirectory() as folder:
    config.save_folder = folder
    experiment = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(), model_config=model_config,
                            seed=0, config=config)
    records = []
    log = experiment.logger.log

    def recording_log(dict_to_log, step=None):
        if TIMERS[0] in dict_to_log:
            records.append({key: float(dict_to_log[key]) for key in TIMERS})
        log(dict_to_log, step=step)

    experiment.logger.log = recording_log
    experiment.run()

with open(result_path, "w") as f:
    json.dump({"records": records, "threads": torch.get_num_threads(),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
'''

HCMARL_PROGRAM = """
import json, sys, torch
benchmarks, iterations, result_path = sys.argv[1:4]
sys.path.insert(0, benchmarks)
from throughput import ROOT, benchmarl_like_overrides
from hcmarl.modules.cli import build_cli

del sys.argv[1:]  # LightningCLI gets its arguments from build_cli only
cli = build_cli([
    "bench", "--config", str(ROOT / "recipes/mappo/vmas_balance.yaml"), "--iterations", iterations,
    *benchmarl_like_overrides(),
])
with open(result_path, "w") as f:
    json.dump({**cli.trainer.bench_result, "threads": torch.get_num_threads()}, f)
"""


def installed_versions() -> dict[str, str]:
    """Versions of the pinned packages in the venv, '' for one that is missing."""
    out = subprocess.run([str(VENV_PYTHON), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True).stdout
    found = {package["name"].lower(): package["version"] for package in json.loads(out)}
    return {name: found.get(name, "") for name in PINS}


def ensure_venv() -> None:
    """Create /tmp/benchmarl-venv and install the pinned BenchMARL stack into it, unless already there."""
    if not VENV_PYTHON.exists():
        print(f"[1/4] creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    versions = installed_versions()
    if all(versions[name].split("+")[0] == version for name, version in PINS.items()):
        print(f"[1/4] {VENV} already has " + ", ".join(f"{n} {v}" for n, v in versions.items()), flush=True)
        return
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet"]
    print(f"[1/4] installing torch=={PINS['torch']} (the local CPU wheel)", flush=True)
    subprocess.run([*pip, f"torch=={PINS['torch']}"], check=True)
    print("[1/4] installing " + " ".join(f"{n}=={v}" for n, v in PINS.items()), flush=True)
    subprocess.run([*pip, *(f"{n}=={v}" for n, v in PINS.items())], check=True)


def run_child(step: str, command: list[str], iterations: int) -> dict:
    """Run ``command ITERATIONS RESULT_PATH`` and return the JSON it writes there.

    It runs in a scratch folder, so what the libraries write into the working directory
    (Lightning's ``config.yaml``, BenchMARL's experiment folder) lands outside the repository.
    """
    print(step, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        subprocess.run([*command, str(iterations), str(result)], cwd=folder, check=True)
        return json.loads(result.read_text())


def benchmarl_figures(iterations: int) -> dict[str, float]:
    BENCHMARL_CHILD.write_text(BENCHMARL_PROGRAM)
    step = f"[2/4] BenchMARL {PINS['benchmarl']}: 1 warm-up + {iterations} iterations"
    raw = run_child(step, [str(VENV_PYTHON), str(BENCHMARL_CHILD), json.dumps(BENCHMARL_DEFAULTS)], 1 + iterations)
    measured = raw["records"][1:]

    def mean(key: str) -> float:
        return sum(r[key] for r in measured) / len(measured)

    return {
        "collect_s": mean("timers/collection_time"),
        "update_s": mean("timers/training_time"),
        "iteration_s": mean("timers/iteration_time"),
        "peak_rss_mib": raw["peak_rss_mib"],
        "threads": raw["threads"],
    }


def hcmarl_figures(iterations: int) -> dict[str, float]:
    step = f"[3/4] hcmarl: 1 warm-up + {iterations} iterations"
    return run_child(step, [sys.executable, "-c", HCMARL_PROGRAM, str(ROOT / "benchmarks")], iterations)


def table(benchmarl: dict[str, float], hcmarl: dict[str, float]) -> str:
    def end_to_end_fps(figures: dict[str, float]) -> float:
        return FRAMES / figures["iteration_s"]

    rows = [
        ("collection s / iteration", benchmarl["collect_s"], hcmarl["collect_s"], "{:.2f}"),
        ("training s / iteration", benchmarl["update_s"], hcmarl["update_s"], "{:.2f}"),
        ("end-to-end s / iteration", benchmarl["iteration_s"], hcmarl["iteration_s"], "{:.2f}"),
        ("end-to-end frames/s", end_to_end_fps(benchmarl), end_to_end_fps(hcmarl), "{:.0f}"),
        ("peak resident memory MiB", benchmarl["peak_rss_mib"], hcmarl["peak_rss_mib"], "{:.0f}"),
    ]
    lines = [f"| measure | BenchMARL {PINS['benchmarl']} | hcmarl | hcmarl / BenchMARL |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt.format(b)} | {fmt.format(h)} | {h / b:.2f} |" for name, b, h, fmt in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="measured iterations per library, after one warm-up")
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    args = parser.parse_args()
    ensure_venv()
    benchmarl = benchmarl_figures(args.iterations)
    hcmarl = hcmarl_figures(args.iterations)
    same_threads = benchmarl["threads"] == hcmarl["threads"]
    threads = f"{hcmarl['threads']}" if same_threads else f"BenchMARL {benchmarl['threads']}, hcmarl {hcmarl['threads']}"
    command = shlex.join(["python", "benchmarks/benchmarl_compare.py", *sys.argv[1:]])
    report = (
        f"`{command}`, CPU, torch threads {threads}, {datetime.date.today().isoformat()}.\n\n"
        f"{FRAMES} frames per iteration; {PASSES} passes x {FRAMES // MINIBATCH} minibatches of {MINIBATCH} "
        f"= {PASSES * FRAMES // MINIBATCH} actor and critic steps per iteration; "
        f"mean of {args.iterations} measured iteration{'s' if args.iterations != 1 else ''} after one warm-up. "
        "BenchMARL with " + ", ".join(f"{n} {v}" for n, v in PINS.items() if n != "benchmarl") + ".\n\n" + table(benchmarl, hcmarl) + "\n"
    )
    print("[4/4] results\n\n" + report, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# MAPPO on vmas/balance with BenchMARL's defaults: BenchMARL against hcmarl\n\n" + report)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
