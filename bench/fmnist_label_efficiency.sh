#!/usr/bin/env bash
# Issue 3's benchmark: SimCLR, BYOL and VAE pretrained on Fashion-MNIST (tiny ConvNet), then linear
# probe, kNN and fine-tuning vs supervised from scratch and raw-pixel logistic regression at
# 1/class, 10/class, 10% and 100% labels. Usage: bench/fmnist_label_efficiency.sh [SELFSUP_BIN] [OUT]
#
# Pretraining budget: 2 epochs per method (469 steps of 256 images), about what the tiny ConvNet's
# SimCLR does in ≈ 10 minutes on a quiet 2-core machine (225 images/s end to end, see
# bench/README.md). An epoch budget (not --minutes) keeps the result independent of how busy the
# machine is; the wall time of each run is in OUT/<method>/state.json.
set -euo pipefail
BIN=${1:-target/release/selfsup}
OUT=${2:-runs/fmnist-label-efficiency}
"$BIN" experiment label-efficiency --data fashion-mnist --methods simclr,byol,vae \
    --labels 1/class,10/class,10%,100% --encoder tiny --epochs 2 --batch-size 256 \
    --draws 2 --finetune-steps 200 --seed 0 --out "$OUT" --json "$OUT/results.json"
