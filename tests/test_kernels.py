"""Fused INT8 kernels: the CMake build and its ctest, the torch ops against a float64 reference, and Int8Model on
the real ResNet-20 teacher. Builds the kernels (CPU + torch ops, plus a compile-and-link of
the CUDA sources whenever nvcc is found) in a temporary directory when the repository has no build/ yet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.zoo import ZOO
from compressor.errors import CompressorError
from compressor.runtime import kernels

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


def _cmake(*args: str) -> None:
    done = subprocess.run(["cmake", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's build/ brought up to date when it is configured with the torch ops, else a fresh CPU-only build."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed; the INT8 kernels cannot be built")
    build = REPO / "build"
    if (build / "CMakeCache.txt").is_file():
        _cmake("--build", str(build), "-j2")
        if (build / kernels.LIB_NAME).is_file():
            return build
    build = tmp_path_factory.mktemp("kernels-build")
    _cmake(
        "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DCOMPRESSOR_PYTHON={sys.executable}"
    )
    _cmake("--build", str(build), "-j2")
    return build


@pytest.fixture(scope="session")
def ops(build_dir: Path) -> Path:
    lib = build_dir / kernels.LIB_NAME
    old = os.environ.get("COMPRESSOR_KERNELS_LIB")
    os.environ["COMPRESSOR_KERNELS_LIB"] = str(lib)
    try:
        yield kernels.load_ops()
    finally:
        if old is None:
            os.environ.pop("COMPRESSOR_KERNELS_LIB", None)
        else:
            os.environ["COMPRESSOR_KERNELS_LIB"] = old


def test_ctest_cpu_twins(build_dir: Path) -> None:
    done = subprocess.run(["ctest", "--test-dir", str(build_dir), "--output-on-failure"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kernels_cpu_twins" in done.stdout


def _reference(x, w, scale, bias, residual, res_scale, stride, padding, act, out_scale, depthwise):
    """float64 F.conv2d on the dequantized operands (integer values; scales folded into `scale`), same epilogue."""
    groups = x.shape[-1] if depthwise else 1
    xd = x.double().permute(0, 3, 1, 2)
    wd = w.double().permute(0, 3, 1, 2)
    acc = F.conv2d(xd, wd, stride=stride, padding=padding, groups=groups).permute(0, 2, 3, 1)
    y = acc * scale.double() + (bias.double() if bias is not None else 0.0)
    if residual is not None:
        y = y + res_scale * residual.double()
    if act != "none":
        y = y.clamp(min=0.0, max=6.0 if act == "relu6" else None)
    if out_scale is None:
        return acc, y
    return acc, torch.round(y / out_scale).clamp(-128, 127)


CASES = [
    # name, depthwise, n, h, w, cin, cout, k, stride, pad, residual, act, int8 out, gain
    ("stem-odd-cin", False, 2, 9, 9, 3, 16, 3, 1, 1, None, "relu", True, 1.0),
    ("stride2-int8-residual", False, 2, 10, 10, 16, 32, 3, 2, 1, "int8", "relu", True, 1.0),
    ("odd-channels-float-out", False, 1, 7, 9, 5, 7, 3, 2, 1, None, "relu6", False, 1.0),
    ("1x1-float-residual", False, 3, 5, 6, 13, 70, 1, 1, 0, "float", "none", True, 1.0),
    ("saturating", False, 2, 8, 8, 64, 64, 3, 1, 1, None, "none", True, 12.0),
    ("dw-relu6", True, 2, 8, 8, 24, 24, 3, 1, 1, None, "relu6", True, 1.0),
    ("dw-odd-stride2-float", True, 1, 9, 7, 37, 37, 3, 2, 1, None, "none", False, 1.0),
    ("dw-residual-saturating", True, 2, 6, 6, 19, 19, 3, 1, 1, "int8", "none", True, 12.0),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_float64_reference(ops: Path, case: tuple) -> None:
    _, depthwise, n, h, w, cin, cout, k, stride, pad, residual_kind, act, int8_out, gain = case
    g = torch.Generator().manual_seed(zlib.crc32(case[0].encode()))
    x = torch.randint(-128, 128, (n, h, w, cin), generator=g, dtype=torch.int8)
    wt = torch.randint(-128, 128, (cout, k, k, 1 if depthwise else cin), generator=g, dtype=torch.int8)
    out_scale = 0.05
    fan_in = k * k * (1 if depthwise else cin)
    scale = gain * 40 * out_scale / (fan_in**0.5 * 74 * 74) * (0.5 + torch.rand(cout, generator=g))
    bias = 2 * torch.rand(cout, generator=g) - 1
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    residual, res_scale = None, 1.0
    if residual_kind == "int8":
        residual, res_scale = torch.randint(-128, 128, (n, ho, wo, cout), generator=g, dtype=torch.int8), 0.04
    elif residual_kind == "float":
        residual = 3 * torch.rand((n, ho, wo, cout), generator=g) - 1.5
    op = torch.ops.compressor.int8_dwconv2d if depthwise else torch.ops.compressor.int8_conv2d
    got = op(x, wt, scale, bias, residual, res_scale, [stride, stride], [pad, pad], act, out_scale if int8_out else None)
    acc, want = _reference(x, wt, scale, bias, residual, res_scale, stride, pad, act, out_scale if int8_out else None, depthwise)
    assert got.shape == (n, ho, wo, cout)

    exact = op(x, wt, torch.ones(cout), None, None, 1.0, [stride, stride], [pad, pad], "none", None)
    assert torch.equal(exact.double(), acc), "int32 accumulation must be exact"

    if int8_out:
        assert got.dtype == torch.int8
        diff = (got.double() - want).abs()
        assert diff.max() <= 1 and (diff > 0).double().mean() < 0.005, "float32 vs float64 epilogue at ties only"
        if gain > 4:
            assert (got == 127).any() and (got == -128).any(), "saturation not exercised"
            assert torch.equal(got[want == 127], want[want == 127].to(torch.int8))
            assert torch.equal(got[want == -128], want[want == -128].to(torch.int8))
    else:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_op_rounds_half_to_even_like_torch(ops: Path) -> None:
    x = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    w = torch.ones(6, 1, 1, 1, dtype=torch.int8)
    scale = torch.tensor([0.5, 1.5, 2.5, -2.5, 127.5, -300.0])
    got = torch.ops.compressor.int8_conv2d(x, w, scale, None, None, 1.0, [1, 1], [0, 0], "none", 1.0)
    assert got.flatten().tolist() == [0, 2, 2, -2, 127, -128]


def test_op_rejects_bad_input(ops: Path) -> None:
    x = torch.zeros(1, 4, 4, 3)
    w = torch.zeros(8, 3, 3, 3, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="int8 NHWC"):
        torch.ops.compressor.int8_conv2d(x, w, torch.ones(8))
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.compressor.int8_conv2d(x.to(torch.int8), w, torch.ones(8), activation="gelu")


def test_missing_library_names_the_build_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setenv("COMPRESSOR_KERNELS_LIB", str(tmp_path / "nope.so"))
    with pytest.raises(CompressorError, match="cmake -S . -B build"):
        kernels.load_ops()


def _fold_bn(model: nn.Module) -> nn.Module:
    """Conv→BN folding by the zoo's naming (convK/bnK siblings); stands in until compressor.graph.fusion lands."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            bn = getattr(parent, name.replace("conv", "bn"), None) if name.startswith("conv") else None
            if isinstance(child, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, name, fuse_conv_bn_eval(child, bn))
                setattr(parent, name.replace("conv", "bn"), nn.Identity())
    return model


