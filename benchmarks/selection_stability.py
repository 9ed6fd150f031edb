"""How stable is the quantize pass's choice among timed INT8 candidates under host noise?

Runs a recipe once with the quantize pass's timing call repeated: the same ``measure_isolated`` call on the same
timed models (FP32 and the INT8 candidates), ``--repeats`` times. Each repetition is then judged as the pass
judges it (:func:`compressor.quant.selection.choose`, a close pair timed again with the recipe's
``confirm_rounds``, each repetition with its own second timing), and, for comparison, by the two rules before it:
the paired rule deciding on the first rounds alone at x1.5 (2026-12-04), and each model's slowest round against
the other's fastest, unpaired, where a candidate replaced the choice when faster at all (before 2026-12-04). A
stable rule picks the same candidate, and the same deployment, in every repetition. The run itself judged the
first repetition's timing, with second timings of its own (its report's ``confirmations``). Not a timing figure:
run it alone on the machine all the same, since the noise is what it measures.

    python benchmarks/selection_stability.py --recipe recipes/demo.yaml --repeats 12 --out out/selection
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import compressor
from compressor.errors import GateFailed
from compressor.passes.quantize import Quantize
from compressor.quant.selection import choose, deployment, retimer, speed_check, walk_order
from compressor.quant.space import QuantConfig, config_space
from compressor.runtime.latency import Latency, measure_isolated, round_ratios, trimmed


def unpaired_choice(pool: list[QuantConfig], results: dict[QuantConfig, float], lat: dict[QuantConfig, Latency],
                    fp32: Latency, budget: float, tolerance: float, floor: float | None,
                    min_speedup: float) -> tuple[QuantConfig, bool]:
    """The rule before 2026-12-04: INT8 faster when its slowest round reached ``min_speedup`` over FP32's fastest
    (throughput and batch 1); walking down from the most accurate, a candidate replaced the choice when its slowest
    throughput round beat the choice's fastest and it was not slower at batch 1 beyond that spread. Returns the
    choice and whether it counted as faster than FP32."""

    def int8_faster(c: QuantConfig) -> bool:
        t, b = lat[c].throughput_rounds, lat[c].batch1_rounds
        return min(t) / max(fp32.throughput_rounds) >= min_speedup and min(fp32.batch1_rounds) / max(b) >= min_speedup

    walk = walk_order(pool, results, [c for c in pool if int8_faster(c)], budget, tolerance, floor)[0]
    pick = walk[0]
    for c in walk[1:]:
        if min(lat[c].throughput_rounds) > max(lat[pick].throughput_rounds) and not (
                min(lat[c].batch1_rounds) > max(lat[pick].batch1_rounds)):
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
    timed: dict = {}  # the models and settings of the pass's first timing, for each repetition's second timings

    def timed_repeatedly(models, images, batch, threads, progress=False, **kw):  # noqa: ANN001, ANN202
        if "fp32" not in models:  # the pass's own second timing of a close pair, in the run itself
            return measure_isolated(models, images, batch, threads, **kw)
        timed.update(models=models, images=images, batch=batch, threads=threads, kw=kw)
        for i in range(args.repeats):
            runs.append(measure_isolated(models, images, batch, threads, **kw))
            print(f"repetition {i + 1}/{args.repeats}: " + ", ".join(
                f"{k[:44]} {v.throughput:.0f} img/s" for k, v in runs[-1].items()), flush=True)
        return runs[0]

    Quantize.measure_latency = staticmethod(timed_repeatedly)
    try:
        compressor.compress(args.recipe, str(out / "run"), force=True)
    except GateFailed:  # the recipe's budget gate; the report is written all the same
        pass
    report = json.loads((out / "run" / "report.json").read_text())
    q = next(s["details"] for s in report["stages"] if (s.get("details") or {}).get("latency_candidates"))
    cfg = q["config"]
    floor = None if cfg["max_accuracy_drop"] is None else q["fp32_val_top1"] - cfg["max_accuracy_drop"]
    by_key = {c.key(): c for c in config_space(q["target"])}
    results = {by_key[k]: v["val_top1"] for k, v in q["latency_candidates"].items()}
    pool = list(results)
    rules = ("paired, close pairs timed again (the pass)", "paired, first rounds at x1.5 (2026-12-04)",
             "unpaired (before 2026-12-04)")
    tally: dict[str, Counter] = {r: Counter() for r in rules}
    rows = []
    for run in runs:
        fp32 = run["fp32"]
        lat = {by_key[k.split(":", 1)[1]]: v for k, v in run.items() if k != "fp32"}
        checks = {c: speed_check(fp32, lat[c], cfg["min_speedup"]) for c in pool}
        confirmations: list[dict] = []
        retime = retimer(measure_isolated, timed["models"], timed["images"], timed["batch"], timed["threads"],
                         cfg["confirm_rounds"], confirmations, **timed["kw"])
        judge = (cfg["speed_accuracy_budget"], cfg["accuracy_tolerance"], floor)
        new = choose(pool, results, lat, checks, *judge, cfg["min_speed_gain"],
                     retime if cfg["confirm_rounds"] else None)[0]
        first = choose(pool, results, lat, checks, *judge, 0.5)[0]
        old, old_fast = unpaired_choice(pool, results, lat, fp32, *judge, cfg["min_speedup"])
        fallback = cfg["fallback_to_fp32_if_slower"]
        picks = {rules[0]: (new.key(), deployment(checks[new]["int8_faster"], fallback)),
                 rules[1]: (first.key(), deployment(checks[first]["int8_faster"], fallback)),
                 rules[2]: (old.key(), deployment(old_fast, fallback))}
        for rule, p in picks.items():
            tally[rule][p] += 1
        # Each candidate's paired throughput ratio to the pass's choice: trimmed low, median, trimmed high.
        spread = {}
        for c in pool:
            t = round_ratios(lat[c], lat[new])[0]
            spread[c.key()] = [round(trimmed(t)[0], 3), round(statistics.median(t), 3), round(trimmed(t)[1], 3)]
        rows.append({"picks": picks, "ratio_to_choice": spread, "confirmations": confirmations,
                     "timings": {k: v.as_dict() for k, v in run.items()}})
        print("; ".join(f"{rule}: {p[0]}" for rule, p in picks.items()) + "; ratio to the choice (trimmed low, "
              "median, high): " + ", ".join(f"{k} {v}" for k, v in spread.items() if k != new.key())
              + "".join(f"; timed again: {x['candidate']} / {x['against']} trimmed "
                        f"{x['throughput_ratio_trimmed']}, median {x['throughput_ratio_median']}"
                        for x in confirmations), flush=True)
    summary = {"candidates": {c.key(): v for c, v in results.items()},
               "tally": {rule: [[*k, n] for k, n in t.most_common()] for rule, t in tally.items()}, "repetitions": rows}
    (out / "selection_stability.json").write_text(json.dumps(summary, indent=1))
    for rule, t in tally.items():
        print(f"{rule}: " + "; ".join(f"{n} of {len(runs)} {key} -> {dep}" for (key, dep), n in t.most_common()))


if __name__ == "__main__":
    main()
