"""Quantune-style PTQ search benchmark on the shared CIFAR-10 teachers.

Phase ``measure`` (real measurements, slow): for each model, evaluate every configuration of the ort-cpu space
(the toolbox knobs included; ``--knob adaround=false`` narrows it) on the validation split (the ground-truth grid),
then report the best configuration's test top-1 against FP32 and ONNX Runtime's ``quantize_static`` defaults, and
ORT-CPU latency (batch 1) and throughput (batch 64) of INT8 vs FP32, each model timed in its own process as the
pass does (``--no-latency`` skips the timing). ``--weight-bits 4`` measures the harder space of 4-bit weights
(stored in int8, so no faster: a benchmark for the search, where the toolbox knobs matter). Writes
``<out>/grid_<label>.json`` every 20 configurations; a rerun continues an unfinished grid. A model is a zoo
teacher name or ``label=path`` to a pipeline stage file (``<out>/stages/NN_pass.pt`` of ``compressor compress``: a
pruned or N2N student).

Phase ``search`` (cheap): replays the XGBoost tuner (warm-started from the other grids or ``--warm-db``, and
cold), random search and the GA against the measured grids (an evaluation is deterministic, so looking it up gives
the same accuracy as re-measuring it; its cost is the measured seconds, plus a weight key's AdaRound /
bias-correction time the first time a search needs it). It prints each grid's spread first (best, median, share
within 0.1 point), then the evaluations and wall time to come within ``--within`` (0.1) point of the grid's best, over
seeds.

    python benchmarks/quant_search.py measure --models cifar_resnet20 cifar_resnet56 cifar_mobilenetv2
    python benchmarks/quant_search.py measure --models r56_pruned=out/r56_prune/stages/02_fold_bn.pt
    python benchmarks/quant_search.py search --seeds 20 [--warm-db compressor/quant/quantune_db.json]
    python benchmarks/quant_search.py latency --models cifar_resnet20 cifar_resnet56

Phase ``cv``: the paper's choice of XGBoost eta and gamma, a 5-fold cross-validation grid over eta 0.1–0.4 and
gamma 0–5, on a database (default the shipped one), also scored leaving one model out.

``search --grids-from-db compressor/quant/quantune_db.json`` replays every model of the database (each record set is
a full grid), warm-started from the others, without the grid files; ``--strategies`` picks which strategies run
(``xgboost (pooled transfer)`` is Quantune's pooling; slow, since it refits on the whole database every step);
``--eta 0.15 --gamma 3`` replays the tuners with the paper's XGBoost parameters instead of the tuner's own.

    python benchmarks/quant_search.py cv --out out/cv
    python benchmarks/quant_search.py search --seeds 20 --grids-from-db compressor/quant/quantune_db.json --out out/s

Phase ``latency``: op types ORT runs and latency of FP32, ORT ``quantize_static`` defaults and our emission (a
fixed configuration, plus the grid's selected one when the grid exists), by the pass's harness (``--harness
isolated``: one process per measurement) or with every session in this process (``--harness interleaved``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization as ortq

from compressor.core.data import Preprocess, Splits, load_dataset, make_splits
from compressor.core.files import write_atomic
from compressor.core.serialize import load_model
from compressor.core.zoo import ZOO
from compressor.quant import qdq as qdq_module
from compressor.quant import tuner as tuner_module
from compressor.quant.adaround import AdaRoundSettings
from compressor.quant.problem import QuantProblem, key_name, top1_onnx, weight_key
from compressor.quant.quantune import QuantizeConfig
from compressor.quant.selection import candidates, choose, retimer, speed_check
from compressor.quant.space import KNOBS, QuantConfig
from compressor.quant.tuner import (
    DEFAULT_DB,
    XGB_PARAMS,
    XGB_ROUNDS,
    Budget,
    GeneticSearch,
    RandomSearch,
    Record,
    XGBoostTuner,
    features,
    load_db,
    model_descriptors,
    search,
)
from compressor.runtime.export import export_onnx
from compressor.runtime.latency import measure_interleaved, measure_isolated

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


def bits_suffix(weight_bits: int) -> str:
    """File-name suffix of a measurement with narrowed weights (``_w4``); none for int8."""
    return "" if weight_bits == 8 else f"_w{weight_bits}"


def load_spec(spec: str) -> tuple[str, torch.nn.Module]:
    """``name`` (a shared teacher) or ``label=path`` (a model file written by the pipeline)."""
    if "=" in spec:
        label, path = spec.split("=", 1)
        return label, load_model(path)[0].eval()
    return spec, load_teacher(spec)


def parse_knobs(items: list[str]) -> dict[str, tuple]:
    """``--knob adaround=false --knob clipping=max,mse`` → a restriction of the space."""
    out = {}
    for item in items:
        knob, values = item.split("=", 1)
        allowed = {str(v).lower(): v for v in KNOBS[knob]}
        out[knob] = tuple(allowed[v.lower()] for v in values.split(","))
    return out


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


def held_out_validation(splits: Splits, validation: int, seed: int) -> Splits:
    """Validation drawn from test/ (seeded, ``validation`` images), test the rest of it. The shared teachers were
    trained on all of train/, so a validation split from train/ is memorised data (ResNet-20: 97 % there against
    88 % on test), where quantization flips few predictions; held-out images show what INT8 costs."""
    order = np.random.default_rng(seed).permutation(len(splits.test))
    if not 0 < validation < len(order):
        raise SystemExit(f"--validation {validation} must lie between 1 and {len(order) - 1} (test/ has {len(order)})")
    return replace(splits, validation=splits.test.subset(np.sort(order[:validation])),
                   test=splits.test.subset(np.sort(order[validation:])))


def measure(args: argparse.Namespace) -> None:
    ds = load_dataset(args.data)
    splits = make_splits(ds, args.seed, validation=args.validation, calibration=args.calibration)
    if args.validation_from_test:
        splits = held_out_validation(splits, args.validation, args.seed)
    pp = Preprocess()
    args.out.mkdir(parents=True, exist_ok=True)
    restrict = parse_knobs(args.knob)
    for spec in args.models:
        t0 = time.time()
        name, teacher = load_spec(spec)
        work = Path(tempfile.mkdtemp(prefix=f"qbench-{name}-"))
        fp32_path = export_onnx(teacher, work / "fp32.onnx", (3, 32, 32))
        problem = QuantProblem(onnx.load(fp32_path), splits.calibration, splits.validation, pp, restrict=restrict,
                               adaround=AdaRoundSettings(iterations=args.adaround_iterations),
                               weight_images=args.weight_images, seed=args.seed, weight_bits=args.weight_bits)
        fp32_val = top1_onnx(problem.float_model, splits.validation, pp)
        out = args.out / f"grid_{name}{bits_suffix(args.weight_bits)}.json"
        record = {
            "model": name, "descriptors": model_descriptors(teacher, problem.float_model), "fp32_val_top1": fp32_val,
            "validation_images": len(splits.validation), "calibration_images": len(splits.calibration),
            "validation_from": "test" if args.validation_from_test else "train",
            "restrict": {k: list(v) for k, v in restrict.items()}, "adaround_iterations": args.adaround_iterations,
            "weight_images": args.weight_images, "weight_bits": args.weight_bits, "results": [],
            "weight_seconds": {}, "complete": False,
        }
        if out.exists():  # continue an unfinished grid measured with the same settings; never overwrite another
            old = json.loads(out.read_text())
            settings = ("validation_from", "weight_bits", "validation_images", "calibration_images", "restrict",
                        "adaround_iterations", "weight_images")
            defaults = {"validation_from": "train", "weight_bits": 8}
            if any(old.get(k, defaults.get(k)) != record[k] for k in settings):
                raise SystemExit(f"{out} holds a grid measured with other settings; choose another --out or remove it")
            record.update(results=old["results"], weight_seconds=old.get("weight_seconds", {}))
        done = {QuantConfig(**r["config"]) for r in record["results"]}
        space = problem.space()
        print(f"[{name}] fp32 val {fp32_val:.2f}; grid of {len(space)} configurations, {len(done)} measured before",
              flush=True)
        for i, config in enumerate(space):
            if config in done:
                continue
            tables = set(problem.weight_summaries())
            t = time.perf_counter()
            acc = problem.evaluate(config)
            dt = time.perf_counter() - t
            for key, summary in problem.weight_summaries().items():  # a weight key's one-off cost, kept apart
                if key not in tables:
                    record["weight_seconds"][key] = summary["seconds"]
                    dt -= summary["seconds"]
            row = {"config": config.as_dict(), "val_top1": acc, "val_agreement": problem.agreement[config],
                   "seconds": round(dt, 3)}
            if args.test_all:  # for studying how well validation picks (not part of a search's cost)
                row["test_top1"] = top1_onnx(problem.build(config), splits.test, pp)
            record["results"].append(row)
            print(f"  {i + 1:4d}/{len(space)} {config.key():60s} val {acc:6.2f}  {dt:5.1f}s", flush=True)
            if len(record["results"]) % 20 == 0:
                write_atomic(out, json.dumps(record, indent=1))
        record["calibration_runs"] = problem.calibration_runs
        results = {QuantConfig(**r["config"]): r["val_top1"] for r in record["results"]}
        # The most accurate configuration, and the one the pass's rule deploys among those within 0.1 point of it.
        pool = candidates(results, 0.1, 3)
        paths = {}
        for cfg in pool:
            paths[f"int8:{cfg.key()}"] = str(work / f"{cfg.key()}.onnx")
            onnx.save(problem.build(cfg), paths[f"int8:{cfg.key()}"])
        paths["ort_default"] = str(ort_default(work / "fp32.onnx", splits.calibration, pp, work / "ort_default.onnx"))
        if args.no_latency:
            selected = pool[0]
        else:
            images = pp(splits.validation.images[:64]).numpy()
            lat = measure_isolated({"fp32": problem.float_model, **paths}, images)
            timed = {c: lat[f"int8:{c.key()}"] for c in pool}
            checks = {c: speed_check(lat["fp32"], t) for c, t in timed.items()}
            retime = retimer(measure_isolated, paths, images, 64, 2, QuantizeConfig().confirm_rounds, [])
            selected = choose(pool, results, timed, checks, speed_accuracy_budget=0.5, tolerance=0.1,
                              retime=retime)[0]
            record["latency"] = {k: v.as_dict() for k, v in lat.items()}
        record["best_config"] = pool[0].as_dict()
        record["selected_config"] = selected.as_dict()
        record["test_top1"] = {
            "fp32": top1_onnx(problem.float_model, splits.test, pp),
            "int8_best_val": top1_onnx(paths[f"int8:{pool[0].key()}"], splits.test, pp),
            "int8_selected": top1_onnx(paths[f"int8:{selected.key()}"], splits.test, pp),
            "ort_quantize_static_default": top1_onnx(paths["ort_default"], splits.test, pp),
        }
        record["op_types"] = {
            k: optimized_op_types(m) for k, m in
            {"fp32": problem.float_model, "int8_selected": paths[f"int8:{selected.key()}"],
             "ort_default": paths["ort_default"]}.items()
        }
        record["complete"] = True
        record["wall_seconds"] = round(time.time() - t0, 1)
        write_atomic(out, json.dumps(record, indent=1))
        print(json.dumps({k: record.get(k) for k in ("model", "best_config", "selected_config", "test_top1",
                                                      "latency", "op_types", "calibration_runs", "wall_seconds")},
                         indent=1), flush=True)


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


STRATEGY_LABELS = ("xgboost (transfer)", "xgboost (pooled transfer)", "xgboost (no transfer)", "random", "ga")


def make_strategy(label: str, grid: dict, name: str, db: list[Record]):
    """``xgboost (transfer)`` is the pass's tuner (the database as a fading prior); ``pooled`` adds the database
    Quantune's way, pooled with the model's measurements, under the tuner's current eta / gamma (module docstring
    of ``compressor.quant.tuner``)."""
    if label.startswith("xgboost"):
        return XGBoostTuner(grid["descriptors"], grid["fp32_val_top1"], [] if "no transfer" in label else db, name,
                            transfer="pooled" if "pooled" in label else "prior")
    return RandomSearch() if label == "random" else GeneticSearch()


def spread(values: list[float]) -> dict:
    """How much the configuration matters: best, median and worst validation top-1 and how many lie near the best."""
    best = max(values)
    return {"best": best, "median": float(np.median(values)), "worst": min(values),
            "best_minus_median": round(best - float(np.median(values)), 3),
            "within_0.1": int(sum(v >= best - 0.1 for v in values)), "configs": len(values)}


def selection_study(grids: dict, summary: dict) -> None:
    """For grids measured with ``--test-all``: the test top-1 of the configuration a rule picks on validation
    (highest top-1, highest agreement with FP32) against the grid's median and best on test."""
    rows = {name: g for name, g in grids.items() if all("test_top1" in r for r in g["results"])}
    if not rows:
        return
    print("\n## What validation picks, scored on test\n\n| model | FP32 test | best val top-1 → test | best val "
          "agreement → test | median test | best test |\n|---|---|---|---|---|---|")
    for name, g in rows.items():
        res = sorted(g["results"], key=lambda r: QuantConfig(**r["config"]))  # ties go to the space's order
        by_top1 = max(res, key=lambda r: r["val_top1"])
        by_agree = max(res, key=lambda r: (r["val_agreement"], r["val_top1"]))
        tests = [r["test_top1"] for r in res]
        fp32 = g.get("test_top1", {}).get("fp32")
        summary[name]["selection"] = {"fp32_test": fp32, "by_val_top1": by_top1["test_top1"],
                                      "by_val_agreement": by_agree["test_top1"], "median_test": float(np.median(tests)),
                                      "best_test": max(tests)}
        print(f"| {name} | {fp32 if fp32 is not None else '–'} | {by_top1['test_top1']:.2f} | "
              f"{by_agree['test_top1']:.2f} | {np.median(tests):.2f} | {max(tests):.2f} |")


