#!/usr/bin/env bash
# Score a trained run on another place: the generalization protocol of docs/real-data.md.
#
#   scripts/other_place.sh TRAIN_RUN DATA_ROOT OUT_RUN [pipeline overrides...]
#
# TRAIN_RUN's fine-tuned model (TRAIN_RUN/train/checkpoints/last.ckpt) predicts every month of
# DATA_ROOT (an SN7 layout: one root, or several joined by ':'); the footprints are vectorized,
# tracked, exported and scored with recipe=real's settings on the same held-out band as a run on
# that data would use (the right quarter of each AOI), so the figures compare with TRAIN_RUN's own.
# Nothing is trained or copied: OUT_RUN/train is a link to TRAIN_RUN/train.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 TRAIN_RUN DATA_ROOT OUT_RUN [pipeline overrides...]" >&2
    exit 2
fi
train_run=$1 data_root=$2 out_run=$3
shift 3
ckpt="$train_run/train/checkpoints/last.ckpt"
if [ ! -f "$ckpt" ]; then
    echo "$0: error: $ckpt: not found (train TRAIN_RUN first, e.g. make real)" >&2
    exit 1
fi
mkdir -p "$out_run"
ln -sfn "$(realpath "$train_run/train")" "$out_run/train"
SPACENET7="${SPACENET7:-$(dirname "$0")/../.venv/bin/spacenet7}"
exec "$SPACENET7" pipeline recipe=real run_dir="$out_run" data_root="$data_root" pretrain=null \
    'stages=[predict,vectorize,export,evaluate]' "$@"
