#!/usr/bin/env bash
# GPU acceptance check for the fused INT8 kernels (issue 7), written to run unattended in one short GPU session
# (about 3-5 minutes on a 16-core H100 box; every step has its own timeout and a failure does not stop the rest):
#   1. build CPU twins, CUDA kernels (native arch) and torch ops with kernels/build.sh, then ctest
#   2. CUDA-vs-CPU-twin bit-exactness test (poisoned outputs), verbose
#   3. compute-sanitizer memcheck and racecheck on the dense dp4a conv kernel (test --quick)
#   4. Int8Model on CUDA vs CPU parity, per-layer-shape kernel throughput, and the latency table:
#      cifar_resnet56 / cifar_mobilenetv2 at batch 1 and 256 for torch FP32, torch FP16 (eager and CUDA graph) and
#      torch-int8, with achieved TOPS = 2*MACs*batch/time against the card's dense peak.
# Usage: benchmarks/gpu_check.sh
# Env:   PYTHON (interpreter with a CUDA build of torch; default python3), JOBS (default nproc),
#        OUT (results folder; default build/gpu-check), TEACHERS (default ../shared/data/teachers; random
#        weights where a teacher is missing), CUDA_ARCHS (default: the visible GPU's compute capability).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/build/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
py=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}
build=$root/build/gpu-kernels
failures=()
step() { echo; echo "=== $1 [$(date -u +%T)]"; }
fail() { echo "!!! $1"; failures+=("$1"); }

step "device"
nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.sm,driver_version --format=csv || fail "nvidia-smi"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
archs=${CUDA_ARCHS:-${cap:-80;90}}
nvcc --version | tail -1 || fail "nvcc missing"
torch_cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()), torch.__version__, torch.version.cuda)' \
  2>/dev/null || echo "0 none none")
echo "python: $py  torch (cuda available, version, cuda): $torch_cuda"

step "build (CUDA_ARCHS=$archs, -j$jobs)"
SECONDS=0
if [[ ${torch_cuda%% *} == 1 ]]; then
  PYTHON=$py JOBS=$jobs CUDA_ARCHS=$archs timeout 420 kernels/build.sh "$build" || fail "build.sh with torch ops (build or ctest)"
  if [[ ! -f $build/libcompressor_torch_ops.so ]]; then
    echo "torch ops did not build; building the kernels alone"
    COMPRESSOR_TORCH_OPS=OFF JOBS=$jobs CUDA_ARCHS=$archs timeout 300 kernels/build.sh "$build-notorch" || true
    build=$build-notorch
  fi
else
  echo "no CUDA torch for $py: kernels and CUDA tests only, no timing table"
  COMPRESSOR_TORCH_OPS=OFF JOBS=$jobs CUDA_ARCHS=$archs timeout 420 kernels/build.sh "$build" || fail "build.sh"
fi
echo "build step: ${SECONDS}s"

step "CUDA kernels vs CPU twins (bit-exact, poisoned outputs)"
if [[ -x $build/test_kernels_cuda ]]; then
  timeout 120 "$build/test_kernels_cuda"; rc=$?
  [[ $rc == 0 ]] || fail "test_kernels_cuda exit $rc (77 = no device)"
else
  fail "test_kernels_cuda was not built"
fi

step "compute-sanitizer on the dense dp4a conv kernel"
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x $san && -x $build/test_kernels_cuda ]]; then
  for tool in memcheck racecheck; do
    timeout 180 "$san" --tool "$tool" --error-exitcode 9 "$build/test_kernels_cuda" --quick || fail "compute-sanitizer $tool"
  done
else
  fail "compute-sanitizer not found"
fi

if [[ -f $build/libcompressor_torch_ops.so ]]; then
  step "parity and timing"
  export COMPRESSOR_KERNELS_LIB=$build/libcompressor_torch_ops.so PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
  export TEACHERS=${TEACHERS:-$root/../shared/data/teachers} RESULTS=$out/gpu_check.json
  timeout 420 "$py" - <<'PY' || fail "parity/timing script"
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor import kernels
from compressor.fusion import fold_batchnorm
from compressor.gpu_backends import make_torch_cuda_runner
from compressor.zoo import ZOO

torch.backends.cudnn.benchmark = True
kernels.load_ops()
gpu = torch.cuda.get_device_name()
# Dense (non-sparse) datasheet peaks: INT8 TOPS, FP16 TFLOPS (gpu-and-distributed.md section 1.1).
if "H100" in gpu and "PCIe" in gpu:
    peak = {"int8": 1513.0, "fp16": 756.0}
elif "H100" in gpu and "NVL" in gpu:
    peak = {"int8": 1671.0, "fp16": 835.0}
elif "H100" in gpu or "H200" in gpu or "H800" in gpu:
    peak = {"int8": 1979.0, "fp16": 989.0}
elif "A100" in gpu:
    peak = {"int8": 624.0, "fp16": 312.0}
else:
    peak = {}
print(f"GPU: {gpu}; dense peaks used: {peak or 'unknown card'}")
teachers = Path(os.environ["TEACHERS"])
files = {"cifar_resnet56": "cifar10_resnet56.pt", "cifar_mobilenetv2": "cifar10_mobilenetv2_w0.5.pt"}
results = {"gpu": gpu, "peak": peak, "parity": {}, "kernels": [], "models": []}


def measure(fn, budget_s=1.5, min_iters=10, max_iters=300):
    for _ in range(5):
        fn()
    times, t0 = [], time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - t0 < budget_s):
        times.append(fn())
    return statistics.median(times), min(times)


