"""CPU latency of several ONNX models on ONNX Runtime or OpenVINO, measured side by side in one run.

The machine may be shared and its clock may drift, so the models alternate round by round on the same input and
each figure is a median over rounds; a speed-up measured on separate runs would mostly measure the noise.

``measure_isolated`` (what the quantize pass uses) times each model in a fresh process that holds only its
session, as a deployment would. ``measure_interleaved`` keeps every session in this process: cheaper, but on a
small host the idle sessions' thread pools disturb the one being timed and INT8 reads slower than it runs
(docs/performance.md).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.runtime.bench import BenchSettings, Timed, measure_onnx_isolated
from compressor.runtime.sessions import ort_session


@dataclass
class Latency:
    """Batch-1 median latency and batch-N throughput of one model, with each round's figures when rounds were kept
    (comparisons beyond noise pair them round by round: :mod:`compressor.quant.selection`)."""

    batch1_ms: float
    throughput: float  # images per second at ``batch``
    batch: int
    throughput_rounds: tuple[float, ...] | None = None  # each round's throughput, in the order the rounds ran
    batch1_rounds: tuple[float, ...] | None = None  # each round's median batch-1 latency, ms

    def as_dict(self) -> dict:
        return asdict(self)


def round_ratios(new: Latency, base: Latency) -> tuple[list[float], list[float]] | None:
    """Per round, how many times faster ``new`` ran than ``base`` (below 1: slower): in batch throughput and at
    batch 1. None when either kept no rounds or they were not timed in the same rounds."""
    rounds = (new.throughput_rounds, base.throughput_rounds, new.batch1_rounds, base.batch1_rounds)
    if None in rounds or len({len(r) for r in rounds}) != 1 or not rounds[0]:
        return None
    throughput = [n / b for n, b in zip(new.throughput_rounds, base.throughput_rounds)]
    batch1 = [b / n for n, b in zip(new.batch1_rounds, base.batch1_rounds)]
    return throughput, batch1


def trimmed(ratios: list[float]) -> tuple[float, float]:
    """The lowest and highest per-round ratio once the most extreme quarter of rounds at each end is set aside."""
    r, k = sorted(ratios), len(ratios) // 4
    return r[k], r[-1 - k]


def paired_speedup(base: Latency, new: Latency) -> dict | None:
    """How many times faster ``new`` ran than ``base`` in rounds timed alternately: per batch size the median of
    the per-round ratios (drift that slows both alike cancels round by round) and the range every round but the
    most extreme quarter at each end lies in. None when the two were not timed in the same rounds."""
    ratios = round_ratios(new, base)
    if ratios is None:
        return None
    throughput, batch1 = ratios
    return {"batch1_speedup": round(float(np.median(batch1)), 3), "batch1_trimmed": [round(r, 3) for r in trimmed(batch1)],
            "batch1_ratios": [round(r, 3) for r in batch1], "throughput_speedup": round(float(np.median(throughput)), 3),
            "throughput_trimmed": [round(r, 3) for r in trimmed(throughput)],
            "throughput_ratios": [round(r, 3) for r in throughput], "batch": new.batch, "rounds": len(batch1)}


def _time(sess: ort.InferenceSession, x: np.ndarray, repeat: int) -> float:
    name = sess.get_inputs()[0].name
    t = time.perf_counter()
    for _ in range(repeat):
        sess.run(None, {name: x})
    return (time.perf_counter() - t) / repeat


def measure_interleaved(
    models: dict[str, onnx.ModelProto | str], images: np.ndarray, batch: int = 64, threads: int = 2,
    rounds: int = 7, repeat1: int = 30, repeat_batch: int = 5,
) -> dict[str, Latency]:
    """``images``: preprocessed float NCHW, at least ``batch`` of them. Models alternate within every round."""
    sessions = {k: ort_session(m, threads) for k, m in models.items()}
    x1, xb = images[:1], images[:batch]
    for s in sessions.values():  # warm-up: first runs allocate and pack weights
        _time(s, x1, 3)
        _time(s, xb, 1)
    one: dict[str, list[float]] = {k: [] for k in sessions}
    many: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            one[k].append(_time(s, x1, repeat1))
            many[k].append(_time(s, xb, repeat_batch))
    return {
        k: Latency(float(np.median(one[k]) * 1e3), float(len(xb) / np.median(many[k])), len(xb)) for k in sessions
    }


def measure_isolated(
    models: dict[str, onnx.ModelProto | str | Path | Timed], images: np.ndarray, batch: int = 64, threads: int = 2,
    rounds: int = 5, seconds: float = 0.4, progress: bool = False, backend: str = "onnxruntime-cpu",
    precision: str = "f32", warmup: float = 0.1,
) -> dict[str, Latency]:
    """Like ``measure_interleaved``, but each round times every model in a fresh process that holds only its
    session (``bench.measure_onnx_isolated``), the models alternating round by round; ``seconds`` of measurement
    per model, round and batch size. Both figures come from the median run. ``backend``: onnxruntime-cpu or
    openvino (with ``precision`` as its hint); a :class:`Timed` model names its own runtime (one runtime against
    another in the same rounds)."""
    with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
        paths = []
        for i, m in enumerate(models.values()):
            if isinstance(m, onnx.ModelProto):
                onnx.save(m, Path(tmp) / f"model{i}.onnx")
                m = Path(tmp) / f"model{i}.onnx"
            paths.append(m if isinstance(m, Timed) else Timed(Path(m), backend, precision))
        npy = Path(tmp) / "inputs.npy"
        np.save(npy, np.ascontiguousarray(images[:batch], dtype=np.float32))
        settings = BenchSettings(warmup=warmup, duration=seconds * rounds, iterations=3 * rounds, threads=threads)
        measured = measure_onnx_isolated(paths, [1, batch], settings, windows=rounds, inputs=npy, progress=progress)
    out = {}
    for i, k in enumerate(models):
        per_round = [batch * 1e3 / ms for ms in measured[batch][i][2]]
        per_round1 = measured[1][i][2]
        out[k] = Latency(float(np.median(measured[1][i][0])), float(batch * 1e3 / np.median(measured[batch][i][0])),
                         batch, tuple(per_round), tuple(per_round1))
    return out
