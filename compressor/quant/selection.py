"""Which INT8 configuration the quantize pass writes, and whether it is worth deploying on the target.

Decisions rest on seeded, deterministic quantities (validation top-1, the space's fixed order). A measured
latency decides only where it differs beyond its own noise. The timed models alternate round by round, so round i
of one model ran beside round i of the other: each comparison is a set of per-round ratios, which cancels drift
that slows every model alike. A ratio counts when every round but the most extreme quarter at each end shows it
(with 5 rounds: 4 at or above a threshold for "faster", 4 below it for "not faster"), so one burst of host load
during one round cannot decide. Where the rounds disagree a fixed rule decides, so timing jitter never picks the
artifact; each decision records which rule made it. Two candidates whose first rounds are close are timed again,
alone and with more rounds, before a small gain may decide between them.
"""

from __future__ import annotations

from collections.abc import Callable

from compressor.quant.space import QuantConfig
from compressor.runtime.latency import Latency, paired_speedup, round_ratios, trimmed

FASTER, NOT_FASTER, WITHIN_NOISE = "faster", "not faster", "within noise"
BEYOND_NOISE = "in all but the most extreme quarter of the paired rounds"
# A gain the first (five) paired rounds show beyond noise above this is decided without timing the pair again:
# fused candidates a little apart never read that far apart in five rounds, unfused ones run several times slower
# (the demo's repetitions in BENCHMARKS.md).
CLEAR_GAIN = 0.5


def _verdict(ratios: list[float], need: float) -> str:
    """``faster`` when all rounds but the most extreme quarter reach ``need``, ``not faster`` when all but the
    most extreme quarter miss it, else ``within noise``."""
    low, high = trimmed(ratios)
    return FASTER if low >= need else NOT_FASTER if high < need else WITHIN_NOISE


def speedup_verdict(fp32: Latency, int8: Latency, min_speedup: float = 1.0) -> str:
    """``faster`` when INT8 reaches ``min_speedup`` over FP32 beyond noise in both batch throughput and batch-1
    latency; ``not faster`` when it misses on either beyond noise; else ``within noise`` (also when rounds were
    not kept, so no noise is known)."""
    ratios = round_ratios(int8, fp32)
    if ratios is None:
        return WITHIN_NOISE
    throughput, batch1 = (_verdict(r, min_speedup) for r in ratios)
    if NOT_FASTER in (throughput, batch1):
        return NOT_FASTER
    return FASTER if throughput == batch1 == FASTER else WITHIN_NOISE


