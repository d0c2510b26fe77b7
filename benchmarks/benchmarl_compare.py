"""BenchMARL 1.5.2 against hcmarl: MAPPO throughput on VMAS ``balance``, same machine, same run.

BenchMARL is the reference MARL library built on TorchRL, and its MAPPO defaults for
``vmas/balance`` are the configuration ``benchmarks/throughput.py`` copies. This script runs
both libraries one after the other, each in a fresh process, so the figures share the machine's
state and can be set side by side:

* BenchMARL 1.5.2, from its own yaml defaults (``base_experiment.yaml``, ``mappo.yaml``,
  ``vmas/balance.yaml``, ``layers/mlp.yaml``): 6000 frames per iteration from 10 VMAS envs,
  45 minibatches of 400 frames, MLP 256x256 tanh, 4 agents, 100 steps per episode; CPU, no
  loggers, no evaluation, no checkpoints. Its own timers (``timers/collection_time``,
  ``timers/training_time``, ``timers/iteration_time``) are read off the dict it hands its
  logger at the end of each iteration.
* hcmarl, through ``hcmarl_bench`` of ``benchmarks/throughput.py`` (the same configuration).

Both run one warm-up iteration that is not measured, then ``--iterations`` measured ones;
figures are means over the measured iterations, and peak resident memory is the process's
``ru_maxrss``. Collection is one batch from the collector; training is everything from the
batch to the updated policy (advantages, minibatch updates, weight sync).

BenchMARL needs torchrl < 0.12, while hcmarl uses a newer one, so BenchMARL is installed into its
own virtual environment (``/tmp/benchmarl-venv``, created on first use) and is never a
dependency of hcmarl.

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
CHILD_PROGRAM = Path("/tmp/benchmarl_compare_child.py")
FRAMES = 6000

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
"""Run BenchMARL's default MAPPO on vmas/balance and write its per-iteration timers as JSON."""
import json
import resource
import sys
import tempfile

import torch
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig

total_iterations, result_path = int(sys.argv[1]), sys.argv[2]
TIMERS = ("timers/collection_time", "timers/training_time", "timers/iteration_time")

experiment_config = ExperimentConfig.get_from_yaml()
task = VmasTask.BALANCE.get_from_yaml()
model_config = MlpConfig.get_from_yaml()
defaults = {
    "frames per batch": experiment_config.on_policy_collected_frames_per_batch,
    "envs": experiment_config.on_policy_n_envs_per_worker,
    "minibatch iterations": experiment_config.on_policy_n_minibatch_iters,
    "minibatch size": experiment_config.on_policy_minibatch_size,
    "hidden": list(model_config.num_cells),
    "activation": model_config.activation_class.__name__,
    "n_agents": task.config["n_agents"],
    "max_steps": task.config["max_steps"],
}
expected = {"frames per batch": 6000, "envs": 10, "minibatch iterations": 45, "minibatch size": 400,
            "hidden": [256, 256], "activation": "Tanh", "n_agents": 4, "max_steps": 100}
if defaults != expected:
    sys.exit(f"BenchMARL's defaults {defaults} differ from the configuration hcmarl is run with {expected}")

experiment_config.sampling_device = experiment_config.train_device = experiment_config.buffer_device = "cpu"
experiment_config.loggers = []
experiment_config.create_json = False
experiment_config.evaluation = False
experiment_config.render = False
experiment_config.checkpoint_interval = 0
experiment_config.checkpoint_at_end = False
experiment_config.max_n_frames = None
experiment_config.max_n_iters = total_iterations

with tempfile.TemporaryDirectory() as folder:
    experiment_config.save_folder = folder
    experiment = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(), model_config=model_config,
                            seed=0, config=experiment_config)
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
sys.path.insert(0, "benchmarks")
from throughput import hcmarl_bench
result = hcmarl_bench(int(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    json.dump({**result, "threads": torch.get_num_threads()}, f)
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
    print("[1/4] installing torch==2.13.0 (the local CPU wheel)", flush=True)
    subprocess.run([*pip, f"torch=={PINS['torch']}"], check=True)
    print("[1/4] installing " + " ".join(f"{n}=={v}" for n, v in PINS.items()), flush=True)
    subprocess.run([*pip, *(f"{n}=={v}" for n, v in PINS.items())], check=True)


def run_child(step: str, command: list[str], iterations: int) -> dict:
    """Run ``command ITERATIONS RESULT_PATH`` from the repository root and return the JSON it writes there."""
    print(step, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        subprocess.run([*command, str(iterations), str(result)], cwd=ROOT, check=True)
        return json.loads(result.read_text())


def benchmarl_figures(iterations: int) -> dict[str, float]:
    CHILD_PROGRAM.write_text(BENCHMARL_PROGRAM)
    step = f"[2/4] BenchMARL {PINS['benchmarl']}: 1 warm-up + {iterations} iterations"
    raw = run_child(step, [str(VENV_PYTHON), str(CHILD_PROGRAM)], 1 + iterations)
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
    return run_child(f"[3/4] hcmarl: 1 warm-up + {iterations} iterations", [sys.executable, "-c", HCMARL_PROGRAM], iterations)


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
    threads = f"{benchmarl['threads']}" if benchmarl["threads"] == hcmarl["threads"] else f"BenchMARL {benchmarl['threads']}, hcmarl {hcmarl['threads']}"
    command = shlex.join(["python", "benchmarks/benchmarl_compare.py", *sys.argv[1:]])
    report = (
        f"`{command}`, CPU, torch threads {threads}, {datetime.date.today().isoformat()}; "
        f"{FRAMES} frames per iteration, mean of {args.iterations} iterations after one warm-up; "
        f"BenchMARL with " + ", ".join(f"{n} {v}" for n, v in PINS.items() if n != "benchmarl") + ".\n\n"
        + table(benchmarl, hcmarl)
        + "\n"
    )
    print("[4/4] results\n\n" + report, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# MAPPO on vmas/balance: BenchMARL's defaults, BenchMARL against hcmarl\n\n" + report)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
