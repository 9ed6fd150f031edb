#!/usr/bin/env bash
# Configure, build and test the fused INT8 kernels: CPU twins + ctest always, the PyTorch ops when torch is
# importable, and the CUDA kernels (compile and link; their test needs a GPU and reports "skipped" without one)
# whenever nvcc exists.
#
# Usage: kernels/build.sh [BUILD_DIR]            (default: build/ in the repository root)
# Env:   JOBS (parallel jobs, default 2), PYTHON (interpreter whose torch to build against; default: the active
#        virtualenv, else python3), CUDA_ARCHS (default "80;90"), COMPRESSOR_CUDA=OFF to skip CUDA,
#        COMPRESSOR_TORCH_OPS=OFF to skip the torch ops.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
jobs=${JOBS:-2}

if [[ -z "${CUDACXX:-}" ]] && ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "-DCOMPRESSOR_CUDA=${COMPRESSOR_CUDA:-ON}"
      "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-80;90}")
[[ -n "${PYTHON:-}" ]] && args+=("-DCOMPRESSOR_PYTHON=$PYTHON")
[[ -n "${COMPRESSOR_TORCH_OPS:-}" ]] && args+=("-DCOMPRESSOR_TORCH_OPS=$COMPRESSOR_TORCH_OPS")

SECONDS=0
cmake "${args[@]}"
echo "== configure: ${SECONDS}s"
SECONDS=0
cmake --build "$build" -j "$jobs"
echo "== build (-j$jobs): ${SECONDS}s"
SECONDS=0
ctest --test-dir "$build" --output-on-failure
echo "== ctest: ${SECONDS}s"
