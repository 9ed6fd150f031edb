"""Quantune-style PTQ search benchmark on the shared CIFAR-10 teachers.

Phase ``measure`` (real measurements, slow): for each model, evaluate every configuration of the ort-cpu space on
the validation split (the ground-truth grid), then report the best configuration's test top-1 against FP32 and
ONNX Runtime's ``quantize_static`` defaults, and ORT-CPU latency (batch 1) and throughput (batch 64) of INT8 vs
FP32, each model timed in its own process as the pass does. Writes ``<out>/grid_<model>.json``.

Phase ``search`` (cheap): replays the XGBoost tuner, random search and the GA against the measured grid (an
evaluation is deterministic, so looking it up gives the same accuracy as re-measuring it; its cost is the measured
seconds) and reports evaluations and wall time to come within 0.1 point of the grid's best, mean over seeds.

    python benchmarks/quant_search.py measure --models cifar_resnet20 cifar_resnet56 cifar_mobilenetv2
    python benchmarks/quant_search.py search
    python benchmarks/quant_search.py latency --models cifar_resnet20 cifar_resnet56

Phase ``latency``: op types ORT runs and latency of FP32, ORT ``quantize_static`` defaults and our emission (a
fixed configuration, plus the grid's selected one when the grid exists), by the pass's harness (``--harness
isolated``: one process per measurement) or with every session in this process (``--harness interleaved``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization as ortq

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.zoo import ZOO
from compressor.quant import qdq as qdq_module
from compressor.quant.latency import candidates, measure_interleaved, measure_isolated
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.space import QuantConfig
from compressor.quant.tuner import (
    Budget,
    GeneticSearch,
    RandomSearch,
    Record,
    XGBoostTuner,
    model_descriptors,
    search,
)
from compressor.runtime.export import export_onnx

DATA = Path("/work/shared/data")
TEACHERS = {
    "cifar_resnet20": "cifar10_resnet20.pt",
    "cifar_resnet56": "cifar10_resnet56.pt",
    "cifar_mobilenetv2": "cifar10_mobilenetv2_w0.5.pt",
}


def load_teacher(name: str) -> torch.nn.Module:
    model = ZOO[name]()
    model.load_state_dict(torch.load(DATA / "teachers" / TEACHERS[name], weights_only=True))
    return model.eval()


def ort_default(float_path: Path, calibration, preprocess: Preprocess, out: Path) -> Path:
    """ONNX Runtime's quantize_static with its defaults (QDQ, MinMax), calibrated on the same split."""

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": preprocess(calibration.images[i : i + 100]).numpy()}
                            for i in range(0, len(calibration), 100)])

        def get_next(self):
            return next(self.it, None)

    ortq.quantize_static(str(float_path), str(out), Reader(), quant_format=ortq.QuantFormat.QDQ)
    return out


