#!/usr/bin/env bash
# Issue 6 item 5: the training-step benchmark on a GPU, selfsup (burn CUDA, fp32) against PyTorch
# CUDA (fp32, no TF32), alternating processes as on the CPU. Meant to run as ONE prepared command
# on a GPU machine, from the repository root, well inside 10 minutes:
#
#   bench/gpu.sh BIN [OUT_DIR]
#
# BIN: train_step built with CUDA (bench/build_cuda_offline.sh prints its path), optionally
# xz-compressed: stripped it is ≈ 62 MiB, over what a device run may carry with the tree, and
# ≈ 9 MiB compressed. Here, before the run:
#   mkdir -p gpu-bin && strip -o gpu-bin/train_step "$(bench/build_cuda_offline.sh | tail -1)" \
#     && xz -f -9 gpu-bin/train_step        # gpu-bin/ is git-ignored; carry it
# and on the GPU machine: bench/gpu.sh gpu-bin/train_step.xz
# python3 there must have torch with CUDA. Writes OUT_DIR/compare_gpu.json and compare_gpu.log
# (OUT_DIR defaults to $OUT, else bench/results).
set -uo pipefail
bin=$1
out=${2:-${OUT:-bench/results}}
mkdir -p "$out"
if [[ $bin == *.xz ]]; then
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$bin" /tmp/train_step_cuda || exit 1
  chmod +x /tmp/train_step_cuda
  bin=/tmp/train_step_cuda
fi
# cubecl loads NVRTC by name (libnvrtc.so.N): add the CUDA toolkit's and PyTorch's wheel folders.
nvrtc_dirs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for base in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", *site.getsitepackages()]:
    for f in glob.glob(os.path.join(base, "**", "libnvrtc.so*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH=${nvrtc_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  # A short first run: a failure to start (driver, NVRTC) shows in seconds, not after a round.
  "$bin" --device cuda --case gpt,matmul --steps 3 --warmup 2 || exit 1
  PYTHONUNBUFFERED=1 python3 bench/compare.py --device cuda --rust-bin "$bin" --python python3 \
    --rounds 3 --steps 20 --warmup 5 --no-gpt-math --cases simclr_a,simclr_b,gpt,matmul \
    --json "$out/compare_gpu.json"
} 2>&1 | tee "$out/compare_gpu.log"
