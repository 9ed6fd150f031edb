"""How well the latency model predicts whole models: random pruned variants, predicted vs measured.

The target's per-layer table (built on first use and cached, like `compressor profile`) is calibrated on the
unpruned model; then ``--variants`` random channel-pruned variants (each prunable layer of ``--scope`` kept at a
uniform random fraction in [--min-keep, 1], random channels) are predicted from the table and timed whole, each in
its own process. Prints per variant predicted and measured ms, and per batch size the mean absolute percentage
error with the calibration offset (what the passes use), without it, and with a calibration factor instead of the
offset (the alternative). No weights, no data: speed only.

    python benchmarks/latency_model.py --model cifar_resnet56 --target ort-cpu --precision int8 --variants 20
    python benchmarks/latency_model.py --model cifar_resnet20 --variants 2 --duration 0.05   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from compressor.core.files import write_atomic
from compressor.core.zoo import ZOO
from compressor.graph.dependency import DependencyGraph
from compressor.runtime.latency_model import LatencyModel, LatencyTable, describe
from compressor.runtime.latency_targets import make_target

SHAPE = (3, 32, 32)


def random_variant(model, rng: np.random.Generator, scope: str, min_keep: float):
    """A copy of ``model`` with each layer of prunable groups kept at a random fraction of its groups."""
    model = copy.deepcopy(model).eval()
    graph = DependencyGraph(model, SHAPE)
    by_layer: dict[tuple[str, ...], list] = {}
    for g in graph.groups():
        if scope == "all" or not g.residual:
            by_layer.setdefault(g.layer_key, []).append(g)
    drop = []
    for groups in by_layer.values():
        keep = max(1, round(rng.uniform(min_keep, 1.0) * len(groups)))
        drop += [groups[i] for i in rng.permutation(len(groups))[keep:]]
    graph.prune(drop)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet56", choices=sorted(ZOO))
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--variants", type=int, default=20)
    p.add_argument("--scope", default="inner", choices=("inner", "all"))
    p.add_argument("--min-keep", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=0.3, help="seconds per layer and batch size in the table")
    p.add_argument("--model-duration", type=float, default=2.0, help="seconds per whole model and batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    target = make_target(args.target, args.threads)
    target.duration = args.duration
    table = LatencyTable(target)
    teacher = ZOO[args.model]().eval()
    rng = np.random.default_rng(args.seed)
    variants = [teacher] + [random_variant(teacher, rng, args.scope, args.min_keep) for _ in range(args.variants)]
    start = time.perf_counter()
    shapes = {layer.shape for v in variants for layer in describe(v, SHAPE)}
    timed = table.measure(shapes, args.precision, batches, progress=True)
    profile_s = time.perf_counter() - start

    target.model_duration = args.model_duration
    measured: list[dict[int, float]] = []
    for i, v in enumerate(variants):
        measured.append(target.time_models([(v, args.precision)], SHAPE, batches)[0])
        print(f"measured variant {i}/{len(variants) - 1}", flush=True)

    out = {"args": vars(args), "fingerprint": table.fingerprint, "table": str(table.path),
           "layers_timed_now": timed, "profile_seconds": profile_s, "batches": {}}
    for b in batches:
        lm = LatencyModel(table, args.precision, b)
        raw = [lm.predict_shapes([layer.shape for layer in describe(v, SHAPE)]) for v in variants]
        offset = measured[0][b] - raw[0]  # calibration on the unpruned model, as LatencyModel.calibrate does
        rows = []
        for i in range(len(variants)):
            pred, meas = raw[i] + offset, measured[i][b]
            rows.append({"variant": i, "measured_ms": meas, "predicted_ms": pred, "uncalibrated_ms": raw[i],
                         "error_pct": 100 * (pred - meas) / meas})
        tested = rows[1:]
        mape = float(np.mean([abs(r["error_pct"]) for r in tested]))
        mape_raw = float(np.mean([abs(r["uncalibrated_ms"] - r["measured_ms"]) / r["measured_ms"] * 100 for r in tested]))
        scale = measured[0][b] / raw[0]  # the alternative calibration: a factor instead of an offset
        mape_scaled = float(np.mean([abs(r["uncalibrated_ms"] * scale - r["measured_ms"]) / r["measured_ms"] * 100
                                     for r in tested]))
        out["batches"][b] = {"offset_ms": offset, "mape_pct": mape, "mape_uncalibrated_pct": mape_raw,
                             "scale": scale, "mape_scaled_pct": mape_scaled,
                             "max_abs_error_pct": float(max(abs(r["error_pct"]) for r in tested)), "rows": rows}
        print(f"\n{args.target} {args.precision} batch {b}: offset {offset:+.3f} ms (measured teacher "
              f"{measured[0][b]:.3f} ms, table sum {raw[0]:.3f} ms)")
        print("| variant | measured ms | predicted ms | error % |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['measured_ms']:.3f} | {r['predicted_ms']:.3f} | {r['error_pct']:+.1f} |")
        print(f"mean absolute error over {len(tested)} variants: {mape:.1f} % (without the offset {mape_raw:.1f} %, "
              f"with a factor x{scale:.3f} instead {mape_scaled:.1f} %), max {out['batches'][b]['max_abs_error_pct']:.1f} %")
    print(f"\nlayer shapes timed in this run: {timed} ({profile_s:.0f} s); table {table.path}")
    if args.json:
        write_atomic(Path(args.json), json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