def speed_check(fp32: Latency, int8: Latency, min_speedup: float = 1.0) -> dict:
    """Is INT8 faster than FP32 beyond the measured noise? ``int8_faster`` only when :func:`speedup_verdict` says
    ``faster``; a speed-up within the noise counts as not faster (the fixed rule), and ``speed_rule`` says
    which applied. The speed-ups themselves are ratios of medians, for the report."""
    verdict = speedup_verdict(fp32, int8, min_speedup)
    rule = {FASTER: f"measured: INT8 reached x{min_speedup:g} FP32's speed {BEYOND_NOISE}",
            NOT_FASTER: f"measured: INT8 missed x{min_speedup:g} FP32's speed {BEYOND_NOISE}",
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


def walk_order(pool: list[QuantConfig], results: dict[QuantConfig, float], faster_than_fp32: list[QuantConfig],
               speed_accuracy_budget: float, tolerance: float,
               floor: float | None = None) -> tuple[list[QuantConfig], bool]:
    """The candidates :func:`choose` considers, in the order it walks them: those faster than FP32 within the
    accuracy budget and at or above ``floor``, most accurate first (ties in the space's fixed order); without any,
    only those tied for the best accuracy, since speed may break a tie but never trade accuracy away. Also returns
    whether the walk is of candidates faster than FP32."""
    best = max(results.values())
    budget = max(speed_accuracy_budget, tolerance)
    lowest = best - budget if floor is None else max(best - budget, floor)
    fast = [c for c in faster_than_fp32 if results[c] >= lowest]
    ranked = sorted(fast or pool, key=lambda c: (-results[c], c))
    return (ranked if fast else [c for c in ranked if results[c] == results[ranked[0]]]), bool(fast)


def retimer(measure: Callable, models: dict, images: object, batch: int, threads: int, rounds: int, log: list,
            **kw: object) -> Callable[[QuantConfig, QuantConfig], tuple[Latency, Latency]]:
    """The second timing :func:`choose` asks for: the two candidates' models (keyed ``int8:<config key>``) timed
    alone for ``rounds`` paired rounds through ``measure`` (``measure_isolated``'s signature; ``kw`` passed on),
    each timing appended to ``log`` as the stage record's ``confirmations`` entry."""

    def retime(candidate: QuantConfig, current: QuantConfig) -> tuple[Latency, Latency]:
        keys = [f"int8:{candidate.key()}", f"int8:{current.key()}"]
        again = measure({k: models[k] for k in keys}, images, batch, threads, rounds=rounds, **kw)
        # The candidate's throughput and batch-1 speed over the current choice's: trimmed low and high, median.
        p = paired_speedup(again[keys[1]], again[keys[0]]) or {}
        log.append({
            "candidate": candidate.key(), "against": current.key(), "rounds": p.get("rounds", 0),
            "throughput_ratio_trimmed": p.get("throughput_trimmed"), "throughput_ratio_median": p.get("throughput_speedup"),
            "batch1_ratio_trimmed": p.get("batch1_trimmed"),
            "latency": {k.split(":", 1)[1]: v.as_dict() for k, v in again.items()}})
        return again[keys[0]], again[keys[1]]

    return retime


def choose(pool: list[QuantConfig], results: dict[QuantConfig, float], latency: dict[QuantConfig, Latency],
           checks: dict[QuantConfig, dict], speed_accuracy_budget: float, tolerance: float,
           floor: float | None = None, min_speed_gain: float = 0.05,
           retime: Callable[[QuantConfig, QuantConfig], tuple[Latency, Latency]] | None = None,
           ) -> tuple[QuantConfig, str]:
    """Of the timed candidates ``pool``, the fastest by a real margin among those measured faster than FP32 beyond
    noise within ``speed_accuracy_budget`` points of the best validation top-1 and at or above ``floor`` (an
    accuracy goal), else the most accurate candidate: users buy speed at a bounded accuracy loss.

    Timing decides only beyond noise and only for a real gain. Candidates are walked from the most accurate down
    (ties in the space's fixed order); one replaces the current choice only when its batch throughput is more than
    ``1 + min_speed_gain`` times the current one's beyond noise (:func:`trimmed` per-round ratios) and it is not
    slower at batch 1 beyond noise. A pair whose first rounds are close (above ``1 + min_speed_gain`` in more
    than the most extreme quarter of rounds, but not above ``max(1 + min_speed_gain, 1 + CLEAR_GAIN)`` in all
    but that quarter) is decided on
    ``retime(candidate, choice)``: the two timed again, alone, with more rounds, since five rounds on a shared host
    cannot tell a small gain from noise and an artifact chosen on them would differ between runs of the same
    recipe. Without ``retime`` the first rounds decide, at ``min_speed_gain`` all the same (so pair it with a gain
    of 0.5 on a shared host). Without a replacement the most accurate one stands, whatever the medians say.
    Returns the choice and the rule that made it."""
    walk, fast = walk_order(pool, results, [c for c in pool if checks[c]["int8_faster"]], speed_accuracy_budget,
                            tolerance, floor)
    budget = max(speed_accuracy_budget, tolerance)
    need = 1 + min_speed_gain
    pick, beaten, refused, beyond, retimes = walk[0], None, False, BEYOND_NOISE, 0
    for c in walk[1:]:
        ratios = round_ratios(latency[c], latency[pick])
        if ratios is None:
            continue
        low, high = trimmed(ratios[0])
        retimed = retime is not None and high > need and not low > max(need, 1 + CLEAR_GAIN)
        if retimed:
            retimes += 1
            ratios = round_ratios(*retime(c, pick))
            if ratios is None:
                raise ValueError(f"the second timing of {c.key()} against {pick.key()} kept no paired rounds")
        # Strictly more than the gain: with no gain asked, equal speed must not replace the more accurate one.
        if not trimmed(ratios[0])[0] > need:
            continue
        if _verdict(ratios[1], 1.0) == NOT_FASTER:
            refused = True
        else:
            pick, beaten = c, pick
            beyond = (f"in all but the most extreme quarter of {len(ratios[0])} paired rounds, timed again after "
                      "close first rounds") if retimed else BEYOND_NOISE
    if fast:
        basis = (f"the fastest candidate measured faster than FP32 beyond noise within {budget:g} pt of the best "
                 "validation top-1" + ("" if floor is None else " and above the accuracy goal"))
    else:
        basis = "the most accurate candidate (none measured faster than FP32 beyond noise)"
    gain = f"more than x{need:g} the throughput"
    if beaten is not None:
        return pick, (f"{basis}: {gain} of {beaten.key()} {beyond} (the most accurate, {walk[0].key()}, "
                      f"scored {results[walk[0]]:g} against {results[pick]:g} validation top-1)")
    if len(walk) == 1:
        return pick, basis
    why = ("a faster one was slower at batch 1 beyond noise" if refused else
           f"no other ran at more than x{need:g} its throughput {BEYOND_NOISE}")
    if retimes:
        why += f" ({retimes} close pair{'s' if retimes > 1 else ''} timed again)"
    tied = sum(results[c] == results[pick] for c in walk)
    order = f", the first of {tied} equally accurate in the space's fixed order" if tied > 1 else ""
    return pick, f"{basis}: the most accurate{order}; {why}"


def deployment(int8_faster: bool, fallback_to_fp32_if_slower: bool) -> str:
    """Which model to deploy: INT8 unless it is not faster and the fallback to FP32 is on."""
    return "int8" if int8_faster or not fallback_to_fp32_if_slower else "fp32"
