#!/usr/bin/env bash
# Issue 3's benchmark: SimCLR, BYOL and VAE pretrained on Fashion-MNIST (tiny ConvNet), then linear
# probe, kNN and fine-tuning vs supervised from scratch, a random-init encoder and raw-pixel
# logistic regression at 1/class, 10/class, 10% and 100% labels.
# Usage: bench/fmnist_label_efficiency.sh [SELFSUP_BIN] [OUT]
#
# BUDGET (default `--minutes 15`): pretraining per method, the issue's protocol. A time budget
# depends on how busy the machine is (steps reached are in OUT/<method>/state.json); set
# BUDGET="--epochs 2" for a machine-independent run (469 steps of 256 images).
# POOL (default 3): frozen protocols read the last 7×7 feature map average-pooled onto a 3×3 grid
# (128·9 = 1,152 features) instead of the global average (128); POOL=1 gives the global average.
# Finished runs in OUT/<method> are reused, so rerunning only redoes the evaluation.
set -euo pipefail
BIN=${1:-target/release/selfsup}
OUT=${2:-runs/fmnist-label-efficiency}
BUDGET=${BUDGET:---minutes 15}
POOL=${POOL:-3}
# shellcheck disable=SC2086
"$BIN" experiment label-efficiency --data fashion-mnist --methods simclr,byol,vae \
    --labels 1/class,10/class,10%,100% --encoder tiny $BUDGET --batch-size 256 \
    --pool-grid "$POOL" --draws 2 --finetune-steps 200 --seed 0 --out "$OUT" \
    --json "$OUT/results.json"
