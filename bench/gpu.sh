#!/usr/bin/env bash
# Issue 6 item 5: the training-step benchmark on a GPU, selfsup (burn CUDA, fp32) against PyTorch
# CUDA (fp32, no TF32), alternating processes as on the CPU. Meant to run as ONE prepared command
# on a GPU machine, from the repository root, well inside 10 minutes:
#
#   bench/gpu.sh BIN [OUT_DIR]
#
# BIN: train_step built with CUDA here (bench/build_cuda_offline.sh prints its path; copy it into
# the tree, e.g. gpu-bin/train_step, and carry it). python3 there must have torch with CUDA.
# Writes OUT_DIR/compare_gpu.json and compare_gpu.log (OUT_DIR defaults to $OUT, else
# bench/results).
set -uo pipefail
bin=$1
out=${2:-${OUT:-bench/results}}
mkdir -p "$out"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  # A short first run: a failure to start (driver, NVRTC) shows in seconds, not after a round.
  "$bin" --device cuda --case gpt,matmul --steps 3 --warmup 2 || exit 1
  PYTHONUNBUFFERED=1 python3 bench/compare.py --device cuda --rust-bin "$bin" --python python3 \
    --rounds 3 --steps 20 --warmup 5 --no-gpt-math --cases simclr_a,simclr_b,gpt,matmul \
    --json "$out/compare_gpu.json"
} 2>&1 | tee "$out/compare_gpu.log"