def _folded(model: nn.Module) -> nn.Module:
    try:
        from compressor.graph.fusion import fold_batchnorm
    except ImportError:
        return _fold_bn(model)
    folded = fold_batchnorm(model)
    return folded if folded is not None else model


def _balanced(labels: np.ndarray, per_class: int, skip: int = 0) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[skip : skip + per_class] for c in np.unique(labels)])


def test_int8_model_resnet20_agrees_with_float(ops: Path) -> None:
    from compressor.core.data import Preprocess, load_dataset

    model = ZOO["cifar_resnet20"]()
    model.load_state_dict(torch.load(DEMO / "cifar10_resnet20.pt", map_location="cpu", weights_only=True))
    model.eval()
    ds = load_dataset(DEMO / "cifar10-demo.tar.gz")
    pre = Preprocess()
    test_idx = _balanced(ds.test.labels, 20)
    x = pre(ds.test.images[test_idx])
    calib_split = ds.train if ds.train is not None else ds.test
    calib = pre(calib_split.images[_balanced(calib_split.labels, 10, skip=0 if ds.train is not None else 20)])

    with torch.no_grad():
        reference = model(x)
        folded = _folded(model)
        torch.testing.assert_close(folded(x), reference, rtol=1e-3, atol=1e-3)
    scales = kernels.calibrate_input_scales(folded, [calib])
    int8 = kernels.build_int8_model(folded, scales)
    assert len(int8.qconvs) == 19 and any(q.activation == "relu" and q.out_scale for q in int8.qconvs.values())
    logits = int8(x)
    agreement = (logits.argmax(1) == reference.argmax(1)).double().mean().item()
    assert len(x) >= 200 and agreement >= 0.95, f"top-1 agreement {agreement:.3f}"

    assert kernels.make_torch_int8_runner(int8, batch=2, device="cpu")() is None


def test_int8_model_mobilenetv2_random_weights(ops: Path) -> None:
    torch.manual_seed(0)
    model = _folded(ZOO["cifar_mobilenetv2"]().eval())
    x = torch.randn(4, 3, 32, 32)
    # Calibrating on the test batch itself: one float pass, so oneDNN builds its per-shape kernels only once.
    int8 = kernels.build_int8_model(model, kernels.calibrate_input_scales(model, [x]))
    assert any(q.depthwise for q in int8.qconvs.values())
    assert any(q.depthwise and q.out_scale and q.activation == "relu6" for q in int8.qconvs.values())
    with torch.no_grad():
        want = model(x)
    got = int8(x)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.95


def test_gpu_backends_need_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present; the error path is for CPU-only machines")
    from compressor.runtime.gpu_backends import make_torch_cuda_runner

    with pytest.raises(CompressorError, match="CUDA"):
        make_torch_cuda_runner(ZOO["cifar_resnet20"](), batch=1, fp16=True, cuda_graph=True)


def test_tensorrt_export_needs_tensorrt(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt installed; the error path is for machines without it")
    from compressor.runtime.tensorrt import build_engine

    with pytest.raises(CompressorError, match="tensorrt"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine", precision="int8")


def test_cuda_sources_compile_when_nvcc_exists(build_dir: Path) -> None:
    """No GPU here, but the CUDA kernels, their GPU test and benchmark must at least compile and link for sm_80/sm_90."""
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc is not installed")
    cache = (build_dir / "CMakeCache.txt").read_text()
    if "COMPRESSOR_CUDA:BOOL=OFF" in cache:
        pytest.skip("this build directory was configured with COMPRESSOR_CUDA=OFF")
    built = {p.name for p in build_dir.rglob("*") if p.is_file()}
    assert any("compressor_kernels_cuda" in n for n in built), sorted(built)[:20]
    assert "test_kernels_cuda" in built
    assert "bench_kernels_cuda" in built