def grids_from_db(path: Path) -> dict[str, dict]:
    """Each model of a warm-start database as a grid to replay: its records are full grid measurements (validation
    top-1 in the space's order), so a search over them counts the same evaluations as over the grid file. The
    database keeps no seconds, so the wall column is then the strategies' own CPU time alone."""
    grids = {}
    for m in json.loads(path.read_text())["models"]:
        results = [{**r, "seconds": 0.0} for r in m["results"]]
        grids[m["model"]] = {**{k: v for k, v in m.items() if k != "results"}, "results": results}
    return grids


def replay(args: argparse.Namespace) -> None:
    if args.grids_from_db:
        if args.warm_db and args.warm_db != args.grids_from_db:
            raise SystemExit("--grids-from-db warm-starts each model from the same database; drop --warm-db")
        grids, args.warm_db = grids_from_db(args.grids_from_db), args.grids_from_db
    else:
        grids = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(args.out.glob("grid_*.json"))}
    # The warm start: the other grids here of the same weight bits, or (--warm-db) a database as the pass ships it;
    # the tuner leaves the model being searched out either way.
    shipped = load_db(args.warm_db) if args.warm_db else None

    def warm_start(g: dict) -> list[Record]:
        if shipped is not None:
            return shipped
        return [Record(o["model"], o["descriptors"], QuantConfig(**r["config"]), r["val_top1"], o["fp32_val_top1"])
                for o in grids.values() if o.get("weight_bits", 8) == g.get("weight_bits", 8) for r in o["results"]]

    summary = {}
    print("## Spread of each grid (validation top-1)\n\n| model | FP32 | best | median | worst | best − median |"
          " within 0.1 of best |\n|---|---|---|---|---|---|---|")
    for name, g in grids.items():
        sp = spread([r["val_top1"] for r in g["results"]])
        summary[name] = {"spread": sp}
        print(f"| {name} | {g['fp32_val_top1']:.2f} | {sp['best']:.2f} | {sp['median']:.2f} | {sp['worst']:.2f} | "
              f"{sp['best_minus_median']:.2f}{' (flat: < 1 pt)' if sp['best_minus_median'] < 1 else ''} | "
              f"{sp['within_0.1']} of {sp['configs']} |")
    selection_study(grids, summary)
    for name, g in grids.items():
        table = {QuantConfig(**r["config"]): (r["val_top1"], r["seconds"]) for r in g["results"]}
        db = warm_start(g)
        key_seconds = g.get("weight_seconds", {})
        space = list(table)
        best = max(v[0] for v in table.values())
        rows = {}
        for label in args.strategies:
            evals, secs = [], []
            for seed in range(args.seeds):
                clock = SimClock()
                base = time.process_time()
                computed: set[str] = set()

                def evaluate(c, clock=clock, table=table, computed=computed, key_seconds=key_seconds):
                    key = key_name(weight_key(c))
                    if (c.adaround or c.bias_correction) and key not in computed:
                        computed.add(key)
                        clock.t += key_seconds.get(key, 0.0)
                    clock.t += table[c][1]
                    return table[c][0]

                res = search(make_strategy(label, g, g["model"], db), space, evaluate,
                             Budget(len(space), None, best - args.within), seed, clock=lambda clock=clock, base=base: clock() - base)
                evals.append(len(res.steps))
                secs.append(res.steps[-1].seconds)
            rows[label] = {"evals_median": float(np.median(evals)), "evals_mean": float(np.mean(evals)),
                           "evals": evals, "seconds_median": float(np.median(secs))}
        grid_secs = sum(v[1] for v in table.values()) + sum(key_seconds.values())
        rows["grid (exhaustive)"] = {"evals_median": float(len(space)), "evals_mean": float(len(space)),
                                     "seconds_median": grid_secs}
        summary[name].update(grid_best_val=best, target=best - args.within, warm_start=str(args.warm_db or "other grids"),
                             space=len(space), strategies=rows)
        print(f"\n## {name}: grid best val {best:.2f} over {len(space)} configs (target >= {best - args.within:.2f})")
        print(f"| strategy | evals to target, median (mean) of {args.seeds} seeds | per seed | wall s (median) |")
        print("|---|---|---|---|")
        for k, v in rows.items():
            print(f"| {k} | {v['evals_median']:.1f} ({v['evals_mean']:.1f}) | {v.get('evals', '-')} | "
                  f"{v['seconds_median']:.1f} |")
        if {"xgboost (transfer)", "random"} <= set(rows):
            warm, rnd = rows["xgboost (transfer)"]["evals_median"], rows["random"]["evals_median"]
            print(f"\nwarm XGBoost / random = {warm / rnd:.2f} (goal ≤ 0.5); warm XGBoost / grid = "
                  f"{warm / len(space):.3f} (goal ≤ 0.1)")
    tag = ("" if args.within == 0.1 else f"_within{args.within:g}") + ("_warmdb" if args.warm_db else "")
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / f"search_summary{tag}.json", json.dumps(summary, indent=1))


