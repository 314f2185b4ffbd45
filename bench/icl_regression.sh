#!/usr/bin/env bash
# Issue 5's in-context regression benchmark (Garg et al. 2022) at d = 5: error vs k at k = 5, 10, 20
# against least squares, 3-NN, averaging and, with noise, ridge (the Bayes-optimal predictor).
# Usage: bench/icl_regression.sh [SELFSUP_BIN] [OUT]
#
# MINUTES (default 20) of training; the step count is fixed from the speed of the first steps, so
# run it on a quiet machine. NOISE (default 0) is σ of the noise on y. The curriculum (2 → 5
# dimensions, 5 → 21 pairs, 8 stages) ends after 8 × 300 = 2,400 steps instead of halfway through.
set -euo pipefail
BIN=${1:-target/release/selfsup}
OUT=${2:-runs/icl-regression}
MINUTES=${MINUTES:-20}
NOISE=${NOISE:-0}
"$BIN" experiment icl-regression --dim 5 --points 20 --noise "$NOISE" --layers 4 --d-model 64 \
    --heads 4 --batch-size 64 --lr 3e-4 --curriculum-interval 300 --minutes "$MINUTES" --seed "${SEED:-0}" \
    --out "$OUT" --json "$OUT.json"
