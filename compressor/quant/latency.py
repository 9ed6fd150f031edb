"""ONNX Runtime CPU latency of an INT8 model against its FP32 model, measured side by side in one run.

The machine may be shared and its clock may drift, so the models alternate round by round on the same input and
each figure is a median over rounds; a speed-up measured on separate runs would mostly measure the noise.

``measure_isolated`` (the default of the quantize pass) times each model in a fresh process that holds only its
session, as a deployment would. ``measure_interleaved`` keeps every session in this process: cheaper, but on a
2-core host the idle sessions' thread pools disturb the one being timed, and INT8 reads slower than it runs
(ResNet-20 1.60-1.67x FP32 there against 2.30-2.48x alone; BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm.auto import tqdm

from .. import ort_timing
from ..errors import CompressorError
from ..ort_timing import ort_session, seconds_per_run, warm_up


@dataclass
class Latency:
    """Batch-1 median latency and batch-N throughput of one model."""

    batch1_ms: float
    throughput: float  # images per second at ``batch``
    batch: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure_interleaved(
    models: dict[str, onnx.ModelProto | str], images: np.ndarray, batch: int = 64, threads: int = 2,
    rounds: int = 7, repeat1: int = 30, repeat_batch: int = 5,
) -> dict[str, Latency]:
    """``images``: preprocessed float NCHW, at least ``batch`` of them. Models alternate within every round."""
    sessions = {k: ort_session(m, threads) for k, m in models.items()}
    x1, xb = images[:1], images[:batch]
    for s in sessions.values():
        warm_up(s, x1, xb)
    one: dict[str, list[float]] = {k: [] for k in sessions}
    many: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            one[k].append(seconds_per_run(s, x1, repeat1))
            many[k].append(seconds_per_run(s, xb, repeat_batch))
    return {
        k: Latency(float(np.median(one[k]) * 1e3), float(len(xb) / np.median(many[k])), len(xb)) for k in sessions
    }


def time_in_child(path: str | Path, images_npy: str | Path, threads: int, rounds: int = 3, repeat1: int = 30,
                  repeat_batch: int = 5, timeout: float = 600) -> dict:
    """Time one ONNX file in a fresh Python process running ``ort_timing.py`` as a script (imports only ORT)."""
    cmd = [sys.executable, ort_timing.__file__, str(path), str(images_npy), "--threads", str(threads),
           "--rounds", str(rounds), "--repeat1", str(repeat1), "--repeat-batch", str(repeat_batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompressorError(f"timing {Path(path).name} in a child process failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_isolated(
    models: dict[str, onnx.ModelProto | str], images: np.ndarray, batch: int = 64, threads: int = 2,
    rounds: int = 5, repeat1: int = 30, repeat_batch: int = 5, progress: bool = False,
) -> dict[str, Latency]:
    """Like ``measure_interleaved``, but every measurement is a fresh process holding one session. Rounds
    alternate the models (A, B, A, B, ...) so clock drift is shared; each figure is the median over rounds."""
    one: dict[str, list[float]] = {k: [] for k in models}
    many: dict[str, list[float]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
        paths = {}
        for i, (k, m) in enumerate(models.items()):
            if isinstance(m, onnx.ModelProto):
                paths[k] = Path(tmp) / f"model{i}.onnx"
                onnx.save(m, paths[k])
            else:
                paths[k] = Path(m)
        npy = Path(tmp) / "images.npy"
        np.save(npy, np.ascontiguousarray(images[:batch], dtype=np.float32))
        bar = tqdm(total=rounds * len(models), desc="latency", disable=not progress, leave=False)
        for _ in range(rounds):
            for k, path in paths.items():
                t = time_in_child(path, npy, threads, repeat1=repeat1, repeat_batch=repeat_batch)
                one[k].append(t["batch1_ms"])
                many[k].append(t["batch_ms"])
                bar.update()
        bar.close()
    n = len(images[:batch])
    return {k: Latency(float(np.median(one[k])), float(n / np.median(many[k]) * 1e3), n) for k in models}


def speed_check(fp32: Latency, int8: Latency, min_speedup: float = 1.0) -> dict:
    """Is INT8 faster than FP32? Judged on batch throughput and batch-1 latency; both must beat ``min_speedup``."""
    throughput_x = int8.throughput / fp32.throughput
    latency_x = fp32.batch1_ms / int8.batch1_ms
    faster = throughput_x >= min_speedup and latency_x >= min_speedup
    return {
        "int8_faster": bool(faster),
        "throughput_speedup": round(throughput_x, 3),
        "batch1_speedup": round(latency_x, 3),
        "fp32": fp32.as_dict(),
        "int8": int8.as_dict(),
    }


def deployment(int8_faster: bool, fallback_to_fp32_if_slower: bool) -> str:
    """Which model to deploy: INT8 unless it is not faster and the fallback to FP32 is on."""
    return "int8" if int8_faster or not fallback_to_fp32_if_slower else "fp32"


def candidates(results: dict, tolerance: float, limit: int = 3) -> list:
    """Configurations within ``tolerance`` points of the best validation top-1 (best first, at most ``limit``):
    differences that small are noise on a validation split of a thousand images, so speed decides among them."""
    best = max(results.values())
    ranked = sorted((c for c, v in results.items() if v >= best - tolerance), key=lambda c: -results[c])
    return ranked[:limit]
