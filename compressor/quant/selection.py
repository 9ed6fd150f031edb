"""Which INT8 configuration the quantize pass writes, and whether it is worth deploying on the target.

Decisions rest on seeded, deterministic quantities (validation top-1, the space's fixed order); a measured
latency decides only where it differs beyond its own noise, so timing jitter never picks the artifact.
"""

from __future__ import annotations

from compressor.quant.space import QuantConfig
from compressor.runtime.latency import Latency


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


def candidates(results: dict[QuantConfig, float], tolerance: float, limit: int = 3) -> list[QuantConfig]:
    """Configurations within ``tolerance`` points of the best validation top-1 (best first, then the space's
    order; at most ``limit``): differences that small are noise on a validation split of a thousand images, so
    speed decides among them."""
    best = max(results.values())
    return sorted((c for c, v in results.items() if v >= best - tolerance), key=lambda c: (-results[c], c))[:limit]


def latency_pool(results: dict[QuantConfig, float], target: str, tolerance: float, limit: int) -> list[QuantConfig]:
    """The configurations worth timing: :func:`candidates`, plus on ort-cpu the most accurate one whose emission
    ONNX Runtime fuses completely (uint8 activations, no float layers)."""
    pool = candidates(results, tolerance, limit)
    fusable = [c for c in results if c.scheme != "symmetric" and c.precision == "int8"]
    if target == "ort-cpu" and fusable:
        top = min(fusable, key=lambda c: (-results[c], c))
        if top not in pool:
            pool.append(top)
    return pool


def choose(pool: list[QuantConfig], results: dict[QuantConfig, float], latency: dict[QuantConfig, Latency],
           checks: dict[QuantConfig, dict], speed_accuracy_budget: float, tolerance: float) -> QuantConfig:
    """The most accurate candidate measured faster than FP32 within ``speed_accuracy_budget`` points of the best
    (else the most accurate candidate). Among equally accurate ones a candidate wins on speed only when it is
    clearly faster than every other; otherwise the space's fixed order decides."""
    best_acc = max(results.values())
    fast = [c for c in pool if checks[c]["int8_faster"]
            and results[c] >= best_acc - max(speed_accuracy_budget, tolerance)]
    ranked = sorted(fast or pool, key=lambda c: (-results[c], c))
    tied = [c for c in ranked if results[c] == results[ranked[0]]]
    for c in tied:
        if all(latency[c].clearly_faster(latency[o]) for o in tied if o != c):
            return c
    return tied[0]


def deployment(int8_faster: bool, fallback_to_fp32_if_slower: bool) -> str:
    """Which model to deploy: INT8 unless it is not faster and the fallback to FP32 is on."""
    return "int8" if int8_faster or not fallback_to_fp32_if_slower else "fp32"
