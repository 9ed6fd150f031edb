#!/usr/bin/env bash
# GPU check of the fused INT8 kernels, made to give its numbers on the first try of one bare, short GPU lease
# (docs/gpu.md has the exact call). One overall deadline: every step gets min(its own cap, the time left), and is
# recorded in $OUT/steps.tsv as passed, failed or skipped, with the reason. Failures are recorded, not fatal.
#
#   probe            nvidia-smi, nvcc, cmake, $PYTHON's torch; without a visible GPU every later step is skipped
#   build_kernels    CMake build of the CPU twins, CUDA kernels, their test and bench_kernels_cuda, torch kept out
#                    (-DCOMPRESSOR_TORCH_OPS=OFF), for the probed compute capability
#   bit_exact        test_kernels_cuda: CUDA kernels vs CPU twins, bit for bit (rounding ties included)
#   bench_kernels    bench_kernels_cuda: ResNet-56 / MobileNetV2 layer shapes at batch 256, FP16 cuDNN baseline
#   build_torch_ops  the torch operators (only with a CUDA build of torch): CMake with TORCH_CUDA_ARCH_LIST and
#                    CUDA_TOOLKIT_ROOT_DIR set, else torch.utils.cpp_extension (benchmarks/gpu_build_ops.py)
#   models           benchmarks/gpu_models.py: real teachers, CUDA vs CPU parity, top-1, latency table
#   sanitizer_*      compute-sanitizer memcheck and racecheck on test_kernels_cuda --quick, last
#
# Usage: benchmarks/gpu_check.sh   (no arguments; exits 0 when it ran to the end, 2 on a usage error)
# Env:   OUT (results folder, default build/gpu-check), GPU_CHECK_DEADLINE_S (overall deadline, default 420),
#        PYTHON (interpreter with torch, default python3), JOBS (default nproc), TEACHERS (default
#        gpu_payload/teachers, else ../shared/data/teachers), CUDA_ARCH (e.g. 90; default from nvidia-smi, else 90),
#        CUDNN_ROOT (default: nvidia/cudnn in $PYTHON's site-packages, when there).
# Files in $OUT: gpu_check.log, steps.tsv, probe.txt, bench_kernels.csv, models.json (at most 8, for the device tool).
set -u -o pipefail

usage() {
  echo "usage: benchmarks/gpu_check.sh (no arguments; settings through OUT, GPU_CHECK_DEADLINE_S, PYTHON, JOBS," \
    "TEACHERS, CUDA_ARCH, CUDNN_ROOT)" >&2
  exit 2
}
(($# == 0)) || usage
budget=${GPU_CHECK_DEADLINE_S:-420}
[[ $budget =~ ^[0-9]+$ ]] || usage

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/build/gpu-check}
mkdir -p "$out" || usage
out=$(cd "$out" && pwd)
rm -f "$out"/gpu_check.log "$out"/steps.tsv "$out"/probe.txt "$out"/bench_kernels.csv "$out"/models.json

py=${PYTHON:-python3}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
work=$root/build/gpu-check-work  # build trees; never under $OUT, which should hold only the results
kbuild=$work/kernels
obuild=$work/torch-ops
sanitizer_reserve=60  # seconds kept back for the sanitizer while the torch steps run
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 COMPRESSOR_CACHE=$work/cache
# Line-buffered output from C/C++ programs writing into the log pipe, so a step killed at its cap keeps its output.
unbuf=()
command -v stdbuf >/dev/null && unbuf=(stdbuf -oL -eL)

deadline=$((SECONDS + budget))

record() {  # step status seconds reason
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$out/steps.tsv"
  echo "=== $1: $2 (${3}s)${4:+: $4}"
}

skip() { record "$1" skipped 0 "$2"; }

# run_step NAME CAP RESERVE CMD...: runs CMD under min(CAP, time left - RESERVE) seconds and records the outcome.
run_step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((deadline - SECONDS - reserve))
  if ((left < 10)); then
    skip "$name" "no time left before the ${budget}s deadline"
    return 1
  fi
  ((cap > left)) && cap=$left
  echo
  echo "=== $name: start (cap ${cap}s, $((deadline - SECONDS))s left, $(date -u +%T) UTC)"
  local t0=$SECONDS rc
  timeout -k 5 "$cap" ${unbuf[@]+"${unbuf[@]}"} "$@"
  rc=$?
  if ((rc == 0)); then
    record "$name" passed $((SECONDS - t0)) ""
    return 0
  elif ((rc == 124 || rc == 137)); then
    record "$name" failed $((SECONDS - t0)) "timed out at its ${cap}s cap"
  elif ((rc == 77)); then
    record "$name" failed $((SECONDS - t0)) "exit code 77: the program saw no CUDA device"
  else
    record "$name" failed $((SECONDS - t0)) "exit code $rc"
  fi
  return 1
}

