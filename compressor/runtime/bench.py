"""Latency and throughput measurement printed with trtexec's names and units.

trtexec reports "Throughput: N qps" (queries = batched inferences per second of host wall time) and host
"Latency: min, max, mean, median, percentile(90%), percentile(95%), percentile(99%)" in ms, after a warm-up of
``--warmUp`` ms and for ``--duration`` s. We print the same lines so existing parsers keep working, plus img/s.
``--vs`` measures two artifacts interleaved (A, B, A, B, …) so both see the same machine state.

ONNX Runtime and OpenVINO artifacts are timed in fresh processes that hold one session (one compiled model) each:
this module imports torch only when a torch backend is asked for, and a child imports only numpy and its runtime,
so ``python -m compressor.runtime.bench --child`` stays light. On a 2-core host an idle session's thread pool in
the same process slows the session being timed and understates INT8 (docs/performance.md). Several artifacts
alternate window by window, A, B, A, B, ..., on one runtime or across the two; the quantize pass's INT8-faster
check uses the same children.
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


def onnx_input_shape(path: str | Path, given: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The per-image input shape to time an ONNX file at: its static dims, or ``given`` (``--input-shape``) where
    they are dynamic. A dynamic dim is never guessed: a 1×1 image would time almost nothing."""
    from compressor.runtime.sessions import ort_session

    try:
        dims = ort_session(path, 1).get_inputs()[0].shape[1:]
    except Exception as exc:
        raise CompressorError(f"{path} is not an ONNX model ONNX Runtime can load: "
                              f"{(str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]}") from None
    static = [d if isinstance(d, int) and d > 0 else None for d in dims]
    text = "(batch, " + ", ".join(str(d) if s is not None else str(d or "?") for d, s in zip(dims, static)) + ")"
    if given is None:
        if None in static:
            raise CompressorError(f"{Path(path).name} has dynamic input dims {text}; give the size to time with "
                                  "--input-shape C,H,W")
        return tuple(static)
    if len(given) != len(static) or any(s is not None and s != g for s, g in zip(static, given)):
        raise CompressorError(f"--input-shape {','.join(map(str, given))} does not fit the input {text} of "
                              f"{Path(path).name}; leave it out to time the model's own shape")
    return tuple(given)


def onnx_runner(path: str | Path, batch: int, threads: int, inputs: np.ndarray | None = None,
                input_shape: tuple[int, ...] | None = None) -> Runner:
    """``inputs``: images to feed (repeated up to ``batch``); if None, every graph input gets random values of its
    element type (normal floats, uniform bytes for the uint8 / int8 inputs of a quantized layer) and of its static
    shape, the first input of ``input_shape`` when given."""
    from compressor.runtime.sessions import ort_session

    sess = ort_session(path, threads)
    inp = sess.get_inputs()[0]
    if inputs is None:
        rng = np.random.default_rng(0)
        feed = {}
        for k, i in enumerate(sess.get_inputs()):
            shape = tuple(input_shape) if k == 0 and input_shape is not None else tuple(i.shape[1:])
            if not all(isinstance(d, int) and d > 0 for d in shape):
                raise CompressorError(f"{Path(path).name} has dynamic input dims {shape}; give the input shape to time")
            ints = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(i.type)
            feed[i.name] = (rng.integers(np.iinfo(ints).min, np.iinfo(ints).max, (batch, *shape), dtype=ints) if ints
                            else rng.standard_normal((batch, *shape)).astype(np.float32))
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


BACKENDS = ("auto", "onnxruntime-cpu", "openvino", "torch-cpu", "torch-cuda", "torch-int8", "tensorrt")
CHILD_BACKENDS = ("onnxruntime-cpu", "openvino")  # timed in child processes
TARGET_BACKENDS = {"ort-cpu": "onnxruntime-cpu", "openvino-cpu": "openvino"}  # a recipe's targets → bench backends


