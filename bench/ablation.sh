#!/usr/bin/env bash
# Issue 6: the training-step ratio selfsup/PyTorch after each optimization, cumulatively, in one
# session: compare.py (simclr_b, gpt) per configuration, the same Rust binary throughout (the
# kernels and the allocator setting are switched by environment variables, see nn/fused.rs and
# train/alloc.rs). Usage: bench/ablation.sh [TRAIN_STEP_BIN] [OUT_DIR]   (~12 minutes)
set -euo pipefail
BIN=${1:-$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)}
OUT=${2:-bench/results/ablation}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
# name | SELFSUP_NO_FUSED | SELFSUP_MMAP_MAX_DEFAULT
configs=(
  "0-baseline|1|1"
  "1-attention|conv,batchnorm,layernorm,gelu,adamw,linear,simd|1"
  "2-conv|batchnorm,layernorm,gelu,adamw,linear,simd|1"
  "3-batchnorm|layernorm,gelu,adamw,linear,simd|1"
  "4-layernorm|gelu,adamw,linear,simd|1"
  "5-gelu|adamw,linear,simd|1"
  "6-adamw|linear,simd|1"
  "7-mmap-max-0|linear,simd|"
  "8-linear|simd|"
  "9-simd||"
)
for c in "${configs[@]}"; do
  IFS='|' read -r name off mmap <<<"$c"
  echo "== $name (SELFSUP_NO_FUSED='$off' SELFSUP_MMAP_MAX_DEFAULT='$mmap')"
  env ${off:+SELFSUP_NO_FUSED=$off} ${mmap:+SELFSUP_MMAP_MAX_DEFAULT=$mmap} \
    python3 bench/compare.py --cases simclr_b,gpt --rounds "$ROUNDS" --steps 8 --warmup 2 \
    --no-gpt-math --wait-idle 0.3 --rust-bin "$BIN" --json "$OUT/$name.json" | tail -6 | head -4
done
