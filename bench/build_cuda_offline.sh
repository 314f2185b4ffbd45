#!/usr/bin/env bash
# Builds the CUDA train_step benchmark (and, with --cli, the `selfsup` binary) on a machine
# without network access (issue 6 item 5).
#
# burn's CUDA backend links cubecl's LLVM (NVPTX) kernel compiler, whose build script downloads
# a prebuilt LLVM bundle; offline that fails. This build instead:
#   - selects cubecl's other CUDA compiler, NVRTC (CUDA C++ compiled by the CUDA runtime compiler
#     when a kernel first runs): feature `cuda-nvrtc`, which never calls LLVM;
#   - sets DOCS_RS=1, which makes the two LLVM build scripts (tracel-llvm-bundler, cubecl-llvm)
#     skip the download and their C++ shims (no other crate in the tree reads DOCS_RS);
#   - links a stub for every LLVM function left undefined (generated from the binary's own
#     undefined symbols): Rust calls external functions through the GOT, bound at load time, so
#     the never-called functions must exist. A stub that is called anyway stops the process with
#     its name, it never computes anything.
# The script then checks that no undefined symbol is left that the system libraries lack.
# With network access, `cargo build --release --features cuda` is the normal build.
#
# Usage: bench/build_cuda_offline.sh [--cli]     the last line printed is train_step's path
# CARGO_TARGET_DIR defaults to target-cuda (its flags differ from the CPU build's: keep them apart).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-target-cuda}")
stubs_dir=$CARGO_TARGET_DIR/llvm-stubs
stubs=$stubs_dir/llvm_stubs.o
mkdir -p "$stubs_dir"
[[ -f $stubs ]] || { : >"$stubs_dir/empty.c"; cc -c -o "$stubs" "$stubs_dir/empty.c"; }
export DOCS_RS=1
export RUSTFLAGS="-C link-arg=-Wl,--unresolved-symbols=ignore-all -C link-arg=$stubs"

build() {
  [[ ${cli:-} == 1 ]] && cargo build --release -p selfsup-cli --features cuda-nvrtc >&2
  cargo bench --profile release --no-run -p selfsup --bench train_step --features cuda-nvrtc \
    --message-format json | python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "train_step":
        exe = m.get("executable") or exe
if not exe:
    sys.exit("build_cuda_offline.sh: no train_step executable in cargo output")
print(exe)
'
}

# Undefined dynamic symbols of $1 that none of its libraries defines.
missing() {
  local libs
  libs=$(ldd "$1" | awk '$3 ~ /^\// {print $3}')
  comm -23 <(nm -D --undefined-only "$1" | awk '{print $2}' | sed 's/@.*//' | sort -u) \
    <(for l in $libs /lib64/ld-linux-x86-64.so.2; do nm -D --defined-only "$l" | awk '{print $3}'; done |
      sed 's/@.*//' | sort -u) |
    grep -v -E '^(_ITM_|__gmon_start__$|pidfd_|posix_spawn_file_actions_addchdir)' || true
}

cli=0
[[ ${1:-} == --cli ]] && cli=1
exe=$(build)
syms=$(missing "$exe")
if [[ -n $syms ]] && grep -q -v -E '^(LLVM|cubecl_)' <<<"$syms"; then
  echo "build_cuda_offline.sh: undefined symbols that are not LLVM's:" >&2
  grep -v -E '^(LLVM|cubecl_)' <<<"$syms" >&2
  exit 1
fi
if [[ -n $syms ]]; then
  echo "build_cuda_offline.sh: $(wc -l <<<"$syms") LLVM functions get stubs; relinking" >&2
  {
    echo '#include <stdio.h>'
    echo '#include <stdlib.h>'
    echo 'static void die(const char *f) { fprintf(stderr, "%s was called, but this CUDA build has no LLVM (bench/build_cuda_offline.sh: NVRTC only)\n", f); abort(); }'
    for s in $syms; do echo "void $s(void) { die(\"$s\"); }"; done
  } >"$stubs_dir/llvm_stubs.c"
  cc -O1 -fPIC -c -o "$stubs" "$stubs_dir/llvm_stubs.c"
  # The link arguments did not change, so make cargo relink the final binaries.
  touch crates/selfsup/benches/train_step.rs crates/selfsup-cli/src/main.rs
  exe=$(build)
  syms=$(missing "$exe")
  if [[ -n $syms ]]; then
    echo "build_cuda_offline.sh: still undefined after the stubs:" >&2
    echo "$syms" >&2
    exit 1
  fi
fi
echo "$exe"