def resolve_backend(artifact: str, backend: str) -> str:
    """``auto`` is onnxruntime-cpu for .onnx, openvino for an IR .xml, tensorrt for .engine/.plan, torch-cpu
    otherwise."""
    name = str(artifact)
    if backend == "auto":
        return ("onnxruntime-cpu" if name.endswith(".onnx") else "openvino" if name.endswith(".xml")
                else "tensorrt" if name.endswith((".engine", ".plan")) else "torch-cpu")
    if backend not in BACKENDS:
        raise CompressorError(f"unknown bench backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime-cpu" and not name.endswith(".onnx"):
        raise CompressorError(f"backend onnxruntime-cpu needs an .onnx artifact, got {artifact}")
    if backend == "openvino" and not name.endswith((".onnx", ".xml")):
        raise CompressorError(f"backend openvino needs an .onnx file or an OpenVINO IR .xml, got {artifact}")
    return backend


@dataclass(frozen=True)
class Timed:
    """An artifact to time in child processes: the file, its runtime (one of :data:`CHILD_BACKENDS`) and, for
    OpenVINO, the precision hint (f32 | bf16 | default)."""

    path: str | Path
    backend: str = "onnxruntime-cpu"
    precision: str = "f32"
    kernels: bool = False
    """OpenVINO only: time the graph's kernels from its per-node counters (``openvino.KernelClock``)."""

    def __post_init__(self) -> None:
        if self.kernels and self.backend != "openvino":
            raise CompressorError(f"timing the kernels from per-node counters needs the openvino backend, not {self.backend}")

    def label(self) -> str:
        hint = f", {self.precision}{', kernels' if self.kernels else ''}" if self.backend == "openvino" else ""
        return f"{self.path} [{self.backend}{hint}]"


def make_runner(artifact: str, backend: str, batch: int, threads: int,
                model_loader: Callable[[str], tuple[nn.Module, tuple]], fp16: bool = False, cuda_graph: bool = False,
                precision: str = "f32") -> Runner:
    """Pick the runner for an artifact, in this process.

    onnxruntime-cpu: an .onnx file. openvino: an .onnx or IR .xml file, with ``precision`` as its hint.
    torch-cpu / torch-cuda / torch-int8: a model (state_dict with --model, or a compressor stage file). tensorrt: a
    serialized engine. ``auto``: see :func:`resolve_backend`.
    """
    backend = resolve_backend(artifact, backend)
    if backend == "onnxruntime-cpu":
        return onnx_runner(artifact, batch, threads)
    if backend == "openvino":
        from compressor.runtime.openvino import runner

        return runner(artifact, batch, threads, precision)
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
    folded = fold_batchnorm(model.eval(), shape)
    calib = [torch.randn(8, *shape, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    int8 = build_int8_model(folded, calibrate_input_scales(folded, calib), shape)
    return make_torch_int8_runner(int8, batch, "cuda" if torch.cuda.is_available() else "cpu")


WINDOWS = 3  # measurement windows per artifact when several ONNX artifacts alternate

Measured = tuple[list[float], float, list[float]]  # latencies in ms, summed wall time in s, median ms per window


def measure_onnx_isolated(paths: list[str | Path | Timed], batches: list[int], settings: BenchSettings,
                          windows: int = WINDOWS, inputs: str | Path | None = None,
                          progress: bool = False, input_shape: tuple[int, ...] | None = None) -> dict[int, list[Measured]]:
    """``measure`` for ONNX (or OpenVINO IR) files, each window a fresh process that holds one session and times
    every batch size. A plain path runs on ONNX Runtime; a :class:`Timed` names its runtime. Several files
    alternate (A, B, A, B, ...) over ``windows`` windows that split ``duration`` and ``iterations``; a single file
    is one window. ``inputs``: an .npy of images to feed instead of random values (of ``input_shape``, or of the
    files' static input shape when None).
    Returns, per batch size, per file (latencies in ms, summed wall time in s, each window's median in ms)."""
    specs = [p if isinstance(p, Timed) else Timed(p) for p in paths]
    if any(s.backend == "openvino" for s in specs):
        from compressor.runtime.openvino import import_openvino

        import_openvino()  # a missing extra is one line here, not a child's traceback
    windows = windows if len(specs) > 1 else 1
    child = replace(settings, duration=settings.duration / windows, iterations=math.ceil(settings.iterations / windows))
    measured: dict[int, list[Measured]] = {b: [([], 0.0, []) for _ in paths] for b in batches}
    bar = tqdm(total=windows * len(paths), desc="latency", disable=not progress, leave=False)
    for _ in range(windows):
        for i, spec in enumerate(specs):
            cmd = [sys.executable, "-m", "compressor.runtime.bench", "--child", str(spec.path), "--batches",
                   ",".join(map(str, batches)), "--settings", json.dumps(asdict(child)), "--backend", spec.backend,
                   "--precision", spec.precision]
            if inputs is not None:
                cmd += ["--inputs", str(inputs)]
            if input_shape is not None:
                cmd += ["--shape", ",".join(map(str, input_shape))]
            if spec.kernels:
                cmd += ["--kernels"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise CompressorError(f"benchmarking {Path(spec.path).name} in a child process failed: {last}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for b in batches:
                lat, wall, medians = measured[b][i]
                window = result[str(b)]["latencies_ms"]
                measured[b][i] = (lat + window, wall + result[str(b)]["wall_s"], medians + [float(np.median(window))])
            bar.update()
    bar.close()
    return measured


def bench_onnx(paths: list[str | Path | Timed], batches: list[int], settings: BenchSettings,
               input_shape: tuple[int, ...] | None = None) -> dict[int, list[dict]]:
    """trtexec-style figures per batch size of ONNX files (or :class:`Timed` artifacts on either runtime), each
    measured in its own processes."""
    measured = measure_onnx_isolated(paths, batches, settings, input_shape=input_shape)
    return {b: [summarize(lat, b, wall) for lat, wall, _ in measured[b]] for b in batches}


def bench_targets(path: str | Path, targets: list[str], batches: list[int], settings: BenchSettings,
                  openvino_precision: str = "f32") -> dict[str, dict[int, dict]]:
    """One ONNX file on each of a recipe's targets (ort-cpu, openvino-cpu), the runtimes alternating window by
    window: per target, per batch size, the trtexec-style figures."""
    specs = [Timed(path, TARGET_BACKENDS[t], openvino_precision) for t in targets]
    by_batch = bench_onnx(specs, batches, settings)
    return {t: {b: by_batch[b][i] for b in batches} for i, t in enumerate(targets)}


def _child() -> None:
    p = argparse.ArgumentParser(description="Time one ONNX (or OpenVINO IR) file alone in this process; print JSON.")
    p.add_argument("--child", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--inputs")
    p.add_argument("--shape", help="C,H,W of the random input (for dynamic input dims)")
    p.add_argument("--backend", default="onnxruntime-cpu", choices=CHILD_BACKENDS)
    p.add_argument("--precision", default="f32", help="OpenVINO precision hint: f32 | bf16 | default")
    p.add_argument("--kernels", action="store_true", help="OpenVINO: time the kernels from its per-node counters")
    args = p.parse_args()
    if args.kernels and args.backend != "openvino":
        p.error("--kernels needs --backend openvino")
    shape = None if args.shape is None else tuple(map(int, args.shape.split(",")))
    settings = BenchSettings(**json.loads(args.settings))
    inputs = None if args.inputs is None else np.load(args.inputs)
    if args.backend == "openvino":  # imports numpy and openvino only
        from compressor.runtime.openvino import runner as openvino_runner

        def make(b: int) -> Runner:
            return openvino_runner(args.child, b, settings.threads, args.precision, inputs, shape, args.kernels)
    else:
        def make(b: int) -> Runner:
            return onnx_runner(args.child, b, settings.threads, inputs, shape)
    result = {}
    for b in map(int, args.batches.split(",")):
        run = make(b)  # one session alive at a time
        (lat, wall), = measure([run], settings)
        del run
        result[b] = {"latencies_ms": lat, "wall_s": wall}
    print(json.dumps(result))


if __name__ == "__main__":
    _child()