def optimized_op_types(model: onnx.ModelProto | str) -> dict[str, int]:
    """Op types ONNX Runtime actually runs (ORT_ENABLE_ALL, saved with optimized_model_filepath)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 3
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        counts: dict[str, int] = {}
        for n in onnx.load(opts.optimized_model_filepath).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def measure(args: argparse.Namespace) -> None:
    ds = load_dataset(args.data)
    splits = make_splits(ds, args.seed, validation=args.validation, calibration=args.calibration)
    pp = Preprocess()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        t0 = time.time()
        teacher = load_teacher(name)
        work = Path(tempfile.mkdtemp(prefix=f"qbench-{name}-"))
        fp32_path = export_onnx(teacher, work / "fp32.onnx", (3, 32, 32))
        problem = QuantProblem(onnx.load(fp32_path), splits.calibration, splits.validation, pp)
        fp32_val = top1_onnx(problem.float_model, splits.validation, pp)
        record = {
            "model": name, "descriptors": model_descriptors(teacher, problem.float_model), "fp32_val_top1": fp32_val,
            "validation_images": len(splits.validation), "calibration_images": len(splits.calibration), "results": [],
        }
        space = problem.space()
        print(f"[{name}] fp32 val {fp32_val:.2f}; grid of {len(space)} configurations", flush=True)
        for i, config in enumerate(space):
            t = time.perf_counter()
            acc = problem.evaluate(config)
            dt = time.perf_counter() - t
            record["results"].append({"config": config.as_dict(), "val_top1": acc, "seconds": round(dt, 3)})
            print(f"  {i + 1:3d}/{len(space)} {config.key():55s} val {acc:6.2f}  {dt:5.1f}s", flush=True)
        record["calibration_runs"] = problem.calibrator.runs
        # The most accurate configuration, and the fastest of those within 0.1 point of it (what the pass deploys).
        pool = candidates(problem.results, 0.1, 3)
        paths = {}
        for cfg in pool:
            paths[f"int8:{cfg.key()}"] = str(work / f"{cfg.key()}.onnx")
            onnx.save(problem.build(cfg), paths[f"int8:{cfg.key()}"])
        paths["ort_default"] = str(ort_default(work / "fp32.onnx", splits.calibration, pp, work / "ort_default.onnx"))
        images = pp(splits.validation.images[:64]).numpy()
        lat = measure_isolated({"fp32": problem.float_model, **paths}, images)
        selected = max(pool, key=lambda c: lat[f"int8:{c.key()}"].throughput)
        record["best_config"] = pool[0].as_dict()
        record["selected_config"] = selected.as_dict()
        record["test_top1"] = {
            "fp32": top1_onnx(problem.float_model, splits.test, pp),
            "int8_best_val": top1_onnx(paths[f"int8:{pool[0].key()}"], splits.test, pp),
            "int8_selected": top1_onnx(paths[f"int8:{selected.key()}"], splits.test, pp),
            "ort_quantize_static_default": top1_onnx(paths["ort_default"], splits.test, pp),
        }
        record["latency"] = {k: v.as_dict() for k, v in lat.items()}
        record["op_types"] = {
            k: optimized_op_types(m) for k, m in
            {"fp32": problem.float_model, "int8_selected": paths[f"int8:{selected.key()}"],
             "ort_default": paths["ort_default"]}.items()
        }
        record["wall_seconds"] = round(time.time() - t0, 1)
        out = args.out / f"grid_{name}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out)
        print(json.dumps({k: record[k] for k in ("model", "best_config", "selected_config", "test_top1", "latency",
                                                  "op_types", "calibration_runs", "wall_seconds")}, indent=1),
              flush=True)


class SimClock:
    """Wall time of a replayed search: measured evaluation seconds plus the strategy's own real overhead."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t + time.process_time()


@contextlib.contextmanager
def patched(module: object, name: str, value: object):  # noqa: ANN201
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def latency(args: argparse.Namespace) -> None:
    """FP32 vs ORT quantize_static defaults vs our INT8 emission: op types ORT runs, and latency measured
    side by side (batch 1 median, batch 64 throughput). Uses the grid's selected configuration when present."""
    ds = load_dataset(args.data)
    splits = make_splits(ds, args.seed, validation=args.validation, calibration=args.calibration)
    pp = Preprocess()
    out = {}
    for name in args.models:
        work = Path(tempfile.mkdtemp(prefix=f"qlat-{name}-"))
        fp32_path = export_onnx(load_teacher(name), work / "fp32.onnx", (3, 32, 32))
        problem = QuantProblem(onnx.load(fp32_path), splits.calibration, splits.validation, pp)
        grid = args.out / f"grid_{name}.json"
        configs = {"int8 asymmetric/entropy/per-channel": QuantConfig(1000, "entropy", "asymmetric", "per_channel")}
        if grid.exists():
            configs["int8 grid-selected"] = QuantConfig(**json.loads(grid.read_text())["selected_config"])
        models = {"fp32": problem.float_model}
        models["ort quantize_static default"] = str(ort_default(fp32_path, splits.calibration, pp, work / "d.onnx"))
        models.update({k: problem.build(c) for k, c in configs.items()})
        # The same emission with the option-A shortcut left as uint8 Slice/Pad (before the 1x1-conv rewrite).
        with patched(qdq_module, "shortcut_convs", lambda model: 0):
            models["int8 asymmetric/entropy/per-channel, Slice/Pad shortcut"] = problem.build(
                configs["int8 asymmetric/entropy/per-channel"])
        images = pp(splits.validation.images[:64]).numpy()
        harness = measure_isolated if args.harness == "isolated" else measure_interleaved
        lat = harness(models, images, rounds=args.rounds)
        out[name] = {k: {**lat[k].as_dict(), "op_types": optimized_op_types(m)} for k, m in models.items()}
        print(f"\n## {name} (ORT {ort.__version__}, 2 intra-op threads, {args.harness}, median of {args.rounds} rounds)")
        print("| model | batch-1 ms | batch-64 img/s | x FP32 throughput | ops ORT runs |")
        print("|---|---|---|---|---|")
        for k, v in out[name].items():
            ops = ", ".join(f"{o} {c}" for o, c in v["op_types"].items())
            print(f"| {k} | {v['batch1_ms']:.2f} | {v['throughput']:.0f} | "
                  f"{v['throughput'] / out[name]['fp32']['throughput']:.2f} | {ops} |", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(out, indent=1))


