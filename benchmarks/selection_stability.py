"""How stable is the quantize pass's choice among timed INT8 candidates under host noise?

Runs a recipe once with the quantize pass's timing call repeated: the same ``measure_isolated`` call on the same
timed models (FP32 and the INT8 candidates), ``--repeats`` times. Each repetition is then judged as the pass
judges it (:func:`compressor.quant.selection.choose`), and, for comparison, by the rule used before 2026-12-04
(each model's slowest round against the other's fastest, unpaired; a candidate replaces the choice when faster at
all). A stable rule picks the same candidate, and the same deployment, in every repetition. The first repetition
is what the run itself uses. Not a timing figure: run it alone on the machine all the same, since the noise is
what it measures.

    python benchmarks/selection_stability.py --recipe recipes/demo.yaml --repeats 12 --out out/selection
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import compressor
from compressor.passes.quantize import Quantize
from compressor.quant.selection import choose, speed_check
from compressor.quant.space import config_space
from compressor.runtime.latency import Latency, measure_isolated


def unpaired_choice(pool, results, lat, fp32, budget=0.5, tolerance=0.1):
    """The rule before 2026-12-04: INT8 faster when its slowest round beat FP32's fastest (throughput and batch 1);
    walking down from the most accurate, a candidate replaced the choice when its slowest throughput round beat
    the choice's fastest and it was not slower at batch 1 beyond that spread. Returns (choice, int8 faster)."""
    lo, hi = min, max

    def faster(a, b):
        return lo(a.throughput_rounds) > hi(b.throughput_rounds)

    def int8_faster(c):  # ratios of the extremes at or above 1, as the old verdict had it
        return lo(lat[c].throughput_rounds) >= hi(fp32.throughput_rounds) and hi(lat[c].batch1_rounds) <= lo(
            fp32.batch1_rounds)

    best = max(results.values())
    fast = [c for c in pool if int8_faster(c) and results[c] >= best - max(budget, tolerance)]
    ranked = sorted(fast or pool, key=lambda c: (-results[c], c))
    walk = ranked if fast else [c for c in ranked if results[c] == results[ranked[0]]]
    pick = walk[0]
    for c in walk[1:]:
        if faster(lat[c], lat[pick]) and not lo(lat[c].batch1_rounds) > hi(lat[pick].batch1_rounds):
            pick = c
    return pick, int8_faster(pick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", default="out/selection")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Latency]] = []

    def timed_repeatedly(models, images, batch, threads, progress=False, **kw):
        for i in range(args.repeats):
            runs.append(measure_isolated(models, images, batch, threads, **kw))
            print(f"repetition {i + 1}/{args.repeats}: " + ", ".join(
                f"{k[:44]} {v.throughput:.0f} img/s" for k, v in runs[-1].items()), flush=True)
        return runs[0]

    Quantize.measure_latency = staticmethod(timed_repeatedly)
    report = compressor.compress(args.recipe, str(out / "run"), force=True)
    q = next(s.details for s in report.stages if s.details and s.details.get("latency_candidates"))
    by_key = {c.key(): c for c in config_space(q["target"])}
    results = {by_key[k]: v["val_top1"] for k, v in q["latency_candidates"].items()}
    pool = list(results)
    tally: dict[str, Counter] = {"paired (the pass)": Counter(), "unpaired (before 2026-12-04)": Counter()}
    rows = []
    for run in runs:
        fp32 = run["fp32"]
        lat = {by_key[k.split(":", 1)[1]]: v for k, v in run.items() if k != "fp32"}
        checks = {c: speed_check(fp32, lat[c]) for c in pool}
        new = choose(pool, results, lat, checks, 0.5, 0.1)[0]
        old, old_fast = unpaired_choice(pool, results, lat, fp32)
        picks = {"paired (the pass)": (new.key(), "int8" if checks[new]["int8_faster"] else "fp32"),
                 "unpaired (before 2026-12-04)": (old.key(), "int8" if old_fast else "fp32")}
        for rule, p in picks.items():
            tally[rule][p] += 1
        rows.append({"picks": picks, "throughput": {k: v.throughput for k, v in run.items()}})
    summary = {"candidates": {c.key(): v for c, v in results.items()},
               "tally": {rule: [[*k, n] for k, n in t.most_common()] for rule, t in tally.items()}, "repetitions": rows}
    (out / "selection_stability.json").write_text(json.dumps(summary, indent=1))
    for rule, t in tally.items():
        print(f"{rule}: " + "; ".join(f"{n} of {len(runs)} {key} -> {dep}" for (key, dep), n in t.most_common()))


if __name__ == "__main__":
    main()
