#!/usr/bin/env bash
# Issue 19's GPU checks as one script of under 10 minutes, for a session lent a GPU machine (untested until run).
# Here first: bash benchmarks/gpu/wheels.sh. Then, through the device tool, from the repository root:
#   run(command="bash benchmarks/gpu/check.sh", carry=["gpu_wheels"], timeout_s=580)
# It installs the carried wheels and hcmarl (no network there), then writes into $OUT (default ./gpu_out):
#   versions.txt   python, torch, CUDA device, jax devices
#   cuda_tests.txt the test suite's CUDA tests (pytest -k cuda: CoordSum on the GPU)
#   bench_*.txt    hcmarl bench of mappo/vmas_balance with 4,096 envs and of hcpo/smax_3s5z, on the GPU
#   sync_*.txt     one training iteration under torch.cuda.set_sync_debug_mode: "warn" lists every host sync,
#                  "error" stops at the first
# Each step's exit status goes into status.txt; a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export WANDB_MODE=offline WANDB_SILENT=true
PY="${PYTHON:-python3}"
step() {  # step NAME COMMAND...: run COMMAND with a time limit, output into $OUT/NAME.txt, status into status.txt
    local name="$1"; shift
    local start=$SECONDS
    timeout 240 "$@" > "$OUT/$name.txt" 2>&1
    echo "$name rc=$? seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
}
step install bash -c "$PY -m pip install -q --no-index --no-deps gpu_wheels/*.whl && $PY -m pip install -q --no-index --no-deps --no-build-isolation -e ."
step versions "$PY" -c "import sys, torch, jax; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); print('jax', jax.__version__, jax.devices())"
step cuda_tests "$PY" -m pytest -q -rs tests/test_coordsum.py -k cuda
step bench_mappo_vmas_balance_4096 "$PY" -m hcmarl.modules.cli bench --config recipes/mappo/vmas_balance.yaml \
    --data.num_envs 4096 --trainer.accelerator gpu --iterations 3 --warmup 1
step bench_hcpo_smax_3s5z "$PY" -m hcmarl.modules.cli bench --config recipes/hcpo/smax_3s5z.yaml \
    --trainer.accelerator gpu --iterations 3 --warmup 1
for mode in warn error; do
    step "sync_$mode" "$PY" -c "
import sys, torch
torch.cuda.set_sync_debug_mode('$mode')
from hcmarl.modules.cli import main
main(['bench', '--config', 'recipes/mappo/vmas_balance.yaml', '--data.num_envs', '1024', '--trainer.accelerator', 'gpu',
      '--iterations', '1', '--warmup', '0'])
"
done
grep -c "called a synchronizing CUDA operation" "$OUT/sync_warn.txt" | sed 's/^/host syncs warned: /' | tee -a "$OUT/status.txt"