# ---- step bodies, run through `bash -c` so that `timeout` can stop them ----

build_kernels() {
  local args=(-S "$root" -B "$kbuild" -DCMAKE_BUILD_TYPE=Release -DCOMPRESSOR_CUDA=ON -DCOMPRESSOR_TORCH_OPS=OFF
              "-DCMAKE_CUDA_ARCHITECTURES=$arch")
  [[ -n $cudnn_root ]] && args+=("-DCUDNN_ROOT=$cudnn_root")
  if cmake "${args[@]}" && cmake --build "$kbuild" -j "$jobs"; then
    return 0
  fi
  # The FP16 baseline is the only part compiled against headers this repository was not tested with.
  echo "--- build failed; again without the cuDNN baseline"
  cmake "${args[@]}" -DCOMPRESSOR_BENCH_CUDNN=OFF && cmake --build "$kbuild" -j "$jobs"
}

build_torch_ops() {
  rm -f "$obuild/libcompressor_torch_ops.so" "$obuild-ext/compressor_torch_ops.so"
  # torch's CMake files abort when they cannot find the toolkit from nvcc or autodetect the GPU (compute_50,
  # which nvcc 13 rejects); naming both avoids that.
  export TORCH_CUDA_ARCH_LIST=$arch_dotted CUDA_TOOLKIT_ROOT_DIR=$cuda_root CUDA_HOME=$cuda_root
  if cmake -S "$root" -B "$obuild" -DCMAKE_BUILD_TYPE=Release -DCOMPRESSOR_CUDA=ON -DCOMPRESSOR_TORCH_OPS=ON \
      -DCOMPRESSOR_BENCH_CUDNN=OFF "-DCOMPRESSOR_PYTHON=$py" "-DCMAKE_CUDA_ARCHITECTURES=$arch" \
      "-DCUDA_TOOLKIT_ROOT_DIR=$cuda_root" && cmake --build "$obuild" -j "$jobs" --target compressor_torch_ops &&
    "$py" -c 'import sys, torch
torch.ops.load_library(sys.argv[1])
assert torch._C._dispatch_has_kernel_for_dispatch_key("compressor::int8_conv2d", "CUDA"), "built without CUDA"
print("torch ops with CUDA kernels:", sys.argv[1])' "$obuild/libcompressor_torch_ops.so"; then
    return 0
  fi
  rm -f "$obuild/libcompressor_torch_ops.so"
  echo "--- CMake build of the torch ops failed; building with torch.utils.cpp_extension"
  "$py" -u "$root/benchmarks/gpu_build_ops.py" "$obuild-ext"
}

export -f build_kernels build_torch_ops
export root kbuild obuild jobs py

