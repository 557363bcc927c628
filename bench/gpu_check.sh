#!/usr/bin/env bash
# The GPU path check (issue 35, item 3): one prepared script for a lent device (an H200 machine, no
# network), at most 10 minutes with the install. What it runs and reports: bench/gpu_check.py;
# results and commands: docs/results.md ("GPU path").
#
# 1. Here, on the CPU (needs ../shared/data and network access for the wheels):
#      bash bench/gpu_check.sh --prepare-only            # -> runs/gpu_carry (bench/gpu_prepare.py; < 64 MiB with the tree)
# 2. On the device (the `run` tool), carrying that folder:
#      run(command="bash bench/gpu_check.sh", carry=["runs/gpu_carry"], timeout_s=600)
#    It installs the carried wheels into /tmp/site, then runs bench/gpu_check.py, whose report lands in
#    $OUT (gpu_check.md, gpu_check.json, gpu_check.log, gpu_util.csv, nvidia-smi.txt).
# Options after the script name go to gpu_prepare.py (--prepare-only) or gpu_check.py (device), e.g.
#      bash bench/gpu_check.sh --budget-s 480 --epochs 240
#      bash bench/gpu_check.sh --dry-run                  # print the plan (commands) without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY="${GPU_CARRY:-runs/gpu_carry}"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--prepare-only" ]]; then  # here: the project's environment (make install's .venv) when there is one
  shift
  [[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && PY=.venv/bin/python
  exec "$PY" bench/gpu_prepare.py --out "$CARRY" "$@"
fi

if [[ ! -f "$CARRY/manifest.json" ]]; then
  echo "gpu_check: $CARRY/manifest.json not found: run 'bash bench/gpu_check.sh --prepare-only' on the CPU first and carry $CARRY" >&2
  exit 1
fi
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
T0=$(date +%s)
if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/wheels/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
for mod in pyogrio geopandas; do  # spacenet7 imports them; nothing on the device reads or writes vector files
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    export PYTHONPATH="$PWD/$CARRY/stubs/$mod${PYTHONPATH:+:$PYTHONPATH}"
  fi
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "gpu_check: installed in $(( $(date +%s) - T0 )) s"
exec "$PY" bench/gpu_check.py --carry "$CARRY" --out "$OUT" --started "$T0" "$@"
