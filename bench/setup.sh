#!/usr/bin/env bash
# Installs the PyTorch reference for bench/compare.py into a venv OUTSIDE the repository.
#
#   bench/setup.sh [VENV]      default VENV: $BENCH_VENV or /work/venv-bench
#
# Only PyPI is reachable (not the CPU-only wheel index), so this installs the default Linux wheel,
# torch 2.15.0+cu132, and runs it on the CPU. That wheel bundles MKL and oneDNN for the CPU, but its
# libtorch_cpu.so / libtorch_cuda.so are linked against the CUDA runtime libraries (libcudart,
# libcupti, cuBLAS, cuDNN, ...), so `pip install --no-deps torch` gives a torch that fails at
# `import torch` (libcudart.so.13 not found): the nvidia-* wheels must come too. About 3.5 GB
# downloaded, 5.4 GB in the venv, 2-4 minutes. Idempotent.
set -euo pipefail
VENV=${1:-${BENCH_VENV:-/work/venv-bench}}
TORCH_VERSION=2.15.0
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" numpy
fi
"$VENV/bin/python" - <<'PY'
import torch
torch.set_num_threads(2)
x = torch.randn(64, 64, requires_grad=True)
(x @ x).sum().backward()
print(f"torch {torch.__version__} OK on CPU: MKL {torch.backends.mkl.is_available()}, "
      f"oneDNN {torch.backends.mkldnn.is_available()}, {torch.get_num_threads()} threads")
PY
echo "PyTorch venv: $VENV (use: python3 bench/compare.py --python $VENV/bin/python)"
