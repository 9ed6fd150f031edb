"""How far does the report's headline speed-up move with host noise: paired rounds against stage rows?

Takes a finished run's folder and times its teacher (``stages/00_teacher.onnx``) and its deployed file on the
headline's target as the run's headline does (``measure_isolated`` with the recipe's bench settings and ``bench.rounds``, the two
alternating round by round, each in a fresh process), ``--repeats`` times in a row. Each repetition gives the
paired figures the headline now reports (the median per-round ratio). For comparison it forms the figure the
headline reported before: two separate timings divided, here the teacher's first round of one repetition against
the deployed file's first round of the next (a window each, as a stage row, about one repetition apart; in a run
the stage rows are minutes apart). The run's own stage rows and headline are printed beside them. Not a timing
figure of the model: run it alone on the machine all the same, since the noise is what it measures.

    python benchmarks/headline_stability.py --run out/demo --repeats 10 --out out/headline_stability.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from compressor.core.data import Preprocess, load_dataset
from compressor.pipeline.report import read_report, stage_speed
from compressor.runtime.bench import TARGET_BACKENDS, Timed
from compressor.runtime.latency import measure_isolated, paired_speedup


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="out/demo", help="a finished `compressor compress` output folder")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="out/headline_stability.json")
    args = ap.parse_args()
    if args.repeats < 2:
        ap.error("--repeats must be at least 2: the unpaired figure divides one repetition's timing by the next's")
    run = Path(args.run)
    report = read_report(run / "report.json")
    bench, model = report.recipe["bench"], report.recipe["model"]
    test = load_dataset(report.recipe["data"]["path"], progress=False).test
    images = Preprocess(tuple(model["mean"]), tuple(model["std"]))(test.images[:64]).numpy()
    images = np.resize(images, (64, *images.shape[1:]))  # as the run does for a test split under 64 images
    target = report.headline.get("target", "ort-cpu")
    precision = report.recipe.get("openvino", {}).get("precision", "f32")
    files = {k: Timed(run / path, TARGET_BACKENDS[target], precision)
             for k, path in (("teacher", report.stages[0].onnx_path), ("deployed", report.deployed))}
    reps = []
    for i in range(args.repeats):
        lat = measure_isolated(files, images, 64, bench["threads"], rounds=bench.get("rounds", 5),
                               seconds=bench["duration"], warmup=bench["warmup"])
        reps.append(lat)
        p = paired_speedup(lat["teacher"], lat["deployed"])
        print(f"repeat {i + 1}/{args.repeats}: paired batch 1 {p['batch1_speedup']:.2f}x "
              f"(rounds {p['batch1_ratios']}), batch 64 {p['throughput_speedup']:.2f}x", flush=True)
    paired = [paired_speedup(r["teacher"], r["deployed"]) for r in reps]
    unpaired_b1 = [a["teacher"].batch1_rounds[0] / b["deployed"].batch1_rounds[0] for a, b in zip(reps, reps[1:])]
    unpaired_tp = [b["deployed"].throughput_rounds[0] / a["teacher"].throughput_rounds[0] for a, b in zip(reps, reps[1:])]
    teacher, deployed = report.stages[0], next(s for s in report.stages if s.onnx_path == report.deployed)
    rows_t, rows_d = stage_speed(report, teacher, target), stage_speed(report, deployed, target)  # the headline's target
    result = {
        "run": str(run), "target": target, "repeats": args.repeats, "rounds": paired[0]["rounds"], "bench": bench,
        "paired_batch1": spread([p["batch1_speedup"] for p in paired]),
        "paired_batch64": spread([p["throughput_speedup"] for p in paired]),
        "unpaired_batch1": spread(unpaired_b1), "unpaired_batch64": spread(unpaired_tp),
        "run_stage_rows": {"batch1": round(rows_t[0] / rows_d[0], 3), "batch64": round(rows_d[1] / rows_t[1], 3)},
        "run_headline": {k: report.headline.get("vs_teacher", {}).get(k) for k in ("batch1_speedup", "batch64_speedup")},
        "per_repeat": paired,
        "teacher_batch1_ms_per_round": [list(np.round(r["teacher"].batch1_rounds, 4)) for r in reps],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for k in ("paired_batch1", "unpaired_batch1", "paired_batch64", "unpaired_batch64"):
        s = result[k]
        print(f"{k:>17}: min {s['min']:.2f}x  median {s['median']:.2f}x  max {s['max']:.2f}x")
    print(f"the run's stage rows: {result['run_stage_rows']}; its headline: {result['run_headline']}")


if __name__ == "__main__":
    main()
