"""The GPU path on a machine without a GPU: benchmarks/gpu_check.sh's dry run (every GPU step recorded as skipped,
with its reason, in well under a minute) and the TensorRT runner's buffer lifetime and error checks, driven by a
stand-in for TensorRT's Python API.
"""

from __future__ import annotations

import csv
import gc
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from compressor.errors import CompressorError
from compressor.runtime import gpu_backends

REPO = Path(__file__).resolve().parent.parent
GPU_STEPS = [
    "build_kernels",
    "bit_exact",
    "bench_kernels",
    "build_torch_ops",
    "models",
    "sanitizer_memcheck",
    "sanitizer_racecheck",
]


def _gpu_visible() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def test_gpu_check_dry_run_skips_every_gpu_step(tmp_path: Path) -> None:
    if _gpu_visible():
        pytest.skip("a GPU is visible: the dry run is for machines without one")
    out = tmp_path / "gpu-check"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert elapsed < 60, f"dry run took {elapsed:.0f} s"

    with open(out / "steps.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    steps = {r["step"]: r for r in rows}
    assert steps["probe"]["status"] == "passed"
    for name in GPU_STEPS:
        assert name in steps, f"{name} missing from steps.tsv: {sorted(steps)}"
        assert steps[name]["status"] == "skipped", steps[name]
        assert "GPU" in steps[name]["reason"], steps[name]
    assert [r["step"] for r in rows] == ["probe", *GPU_STEPS]
    log = (out / "gpu_check.log").read_text()
    assert "skipped" in log and "no NVIDIA GPU" in log
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8


def test_gpu_check_rejects_arguments(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--bogus"],
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "usage" in done.stderr.lower()


class _FakeTensorRT:
    """The slice of TensorRT 10's Python API the runner uses; each failure switch makes one call return False."""

    float32, float16, int8 = "float32", "float16", "int8"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.contexts: list = []
        fake = self

        class Context:
            def __init__(self) -> None:
                self.shapes = {"input": None, "logits": None}
                self.addresses: dict[str, int] = {}
                self.executed = 0
                fake.contexts.append(self)

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)
                self.shapes["logits"] = (shape[0], 10)
                return fake.fail != "set_input_shape"

            def get_tensor_shape(self, name):
                return self.shapes[name]

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr
                return fake.fail != "set_tensor_address"

            def execute_async_v3(self, stream_handle):
                self.executed += 1
                return fake.fail != "execute_async_v3"

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ["input", "logits"][i]

            def get_tensor_mode(self, name):
                return fake.TensorIOMode.INPUT if name == "input" else fake.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return fake.float32

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, blob):
                return Engine()

        self.Runtime = Runtime


class _FakeEvent:
    def __init__(self, enable_timing: bool = False) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other) -> float:
        return 0.25


def _runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fail: str = "") -> tuple[object, _FakeTensorRT]:
    trt = _FakeTensorRT(fail)
    monkeypatch.setitem(sys.modules, "compressor.runtime.tensorrt", types.SimpleNamespace(_import_tensorrt=lambda: trt))
    # CPU tensors stand in for CUDA buffers: the runner only needs their data pointers.
    monkeypatch.setattr(gpu_backends, "require_cuda", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "Stream", lambda: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    return gpu_backends.make_tensorrt_runner(str(engine), batch=4), trt


def test_tensorrt_runner_keeps_its_buffers_alive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run, trt = _runner(monkeypatch, tmp_path)
    gc.collect()
    (context,) = trt.contexts
    assert context.shapes["input"] == (4, 3, 32, 32)
    # The addresses TensorRT was given belong to tensors the runner still holds.
    assert {name: t.data_ptr() for name, t in run.buffers.items()} == context.addresses
    assert run.buffers["logits"].shape == (4, 10)
    assert run() == 0.25 and context.executed == 1


@pytest.mark.parametrize("call", ["set_input_shape", "set_tensor_address"])
def test_tensorrt_runner_setup_failures_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, call: str) -> None:
    with pytest.raises(CompressorError, match="TensorRT rejected") as info:
        _runner(monkeypatch, tmp_path, fail=call)
    assert "\n" not in str(info.value)


def test_tensorrt_runner_execute_failure_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run, _ = _runner(monkeypatch, tmp_path, fail="execute_async_v3")
    with pytest.raises(CompressorError, match="execute_async_v3"):
        run()
