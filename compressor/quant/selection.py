"""Which INT8 configuration the quantize pass writes, and whether it is worth deploying on the target.

Decisions rest on seeded, deterministic quantities (validation top-1, the space's fixed order). A measured
latency decides only where it differs beyond its own noise: every measured round of one model must beat every
round of the other (non-overlapping per-round spreads). Where the spreads overlap a fixed rule decides, so timing
jitter never picks the artifact; each decision records which rule made it.
"""

from __future__ import annotations

from compressor.quant.space import QuantConfig
from compressor.runtime.latency import Latency

FASTER, NOT_FASTER, WITHIN_NOISE = "faster", "not faster", "within noise"


def _verdict(low: float, high: float, need: float) -> str:
    """A speed-up known only to lie in [low, high] (over all pairs of rounds) against the speed-up needed."""
    return FASTER if low >= need else NOT_FASTER if high < need else WITHIN_NOISE


def speedup_verdict(fp32: Latency, int8: Latency, min_speedup: float = 1.0) -> str:
    """``faster`` when INT8 reaches ``min_speedup`` over FP32 in batch throughput and batch-1 latency in every
    pair of measured rounds; ``not faster`` when it misses on either in every pair; else ``within noise`` (also
    when rounds were not kept, so no spread is known)."""
    if None in (fp32.throughput_range, int8.throughput_range, fp32.batch1_range, int8.batch1_range):
        return WITHIN_NOISE
    throughput = _verdict(int8.throughput_range[0] / fp32.throughput_range[1],
                          int8.throughput_range[1] / fp32.throughput_range[0], min_speedup)
    batch1 = _verdict(fp32.batch1_range[0] / int8.batch1_range[1], fp32.batch1_range[1] / int8.batch1_range[0],
                      min_speedup)
    if NOT_FASTER in (throughput, batch1):
        return NOT_FASTER
    return FASTER if throughput == batch1 == FASTER else WITHIN_NOISE


def speed_check(fp32: Latency, int8: Latency, min_speedup: float = 1.0) -> dict:
    """Is INT8 faster than FP32 beyond the measured noise? ``int8_faster`` only when :func:`speedup_verdict` says
    ``faster``; a speed-up within the noise counts as not faster (the fixed rule), and ``speed_rule`` says
    which applied. The speed-ups themselves are ratios of medians, for the report."""
    verdict = speedup_verdict(fp32, int8, min_speedup)
    rule = {FASTER: f"measured: INT8 reached x{min_speedup:g} FP32's speed in every round",
            NOT_FASTER: f"measured: INT8 missed x{min_speedup:g} FP32's speed in every round",
            WITHIN_NOISE: f"fixed rule: a speed-up not beyond the measured noise of x{min_speedup:g} counts as not "
                          "faster"}[verdict]
    return {
        "int8_faster": verdict == FASTER,
        "speed_verdict": verdict,
        "speed_rule": rule,
        "throughput_speedup": round(int8.throughput / fp32.throughput, 3),
        "batch1_speedup": round(fp32.batch1_ms / int8.batch1_ms, 3),
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
           checks: dict[QuantConfig, dict], speed_accuracy_budget: float, tolerance: float,
           floor: float | None = None) -> tuple[QuantConfig, str]:
    """Of the timed candidates ``pool``, the fastest one measured faster than FP32 beyond noise within
    ``speed_accuracy_budget`` points of the best validation top-1 and at or above ``floor`` (an accuracy goal),
    else the most accurate candidate: users buy speed at a bounded accuracy loss.

    Timing decides only beyond noise. Candidates are walked from the most accurate down (ties in the space's
    fixed order); one replaces the current choice only when its every round of batch throughput beats every round
    of the current one and it is not slower at batch 1 beyond noise. Without a replacement the most accurate one
    stands, whatever the medians say. Returns the choice and the rule that made it."""
    best_acc = max(results.values())
    budget = max(speed_accuracy_budget, tolerance)
    lowest = best_acc - budget if floor is None else max(best_acc - budget, floor)
    fast = [c for c in pool if checks[c]["int8_faster"] and results[c] >= lowest]
    ranked = sorted(fast or pool, key=lambda c: (-results[c], c))
    # Without a fast candidate speed may still break a tie in accuracy, never trade accuracy away.
    walk = ranked if fast else [c for c in ranked if results[c] == results[ranked[0]]]
    pick, refused = walk[0], False
    for c in walk[1:]:
        if latency[c].clearly_faster(latency[pick]):
            if latency[c].clearly_slower_at_batch1(latency[pick]):
                refused = True
            else:
                pick = c
    if fast:
        basis = (f"the fastest candidate measured faster than FP32 beyond noise within {budget:g} pt of the best "
                 "validation top-1" + ("" if floor is None else " and above the accuracy goal"))
    else:
        basis = "the most accurate candidate (none measured faster than FP32 beyond noise)"
    if pick != walk[0]:
        return pick, (f"{basis}: faster in every round than {walk[0].key()} "
                      f"({results[walk[0]]:g} against {results[pick]:g} validation top-1)")
    if len(walk) == 1:
        return pick, basis
    why = ("a faster one was slower at batch 1 beyond noise" if refused else
           "no other was faster than it in every round")
    tied = sum(results[c] == results[pick] for c in walk)
    order = f", the first of {tied} equally accurate in the space's fixed order" if tied > 1 else ""
    return pick, f"{basis}: the most accurate{order}; {why}"


def deployment(int8_faster: bool, fallback_to_fp32_if_slower: bool) -> str:
    """Which model to deploy: INT8 unless it is not faster and the fallback to FP32 is on."""
    return "int8" if int8_faster or not fallback_to_fp32_if_slower else "fp32"