def cross_validate(args: argparse.Namespace) -> None:
    """The paper's choice of eta and gamma (5-fold cross-validation over eta 0.1–0.4 and gamma 0–5) on a warm-start
    database; also scored leaving one model out, which is how the transfer is used before any own measurement."""
    import xgboost as xgb

    db = load_db(args.warm_db or DEFAULT_DB)
    x = np.asarray([features(r.config, r.descriptors) for r in db])
    y = np.asarray([r.delta for r in db])
    models = sorted({r.model for r in db})
    splits = {"5-fold": np.random.default_rng(args.seed).permutation(len(y)) % 5,
              "leave one model out": np.asarray([models.index(r.model) for r in db])}
    grid = [(eta, gamma) for eta in (0.1, 0.2, 0.3, 0.4) for gamma in (0, 1, 2, 3, 4, 5)]
    summary = {}
    for split, fold in splits.items():
        mse = {}
        for eta, gamma in grid:
            params = {**XGB_PARAMS, "eta": eta, "gamma": float(gamma), "seed": 0}
            errors = []
            for f in np.unique(fold):
                train, test = fold != f, fold == f
                booster = xgb.train(params, xgb.DMatrix(x[train], label=y[train]), num_boost_round=XGB_ROUNDS)
                errors.append(float(np.mean((booster.predict(xgb.DMatrix(x[test])) - y[test]) ** 2)))
            mse[f"eta={eta} gamma={gamma}"] = float(np.mean(errors))
        best = min(mse, key=mse.get)
        summary[split] = {"mse": mse, "best": best}
        print(f"## {split} ({len(db)} records of {len(models)} models): lowest MSE {mse[best]:.4f} pt² at {best}")
        print("| eta \\ gamma | " + " | ".join(str(g) for g in range(6)) + " |\n" + "|---" * 7 + "|")
        for eta in (0.1, 0.2, 0.3, 0.4):
            print(f"| {eta} | " + " | ".join(f"{mse[f'eta={eta} gamma={g}']:.4f}" for g in range(6)) + " |")
        print(flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "xgb_cv.json", json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["measure", "search", "latency", "cv"])
    ap.add_argument("--models", nargs="+", default=list(TEACHERS))
    ap.add_argument("--data", default=str(DATA / "cifar10" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--validation", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--knob", action="append", default=[], help="measure: restrict a knob, e.g. adaround=false")
    ap.add_argument("--adaround-iterations", type=int, default=AdaRoundSettings.iterations)
    ap.add_argument("--weight-images", type=int, default=256)
    ap.add_argument("--weight-bits", type=int, default=8, choices=range(2, 9), metavar="2..8",
                    help="measure: weights on a narrower grid stored in int8 (no faster; a harder space to search, "
                         "kept out of the warm-start database)")
    ap.add_argument("--no-latency", action="store_true", help="measure: skip the timing (accuracy only)")
    ap.add_argument("--test-all", action="store_true", help="measure: also score every configuration on test")
    ap.add_argument("--validation-from-test", action="store_true",
                    help="measure: draw --validation images from test/ (held out from the teachers' training) and "
                         "report test top-1 on the rest of test/")
    ap.add_argument("--warm-db", type=Path, default=None,
                    help="search: warm-start XGBoost from this database (e.g. compressor/quant/quantune_db.json) "
                         "instead of the other grids in --out")
    ap.add_argument("--grids-from-db", type=Path, default=None,
                    help="search: replay every model of this database (its records are full grids), each "
                         "warm-started from the others; summary written to --out")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGY_LABELS), choices=STRATEGY_LABELS, metavar="S",
                    help=f"search: which strategies to replay (default all: {', '.join(STRATEGY_LABELS)})")
    ap.add_argument("--eta", type=float, default=None, help="search: the XGBoost tuners' eta (default the tuner's)")
    ap.add_argument("--gamma", type=float, default=None,
                    help="search: the XGBoost tuners' gamma (default the tuner's; Quantune's paper: --eta 0.15 --gamma 3)")
    ap.add_argument("--prior-gamma", type=float, default=None,
                    help="search: the gamma of the warm start's prior regressor (default: --gamma if given, else the tuner's 5)")
    ap.add_argument("--within", type=float, default=0.1,
                    help="search: the target, in points below the grid's best validation top-1 (the issue's goal: 0.1)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--harness", choices=["isolated", "interleaved"], default="isolated",
                    help="latency: one process per measurement (the pass's) or every session in this process")
    ap.add_argument("--out", type=Path, default=Path("out/quant_bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    tuner_module.set_params(args.eta, args.gamma, args.prior_gamma)
    {"measure": measure, "search": replay, "latency": latency, "cv": cross_validate}[args.phase](args)


if __name__ == "__main__":
    sys.exit(main())
