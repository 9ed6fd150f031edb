"""Latency and throughput measurement printed with trtexec's names and units.

trtexec reports "Throughput: N qps" (queries = batched inferences per second of host wall time) and host
"Latency: min, max, mean, median, percentile(90%), percentile(95%), percentile(99%)" in ms, after a warm-up of
``--warmUp`` ms and for ``--duration`` s. We print the same lines so existing parsers keep working, plus img/s.
``--vs`` measures two artifacts interleaved (A, B, A, B, …) so both see the same machine state.

ONNX Runtime artifacts are timed in fresh processes that hold one session each (this module imports torch only
when a torch backend is asked for, so ``python -m compressor.runtime.bench --child`` stays light): on a 2-core host an
idle session's thread pool in the same process slows the session being timed and understates INT8
(docs/performance.md). Several artifacts alternate
window by window, A, B, A, B, ...; the quantize pass's INT8-faster check uses the same children.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from compressor.errors import CompressorError

if TYPE_CHECKING:
    from torch import nn

Runner = Callable[[], "float | None"]  # one synchronous inference; may return device time in ms


@dataclass
class BenchSettings:
    warmup: float = 0.2  # seconds
    duration: float = 3.0  # seconds
    iterations: int = 10  # minimum count, as trtexec
    threads: int = 2


def summarize(latencies_ms: list[float], batch: int, wall_s: float) -> dict:
    lat = np.asarray(latencies_ms)
    queries = len(lat)
    return {
        "batch": batch,
        "queries": queries,
        "throughput_qps": queries / wall_s,
        "throughput_img_s": queries * batch / wall_s,
        "latency_ms": {
            "min": float(lat.min()), "max": float(lat.max()), "mean": float(lat.mean()),
            "median": float(np.median(lat)), "p90": float(np.percentile(lat, 90)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
        },
        "total_host_walltime_s": wall_s,
    }


def measure(runners: list[Runner], settings: BenchSettings) -> list[tuple[list[float], float]]:
    """Run each runner in turn (interleaved) until ``duration`` and ``iterations`` are reached for all.

    Returns per runner (latencies in ms, summed wall time in s). Device-timed runners (returning ms) use their
    own figure for latency; host time is used otherwise.
    """
    end = time.perf_counter() + settings.warmup
    while time.perf_counter() < end:
        for run in runners:
            run()
    lats: list[list[float]] = [[] for _ in runners]
    walls = [0.0] * len(runners)
    start = time.perf_counter()
    while time.perf_counter() - start < settings.duration * len(runners) or min(map(len, lats)) < settings.iterations:
        for i, run in enumerate(runners):
            t0 = time.perf_counter()
            device_ms = run()
            dt = time.perf_counter() - t0
            walls[i] += dt
            lats[i].append(device_ms if device_ms is not None else dt * 1e3)
    return list(zip(lats, walls))


def onnx_runner(path: str | Path, batch: int, threads: int, inputs: np.ndarray | None = None) -> Runner:
    """``inputs``: images to feed (repeated up to ``batch``); if None, every graph input gets random values of its
    shape and element type (normal floats, uniform bytes for the uint8 / int8 inputs of a quantized layer)."""
    from compressor.runtime.sessions import ort_session

    sess = ort_session(path, threads)
    inp = sess.get_inputs()[0]
    if inputs is None:
        rng = np.random.default_rng(0)
        feed = {}
        for i in sess.get_inputs():
            shape = (batch, *(d if isinstance(d, int) else 1 for d in i.shape[1:]))
            ints = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(i.type)
            feed[i.name] = (rng.integers(np.iinfo(ints).min, np.iinfo(ints).max, shape, dtype=ints) if ints
                            else rng.standard_normal(shape).astype(np.float32))
    else:
        feed = {inp.name: np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=np.float32)}
    return lambda: sess.run(None, feed) and None


def torch_runner(model: nn.Module, batch: int, threads: int, input_shape: tuple[int, ...]) -> Runner:
    import torch

    torch.set_num_threads(threads)
    model.eval()
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def format_summary(label: str, s: dict) -> str:
    lat = s["latency_ms"]
    return "\n".join([
        f"[I] === Performance summary: {label}, batch {s['batch']} ===",
        f"[I] Throughput: {s['throughput_qps']:.2f} qps ({s['throughput_img_s']:.1f} img/s)",
        f"[I] Latency: min = {lat['min']:.4f} ms, max = {lat['max']:.4f} ms, mean = {lat['mean']:.4f} ms, "
        f"median = {lat['median']:.4f} ms, percentile(90%) = {lat['p90']:.4f} ms, "
        f"percentile(95%) = {lat['p95']:.4f} ms, percentile(99%) = {lat['p99']:.4f} ms",
        f"[I] Total Host Walltime: {s['total_host_walltime_s']:.3f} s ({s['queries']} queries)",
    ])


BACKENDS = ("auto", "onnxruntime-cpu", "torch-cpu", "torch-cuda", "torch-int8", "tensorrt")


def resolve_backend(artifact: str, backend: str) -> str:
    """``auto`` is onnxruntime-cpu for .onnx, tensorrt for .engine/.plan, torch-cpu otherwise."""
    if backend == "auto":
        return ("onnxruntime-cpu" if str(artifact).endswith(".onnx")
                else "tensorrt" if str(artifact).endswith((".engine", ".plan")) else "torch-cpu")
    if backend not in BACKENDS:
        raise CompressorError(f"unknown bench backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime-cpu" and not str(artifact).endswith(".onnx"):
        raise CompressorError(f"backend onnxruntime-cpu needs an .onnx artifact, got {artifact}")
    return backend


def make_runner(artifact: str, backend: str, batch: int, threads: int,
                model_loader: Callable[[str], tuple[nn.Module, tuple]], fp16: bool = False, cuda_graph: bool = False) -> Runner:
    """Pick the runner for an artifact.

    onnxruntime-cpu: an .onnx file. torch-cpu / torch-cuda / torch-int8: a model (state_dict with --model, or a
    compressor stage file). tensorrt: a serialized engine. ``auto`` is onnxruntime-cpu for .onnx, tensorrt for
    .engine/.plan, torch-cpu otherwise.
    """
    backend = resolve_backend(artifact, backend)
    if backend == "onnxruntime-cpu":
        return onnx_runner(artifact, batch, threads)
    if backend == "tensorrt":
        from compressor.runtime.gpu_backends import make_tensorrt_runner

        return make_tensorrt_runner(artifact, batch)
    model, shape = model_loader(artifact)
    if backend == "torch-cpu":
        return torch_runner(model, batch, threads, shape)
    if backend == "torch-cuda":
        from compressor.runtime.gpu_backends import make_torch_cuda_runner

        return make_torch_cuda_runner(model, batch, fp16, cuda_graph, shape)
    # torch-int8: our fused INT8 kernels (CUDA when present, CPU twins otherwise). Scales are calibrated on
    # random inputs: they set values, not speed, so this measures latency only, never accuracy.
    import torch

    from compressor.graph.fusion import fold_batchnorm
    from compressor.runtime.kernels import build_int8_model, calibrate_input_scales, load_ops, make_torch_int8_runner

    load_ops()
    torch.set_num_threads(threads)
    folded = fold_batchnorm(model.eval())
    calib = [torch.randn(8, *shape, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    int8 = build_int8_model(folded, calibrate_input_scales(folded, calib), shape)
    return make_torch_int8_runner(int8, batch, "cuda" if torch.cuda.is_available() else "cpu")


WINDOWS = 3  # measurement windows per artifact when several ONNX artifacts alternate

Measured = tuple[list[float], float, list[float]]  # latencies in ms, summed wall time in s, median ms per window


def measure_onnx_isolated(paths: list[str | Path], batches: list[int], settings: BenchSettings,
                          windows: int = WINDOWS, inputs: str | Path | None = None,
                          progress: bool = False) -> dict[int, list[Measured]]:
    """``measure`` for ONNX files, each window a fresh process that holds one session and times every batch
    size. Several files alternate (A, B, A, B, ...) over ``windows`` windows that split ``duration`` and
    ``iterations``; a single file is one window. ``inputs``: an .npy of images to feed instead of random values.
    Returns, per batch size, per file (latencies in ms, summed wall time in s, each window's median in ms)."""
    windows = windows if len(paths) > 1 else 1
    child = replace(settings, duration=settings.duration / windows, iterations=math.ceil(settings.iterations / windows))
    measured: dict[int, list[Measured]] = {b: [([], 0.0, []) for _ in paths] for b in batches}
    bar = tqdm(total=windows * len(paths), desc="latency", disable=not progress, leave=False)
    for _ in range(windows):
        for i, path in enumerate(paths):
            cmd = [sys.executable, "-m", "compressor.runtime.bench", "--child", str(path), "--batches",
                   ",".join(map(str, batches)), "--settings", json.dumps(asdict(child))]
            if inputs is not None:
                cmd += ["--inputs", str(inputs)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise CompressorError(f"benchmarking {Path(path).name} in a child process failed: {last}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for b in batches:
                lat, wall, medians = measured[b][i]
                window = result[str(b)]["latencies_ms"]
                measured[b][i] = (lat + window, wall + result[str(b)]["wall_s"], medians + [float(np.median(window))])
            bar.update()
    bar.close()
    return measured


def bench_onnx(paths: list[str | Path], batches: list[int], settings: BenchSettings) -> dict[int, list[dict]]:
    """trtexec-style figures per batch size of ONNX files, each measured in its own processes."""
    measured = measure_onnx_isolated(paths, batches, settings)
    return {b: [summarize(lat, b, wall) for lat, wall, _ in measured[b]] for b in batches}


def _child() -> None:
    p = argparse.ArgumentParser(description="Time one ONNX file alone in this process; print JSON.")
    p.add_argument("--child", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--inputs")
    args = p.parse_args()
    settings = BenchSettings(**json.loads(args.settings))
    inputs = None if args.inputs is None else np.load(args.inputs)
    result = {}
    for b in map(int, args.batches.split(",")):
        run = onnx_runner(args.child, b, settings.threads, inputs)  # one session alive at a time
        (lat, wall), = measure([run], settings)
        del run
        result[b] = {"latencies_ms": lat, "wall_s": wall}
    print(json.dumps(result))


if __name__ == "__main__":
    _child()
