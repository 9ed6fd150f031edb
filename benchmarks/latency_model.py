"""How well the latency model predicts whole models: random pruned variants, predicted vs measured.

The target's per-layer table (built on first use and cached, like `compressor profile`) is calibrated on the
unpruned model; then ``--variants`` random channel-pruned variants (each prunable layer of ``--scope`` kept at a
uniform random fraction in [--min-keep, 1], random channels) and ``--depth-variants`` random block-removed
variants (N2N's removable units, 2 to all but one removed) are predicted from the table and timed whole, each in
its own process. Prints per variant predicted and measured ms, and per batch size and kind the mean absolute
percentage error of the calibration the passes use (an overhead per layer when the whole model runs slower than
the table's sum, a factor when it runs faster: :meth:`LatencyModel.calibrate`), of each form alone, of a constant
offset, and without calibration.
No weights, no data: speed only.

    python benchmarks/latency_model.py --model cifar_resnet56 --target ort-cpu --precision int8 --variants 20
    python benchmarks/latency_model.py --model cifar_resnet20 --variants 2 --depth-variants 2 --duration 0.05
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
from torch import nn

from compressor.core.files import write_atomic
from compressor.core.zoo import ZOO
from compressor.graph.dependency import DependencyGraph
from compressor.n2n.layers import Candidate, build_student, describe_layers
from compressor.runtime.latency_model import EMPTY, LatencyModel, LatencyTable, describe
from compressor.runtime.latency_targets import TARGETS, make_target

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


def random_depth_variant(model: nn.Module, table, rng: np.random.Generator) -> nn.Module:
    """``model`` with a random 2 to n − 1 of its n removable units (residual blocks) removed, as N2N removes them."""
    units = sorted({layer.unit for layer in table.layers if layer.decides})
    k = int(rng.integers(2, len(units)))
    chosen = [units[i] for i in sorted(rng.choice(len(units), k, replace=False))]
    return build_student(model, table, Candidate.make(chosen), SHAPE).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet56", choices=sorted(ZOO))
    p.add_argument("--target", default="ort-cpu", choices=sorted(TARGETS))
    p.add_argument("--openvino-precision", default="f32", choices=("f32", "bf16", "default"),
                   help="openvino-cpu: the precision hint for the float parts")
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--variants", type=int, default=20, help="random channel-pruned variants")
    p.add_argument("--depth-variants", type=int, default=10, help="random block-removed variants")
    p.add_argument("--scope", default="inner", choices=("inner", "all"))
    p.add_argument("--min-keep", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=0.3, help="seconds per layer and batch size in the table")
    p.add_argument("--model-duration", type=float, default=2.0, help="seconds per whole model and batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    target = make_target(args.target, args.threads, args.openvino_precision)
    target.duration = args.duration
    table = LatencyTable(target)
    teacher = ZOO[args.model]().eval()
    rng = np.random.default_rng(args.seed)
    variants = [teacher] + [random_variant(teacher, rng, args.scope, args.min_keep) for _ in range(args.variants)]
    units = describe_layers(teacher, input_shape=SHAPE)
    variants += [random_depth_variant(teacher, units, rng) for _ in range(args.depth_variants)]
    kinds = ["unpruned"] + ["width"] * args.variants + ["depth"] * args.depth_variants
    start = time.perf_counter()
    shapes = {layer.shape for v in variants for layer in describe(v, SHAPE)}
    timed = table.measure(shapes, args.precision, batches, progress=True)
    profile_s = time.perf_counter() - start

    target.model_duration = args.model_duration
    measured: list[dict[int, float]] = []
    for i, v in enumerate(variants):
        measured.append(target.time_models([(v, args.precision)], SHAPE, batches)[0])
        print(f"measured variant {i}/{len(variants) - 1} ({kinds[i]})", flush=True)

    out = {"args": vars(args), "fingerprint": table.fingerprint, "table": str(table.path),
           "layers_timed_now": timed, "profile_seconds": profile_s, "batches": {}}
    for b in batches:
        lm = LatencyModel(table, args.precision, b)
        empty = table.get(EMPTY, args.precision, b)
        shapes = [[layer.shape for layer in describe(v, SHAPE)] for v in variants]
        own = [lm.cost(s) for s in shapes]
        raw = [empty + o for o in own]
        difference = measured[0][b] - raw[0]  # as LatencyModel.calibrate, from the unpruned model
        factor = max(own[0] + difference, 0.0) / own[0]
        counts = [lm.count(s) for s in shapes]
        per_layer = difference / counts[0]
        forms = {"overhead": [r + per_layer * n for r, n in zip(raw, counts)], "offset": [r + difference for r in raw],
                 "factor": [empty + factor * o for o in own], "uncalibrated": raw}
        forms["deployed"] = forms["overhead"] if difference >= 0 else forms["factor"]
        rows = [{"variant": i, "kind": kinds[i], "measured_ms": measured[i][b],
                 **{f"{k}_ms": v[i] for k, v in forms.items()},
                 "error_pct": 100 * (forms["deployed"][i] - measured[i][b]) / measured[i][b]} for i in range(len(variants))]
        summary = {}
        for kind in ("width", "depth"):
            tested = [r for r in rows if r["kind"] == kind]
            if tested:
                summary[kind] = {f"mape_{k}_pct": float(np.mean([abs(r[f"{k}_ms"] - r["measured_ms"]) / r["measured_ms"] * 100
                                                                 for r in tested])) for k in forms}
                summary[kind]["max_abs_error_pct"] = float(max(abs(r["error_pct"]) for r in tested))
        out["batches"][b] = {"difference_ms": difference, "factor": factor, "overhead_ms_per_layer": per_layer,
                             "form": "overhead" if difference >= 0 else "factor", "by_kind": summary, "rows": rows}
        form = f"an overhead of {per_layer:.4f} ms per layer" if difference >= 0 else f"a factor x{factor:.3f}"
        print(f"\n{args.target} {args.precision} batch {b}: measured unpruned {measured[0][b]:.3f} ms, table sum "
              f"{raw[0]:.3f} ms: calibrated by {form}")
        print("| variant | kind | measured ms | predicted ms | error % |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['kind']} | {r['measured_ms']:.3f} | {r['deployed_ms']:.3f} | {r['error_pct']:+.1f} |")
        for kind, m in summary.items():
            print(f"{kind} variants: mean absolute error {m['mape_deployed_pct']:.1f} % (max {m['max_abs_error_pct']:.1f} %); "
                  f"overhead alone {m['mape_overhead_pct']:.1f} %, factor alone {m['mape_factor_pct']:.1f} %, "
                  f"constant offset {m['mape_offset_pct']:.1f} %, "
                  f"uncalibrated {m['mape_uncalibrated_pct']:.1f} %")
    print(f"\nlayer shapes timed in this run: {timed} ({profile_s:.0f} s); table {table.path}")
    if args.json:
        write_atomic(Path(args.json), json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
