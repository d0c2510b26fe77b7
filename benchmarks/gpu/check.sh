#!/usr/bin/env bash
# Issue 19's GPU checks as one script of under 9 minutes (the step limits add up to 520 s), for a session lent a GPU machine (first run on an H200 on 2026-12-04: docs/results/gpu_h200/).
# Here first: bash benchmarks/gpu/wheels.sh. Then, through the device tool, from the repository root:
#   run(command="bash benchmarks/gpu/check.sh", carry=["gpu_wheels"], timeout_s=560)
# It installs the carried wheels and hcmarl (no network there), then writes into $OUT (default ./gpu_out):
#   versions.txt   nvidia-smi, python, torch, CUDA device, jax devices
#   cuda_tests.txt the test suite's CUDA tests (pytest -k cuda: CoordSum on the GPU)
#   bench_*.txt    hcmarl bench of mappo/vmas_balance with 4,096 envs and of hcpo/smax_3s5z, on the GPU
#   sync_*.txt     one training iteration under torch.cuda.set_sync_debug_mode: "warn" lists every host sync,
#                  "error" stops at the first
# Each step's exit status goes into status.txt; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT" && rm -f "$OUT"/*.txt  # eight files at most: the device tool returns no more
# jax (SMAX) shares the GPU with torch: no up-front grab of 75% of its memory.
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY="${PYTHON:-python3}"
step() {  # step NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, output into $OUT/NAME.txt, status into status.txt
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
    echo "$name rc=$? seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
}
step install 60 bash -c "$PY -m pip install -q --no-index --no-deps gpu_wheels/*.whl && $PY -m pip install -q --no-index --no-deps --no-build-isolation -e ."
step versions 15 nvidia-smi
step versions 45 "$PY" -c "import sys, torch, jax; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())"
step cuda_tests 60 "$PY" -m pytest -q -rs tests/test_coordsum.py -k cuda
step bench_mappo_vmas_balance_4096 110 "$PY" -m hcmarl.modules.cli bench --config recipes/mappo/vmas_balance.yaml \
    --data.num_envs 4096 --trainer.accelerator gpu --iterations 1 --warmup 1  # about 30 s an iteration on an H200
step bench_hcpo_smax_3s5z 130 "$PY" -m hcmarl.modules.cli bench --config recipes/hcpo/smax_3s5z.yaml \
    --trainer.accelerator gpu --iterations 3 --warmup 1
for mode in warn error; do
    step "sync_$mode" 50 "$PY" -c "
import sys, torch
torch.cuda.set_sync_debug_mode('$mode')
from hcmarl.modules.cli import main
main(['bench', '--config', 'recipes/mappo/vmas_balance.yaml', '--data.num_envs', '1024', '--trainer.accelerator', 'gpu',
      '--iterations', '1', '--warmup', '0'])
"
done
grep -c "called a synchronizing CUDA operation" "$OUT/sync_warn.txt" | sed 's/^/host syncs warned: /' | tee -a "$OUT/status.txt"