STRATEGY_LABELS = ("xgboost (transfer)", "xgboost (no transfer)", "random", "ga")


def make_strategy(label: str, grid: dict, name: str, db: list[Record]):
    if label.startswith("xgboost"):
        return XGBoostTuner(grid["descriptors"], grid["fp32_val_top1"], db if "(transfer)" in label else [], name)
    return RandomSearch() if label == "random" else GeneticSearch()


def replay(args: argparse.Namespace) -> None:
    grids = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(args.out.glob("grid_*.json"))}
    db = [
        Record(g["model"], g["descriptors"], QuantConfig(**r["config"]), r["val_top1"], g["fp32_val_top1"])
        for g in grids.values() for r in g["results"]
    ]
    summary = {}
    for name, g in grids.items():
        table = {QuantConfig(**r["config"]): (r["val_top1"], r["seconds"]) for r in g["results"]}
        space = list(table)
        best = max(v[0] for v in table.values())
        rows = {}
        for label in STRATEGY_LABELS:
            evals, secs = [], []
            for seed in range(args.seeds):
                clock = SimClock()
                base = time.process_time()

                def evaluate(c, clock=clock, table=table):
                    clock.t += table[c][1]
                    return table[c][0]

                res = search(make_strategy(label, g, name, db), space, evaluate, Budget(len(space), None, best - 0.1),
                             seed, clock=lambda clock=clock, base=base: clock() - base)
                evals.append(len(res.steps))
                secs.append(res.steps[-1].seconds)
            rows[label] = {"evals_mean": float(np.mean(evals)), "evals": evals, "seconds_mean": float(np.mean(secs))}
        grid_secs = sum(v[1] for v in table.values())
        rows["grid (exhaustive)"] = {"evals_mean": float(len(space)), "seconds_mean": grid_secs}
        summary[name] = {"grid_best_val": best, "space": len(space), "strategies": rows}
        print(f"\n## {name}: grid best val {best:.2f} over {len(space)} configs (target >= {best - 0.1:.2f})")
        print(f"| strategy | evals to target (mean of {args.seeds} seeds) | per seed | wall s (mean) |")
        print("|---|---|---|---|")
        for k, v in rows.items():
            print(f"| {k} | {v['evals_mean']:.1f} | {v.get('evals', '-')} | {v['seconds_mean']:.1f} |")
    (args.out / "search_summary.json").write_text(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["measure", "search", "latency"])
    ap.add_argument("--models", nargs="+", default=list(TEACHERS))
    ap.add_argument("--data", default=str(DATA / "cifar10" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--validation", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--harness", choices=["isolated", "interleaved"], default="isolated",
                    help="latency: one process per measurement (the pass's) or every session in this process")
    ap.add_argument("--out", type=Path, default=Path("out/quant_bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    {"measure": measure, "search": replay, "latency": latency}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