def load(name):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    path = teachers / files[name]
    source = "random weights"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        source = str(path)
    return fold_batchnorm(model).eval(), source


def op_runner(op, *args):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run():
        start.record()
        op(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run


def model_runner(backend, model, int8, batch):
    if backend == "torch-int8":
        return kernels.make_torch_int8_runner(int8, batch, "cuda")
    return make_torch_cuda_runner(model, batch, fp16="fp16" in backend, cuda_graph=backend.endswith("graph"))


# Kernel throughput on ResNet-56's 3x3 conv shapes and MobileNetV2 depthwise shapes, batch 256.
for kind, c, hw in (("conv", 16, 32), ("conv", 32, 16), ("conv", 64, 8), ("dw", 96, 32), ("dw", 192, 16)):
    try:
        x = torch.randint(-128, 128, (256, hw, hw, c), dtype=torch.int8, device="cuda")
        w = torch.randint(-127, 128, (c, 3, 3, 1 if kind == "dw" else c), dtype=torch.int8, device="cuda")
        s, b = torch.full((c,), 1e-3, device="cuda"), torch.zeros(c, device="cuda")
        op = torch.ops.compressor.int8_dwconv2d if kind == "dw" else torch.ops.compressor.int8_conv2d
        ms, _ = measure(op_runner(op, x, w, s, b, None, 1.0, [1, 1], [1, 1], "relu", 0.05), budget_s=0.5)
        macs = 256 * hw * hw * c * 9 * (1 if kind == "dw" else c)
        row = {"kernel": kind, "channels": c, "hw": hw, "ms": ms, "tops": 2 * macs / ms / 1e9,
               "gbps": 2 * x.numel() / ms / 1e6}
        results["kernels"].append(row)
        pct = f"{100 * row['tops'] / peak['int8']:.1f}% of INT8 peak" if peak else ""
        print(f"{kind:4s} C={c:3d} {hw}x{hw} b256: {ms:.4f} ms  {row['tops']:.1f} TOPS  {row['gbps']:.0f} GB/s  {pct}")
    except Exception as exc:
        print(f"kernel {kind} C={c}: FAILED {type(exc).__name__}: {exc}")

# Real CIFAR-10 images from the repository's demo subset for calibration and parity (random if absent).
try:
    from compressor.data import Preprocess, load_dataset

    test = load_dataset(Path("demo/cifar10-demo.tar.gz")).test
    images, calib = Preprocess()(test.images[:256]), Preprocess()(test.images[-128:])
except Exception as exc:
    print(f"demo images unavailable ({type(exc).__name__}: {exc}); calibrating on random inputs")
    images, calib = torch.randn(256, 3, 32, 32), torch.randn(128, 3, 32, 32)
rows = []
for name in files:
    model, source = load(name)
    print(f"\n{name}: {source}")
    scales = kernels.calibrate_input_scales(model, [calib])
    int8 = kernels.build_int8_model(model, scales)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    macs = counter.get_total_flops() / 2
    # Parity: the kernels are bit-exact twins, so CUDA and CPU Int8Model differ only in the float tail.
    x = images
    cpu_logits = int8(x)
    gpu_logits = int8.to("cuda")(x.cuda()).cpu()
    int8.to("cpu")
    with torch.no_grad():
        float_logits = model(x)
    parity = {
        "max_abs_diff_cuda_vs_cpu": float((gpu_logits - cpu_logits).abs().max()),
        "top1_cuda_vs_cpu": float((gpu_logits.argmax(1) == cpu_logits.argmax(1)).float().mean()),
        "images": len(x),
        "top1_int8_vs_float": float((cpu_logits.argmax(1) == float_logits.argmax(1)).float().mean()),
    }
    results["parity"][name] = parity
    print(f"parity: {parity}")
    for batch in (1, 256):
        for backend in ("torch-fp32", "torch-fp16", "torch-fp16-graph", "torch-int8"):
            try:
                median, best = measure(model_runner(backend, model, int8, batch))
            except Exception as exc:
                print(f"{name} b{batch} {backend}: FAILED {type(exc).__name__}: {exc}")
                continue
            tops = 2 * macs * batch / median / 1e9
            precision = "int8" if backend == "torch-int8" else "fp16" if "fp16" in backend else None
            pct = 100 * tops / peak[precision] if precision in peak else None
            rows.append({"model": name, "batch": batch, "backend": backend, "median_ms": median, "min_ms": best,
                         "img_per_s": batch / median * 1e3, "tops": tops, "pct_peak": pct, "macs": macs})
        torch.cuda.empty_cache()
results["models"] = rows

print(f"\n{'model':18s} {'batch':>5s} {'backend':17s} {'median ms':>10s} {'min ms':>9s} {'img/s':>10s} "
      f"{'TOPS':>8s} {'% peak':>7s}")
for r in rows:
    pct = f"{r['pct_peak']:.2f}" if r["pct_peak"] is not None else "-"
    print(f"{r['model']:18s} {r['batch']:5d} {r['backend']:17s} {r['median_ms']:10.4f} {r['min_ms']:9.4f} "
          f"{r['img_per_s']:10.0f} {r['tops']:8.2f} {pct:>7s}")
print("TOPS = 2*MACs*batch/median time; % peak is against the dense INT8 (torch-int8) or FP16 peak.")
Path(os.environ["RESULTS"]).write_text(json.dumps(results, indent=2))
PY
fi

step "summary"
if ((${#failures[@]})); then
  printf 'FAILED: %s\n' "${failures[@]}"
  exit 1
fi
echo "all GPU checks passed; results in $out"
