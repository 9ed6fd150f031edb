"""Build the torch operator library (kernels/torch/ops.cpp + the CPU twins + the CUDA kernels) with
torch.utils.cpp_extension, bypassing CMake; gpu_check.sh's fallback when the CMake build against torch fails.

Usage: python -u benchmarks/gpu_build_ops.py BUILD_DIR
Env:   TORCH_CUDA_ARCH_LIST (e.g. 9.0) and CUDA_HOME, as cpp_extension reads them.
Prints the library's path on its last line; exits non-zero when the build fails or has no CUDA kernels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build = Path(sys.argv[1]).resolve()
    build.mkdir(parents=True, exist_ok=True)
    sources = [KERNELS / "torch" / "ops.cpp", *sorted((KERNELS / "src").glob("*_cpu.cpp")), *sorted((KERNELS / "src").glob("*.cu"))]
    # Same flags as CMakeLists.txt: strict IEEE float, so the CPU twins stay bit-identical to the CUDA kernels.
    lib = cpp_extension.load(
        name="compressor_torch_ops",
        sources=[str(s) for s in sources],
        extra_include_paths=[str(KERNELS / "include")],
        extra_cflags=["-O3", "-std=c++17", "-fno-fast-math", "-ffp-contract=off", "-DCOMPRESSOR_WITH_CUDA"],
        extra_cuda_cflags=["-O3", "-std=c++17"],
        build_directory=str(build),
        is_python_module=False,
        verbose=True,
    )
    path = Path(lib) if isinstance(lib, str) else build / "compressor_torch_ops.so"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("compressor::int8_conv2d", "CUDA"):
        print("built, but compressor::int8_conv2d has no CUDA kernel", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