main() {
  printf 'step\tstatus\tseconds\treason\n' >"$out/steps.tsv"
  echo "=== gpu_check: $(date -u '+%F %T') UTC, deadline ${budget}s, results in $out"

  # ---- probe ----
  local t0=$SECONDS gpu_rc=1 smi="" cap="" nvcc="" san="" torch_info="" torch_cuda=0 no_gpu=""
  if command -v nvidia-smi >/dev/null; then
    smi=$(timeout 30 nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm \
      --format=csv,noheader 2>&1)
    gpu_rc=$?
    [[ $gpu_rc == 0 && -n $smi ]] && cap=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
  else
    smi="nvidia-smi not found"
  fi
  ((gpu_rc == 0)) || no_gpu="no NVIDIA GPU visible (nvidia-smi: $(echo "$smi" | head -1 | cut -c1-120))"
  nvcc=$(command -v nvcc || true)
  [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  if [[ -n $nvcc ]]; then
    export CUDACXX=$nvcc
    cuda_root=$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)
    san=$(command -v compute-sanitizer || true)
    [[ -z $san && -x $cuda_root/bin/compute-sanitizer ]] && san=$cuda_root/bin/compute-sanitizer
  fi
  torch_info=$(timeout 60 "$py" -c 'import torch; print(int(torch.cuda.is_available()), torch.__version__, torch.version.cuda)' \
    2>/dev/null | tail -1)
  torch_info=${torch_info:-"torch not importable"}
  [[ $torch_info == 1\ * ]] && torch_cuda=1
  arch=${CUDA_ARCH:-${cap//./}}
  arch=${arch:-90}
  arch_dotted="${arch:0:${#arch}-1}.${arch: -1}"
  cudnn_root=${CUDNN_ROOT:-}
  if [[ -z $cudnn_root && $torch_cuda == 1 ]]; then
    cudnn_root=$(timeout 30 "$py" -c 'import importlib.util as u; s = u.find_spec("nvidia.cudnn"); print(list(s.submodule_search_locations)[0])' 2>/dev/null || true)
  fi
  export arch arch_dotted cudnn_root cuda_root="${cuda_root:-}"
  {
    echo "nvidia-smi: $smi"
    echo "compute capability: ${cap:-unknown}; building for sm_$arch"
    echo "nvcc: ${nvcc:-not found}"
    [[ -n $nvcc ]] && "$nvcc" --version | tail -2
    echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo not found)"
    echo "compute-sanitizer: ${san:-not found}"
    echo "python: $py; torch (cuda available, version, cuda): $torch_info"
    echo "cuDNN for the FP16 baseline: ${cudnn_root:-not found}"
    echo "teachers: $teachers"
    echo "jobs: $jobs; deadline: ${budget}s"
  } | tee "$out/probe.txt"
  record probe passed $((SECONDS - t0)) ""

  local steps=(build_kernels bit_exact bench_kernels build_torch_ops models sanitizer_memcheck sanitizer_racecheck)
  if [[ -n $no_gpu ]]; then
    for s in "${steps[@]}"; do skip "$s" "$no_gpu"; done
    return 0
  fi

  # ---- torch-free kernel build, bit-exactness, pure-CUDA benchmark ----
  local built=""
  if [[ -z $nvcc ]]; then
    skip build_kernels "nvcc not found (PATH, /usr/local/cuda/bin)"
  elif ! command -v cmake >/dev/null; then
    skip build_kernels "cmake not found"
  else
    run_step build_kernels 180 0 bash -c build_kernels &&
      [[ -x $kbuild/test_kernels_cuda && -x $kbuild/bench_kernels_cuda ]] && built=1
  fi
  local why_unbuilt="the CUDA kernels were not built (see build_kernels)"
  if [[ -n $built ]]; then
    run_step bit_exact 90 0 "$kbuild/test_kernels_cuda"
    # The rpath finds cuDNN; the path also covers a library it loads by name.
    LD_LIBRARY_PATH=${cudnn_root:+$cudnn_root/lib:}${LD_LIBRARY_PATH:-} \
      run_step bench_kernels 120 0 "$kbuild/bench_kernels_cuda" "$out/bench_kernels.csv"
  else
    skip bit_exact "$why_unbuilt"
    skip bench_kernels "$why_unbuilt"
  fi

  # ---- torch operators and whole models ----
  local reserve=0 lib=""
  [[ -n $built && -n $san ]] && reserve=$sanitizer_reserve
  if [[ $torch_cuda != 1 ]]; then
    skip build_torch_ops "$py has no CUDA build of torch or sees no GPU ($torch_info)"
    skip models "$py has no CUDA build of torch or sees no GPU ($torch_info)"
  elif [[ -z $nvcc ]]; then
    skip build_torch_ops "nvcc not found"
    skip models "the torch ops were not built (nvcc not found)"
  else
    if run_step build_torch_ops 240 "$reserve" bash -c build_torch_ops; then
      for f in "$obuild/libcompressor_torch_ops.so" "$obuild-ext/compressor_torch_ops.so"; do
        [[ -z $lib && -f $f ]] && lib=$f
      done
    fi
    if [[ -n $lib ]]; then
      # The script stops starting new latency figures 20 s before its own cap.
      local left=$((deadline - SECONDS - reserve))
      local model_cap=$((left < 240 ? left : 240))
      COMPRESSOR_KERNELS_LIB=$lib PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} \
        run_step models 240 "$reserve" "$py" -u "$root/benchmarks/gpu_models.py" --out "$out/models.json" \
        --teachers "$teachers" --budget-s $((model_cap > 40 ? model_cap - 20 : 20))
    else
      skip models "the torch ops were not built (see build_torch_ops)"
    fi
  fi

  # ---- compute-sanitizer, last ----
  if [[ -z $built ]]; then
    skip sanitizer_memcheck "$why_unbuilt"
    skip sanitizer_racecheck "$why_unbuilt"
  elif [[ -z $san ]]; then
    skip sanitizer_memcheck "compute-sanitizer not found"
    skip sanitizer_racecheck "compute-sanitizer not found"
  else
    run_step sanitizer_memcheck 90 0 "$san" --tool memcheck --error-exitcode 9 "$kbuild/test_kernels_cuda" --quick
    run_step sanitizer_racecheck 90 0 "$san" --tool racecheck --error-exitcode 9 "$kbuild/test_kernels_cuda" --quick
  fi
}

teachers=${TEACHERS:-}
if [[ -z $teachers ]]; then
  teachers=$root/gpu_payload/teachers
  [[ -d $teachers ]] || teachers=$root/../shared/data/teachers
fi

main 2>&1 | tee -a "$out/gpu_check.log"
echo
echo "=== steps ($out/steps.tsv)"
column -t -s $'\t' "$out/steps.tsv" 2>/dev/null || cat "$out/steps.tsv"
exit 0
