#!/usr/bin/env bash
# GPU-side checks of task isolation, for a lent GPU machine (root, NVIDIA driver, Python with
# PyTorch, no network). Installs cplat from this checkout into that Python (wheels that the
# machine lacks are carried in .whl/, see DEVELOPING.md), then runs:
#   tools/gpu_device_check.py  the device filter alone: GPU device nodes refused without the
#                              GPU's minor in the allow-list, usable with it;
#   tools/gpu_e2e.py           cplat serve as root with its local agent: a GPU job computing
#                              as its own uid, a job without GPUs refused the devices, an OOM
#                              kill, the signing secret out of reach.
# Writes the JSON results to $OUT (or ./gpu-check-out) and exits non-zero if a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps --no-index . >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
{ uname -r; nvidia-smi -L; mount | grep cgroup; cat /proc/self/cgroup; ls -l /dev/nvidia*; } \
  >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
rc=0
timeout 120 python3 tools/gpu_device_check.py | tee "$OUT/device_check.json" || rc=1
timeout 400 python3 tools/gpu_e2e.py | tee "$OUT/e2e.json" || rc=1
exit $rc
