"""Wall time of the executors on the two batches of independent work the passes hand them.

For each executor (serial, processes, ray): one map of ``--candidates`` Quantune candidates (INT8 QDQ models
built and scored on the validation split, ``QuantProblem.evaluate_many``) and one map of ``--students`` N2N
students (each built from the teacher, distilled for ``--student-steps`` steps and scored, ``train_student``),
each on a fresh executor, so the figures include starting the workers and handing them the shared data
(``cold``), then the same batch again on the same executor (``warm``: what every later round of a search costs).
``startup`` is a trivial map on a fresh executor (worker start-up alone). It also checks that every executor
returned exactly the serial results (accuracies, parameters), and stops with an error if not.

Run it on a quiet machine: the figures are wall times. Calibration statistics are collected once, before any
timing, as the pass does before it hands a round to the executor.

    python benchmarks/executors.py --model cifar_resnet56 --executors serial,processes,ray --workers 2
    python benchmarks/executors.py --candidates 4 --students 2 --student-steps 2   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import operator
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.executors import ExecutorConfig, make_executor
from compressor.core.files import write_atomic
from compressor.core.train import FinetuneConfig
from compressor.core.zoo import ZOO
from compressor.n2n.layers import Candidate, describe_layers
from compressor.n2n.students import StudentEvaluator, train_student
from compressor.quant.problem import QuantProblem
from compressor.runtime.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INPUT = (3, 32, 32)


def _timed(fn):  # noqa: ANN001, ANN202
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet20", choices=sorted(ZOO))
    ap.add_argument("--weights", help="teacher state_dict (default: the demo ResNet-20 or the shared teacher)")
    ap.add_argument("--data", help="dataset (default: the demo data for resnet20, the shared CIFAR-10 otherwise)")
    ap.add_argument("--executors", default="serial,processes,ray")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per task (the same for every executor)")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--students", type=int, default=8)
    ap.add_argument("--student-steps", type=int, default=100)
    ap.add_argument("--subset", type=int, default=10000, help="fine-tune images the students draw from")
    ap.add_argument("--validation", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--json", default=str(ROOT / "out" / "executors.json"))
    args = ap.parse_args()

    demo = args.model == "cifar_resnet20" and not args.data
    data = args.data or str(ROOT / "demo" / "cifar10-demo.tar.gz" if demo else SHARED / "cifar10" / "cifar10-jpeg.tar.gz")
    weights = args.weights or str(ROOT / "demo" / "cifar10_resnet20.pt" if demo else
                                  SHARED / "teachers" / f"cifar10_{args.model.removeprefix('cifar_')}.pt")
    if demo:
        args.validation, args.calibration = min(args.validation, 500), min(args.calibration, 500)
    splits = make_splits(load_dataset(data), 0, args.validation, args.calibration)
    teacher = ZOO[args.model]()
    teacher.load_state_dict(torch.load(weights, weights_only=True))
    teacher.eval()
    pp = Preprocess()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)

    # Quantune: a problem with its statistics collected, copied fresh for every executor (no cached results).
    fp32 = export_onnx(teacher, out.parent / f"executors_{args.model}.onnx", INPUT)
    base = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, pp)
    space = base.space()
    configs = space[:: max(1, len(space) // args.candidates)][: args.candidates]  # spread over every knob
    for c in configs:
        base.calibrator.table(c.calibration)

    # N2N: students that each remove one removable unit (or shrink one layer), as a search round would sample.
    table = describe_layers(teacher)
    units = sorted({layer.unit for layer in table.layers if layer.decides})
    convs = [layer.name for layer in table.layers if layer.type == "conv" and layer.name not in table.fixed_layers()]
    cands = [Candidate.make([u]) for u in units] + [Candidate.make([], {n: 0.5}) for n in convs]
    cands = cands[: args.students]
    subset = np.sort(np.random.default_rng(0).permutation(len(splits.finetune))[: args.subset])
    finetune = FinetuneConfig(steps=args.student_steps, batch_size=64, lr=0.001, kd_loss="mse", ce_weight=0.0,
                              tune_mode=False)
    evaluator = StudentEvaluator(teacher, table, teacher, splits.finetune.subset(subset), pp, splits.validation, INPUT,
                                 finetune, seed=0)

    rows, reference = {}, None
    for kind in args.executors.split(","):
        config = ExecutorConfig(kind=kind, workers=0 if kind == "serial" else args.workers, threads=args.threads)
        with make_executor(config) as ex:
            _, startup = _timed(lambda ex=ex: ex.map(operator.is_, [0]))  # a trivial task workers can import
        with make_executor(config) as ex:
            accs, quant_cold = _timed(lambda ex=ex: copy.deepcopy(base).evaluate_many(configs, ex))
            again, quant_warm = _timed(lambda ex=ex: copy.deepcopy(base).evaluate_many(configs, ex))
        with make_executor(config) as ex:
            shared = ex.put(evaluator)
            measured, n2n_cold = _timed(lambda ex=ex, shared=shared: ex.map(train_student, cands, shared))
            _, n2n_warm = _timed(lambda ex=ex, shared=shared: ex.map(train_student, cands, shared))
        result = (accs, [(m.valid, m.accuracy, m.params) for m in measured])
        if reference is None:
            reference = result
        elif result != reference or again != accs:
            raise SystemExit(f"{kind} returned other results than {args.executors.split(',')[0]}: {result} vs {reference}")
        rows[kind] = {"startup_s": startup, "quantune_cold_s": quant_cold, "quantune_warm_s": quant_warm,
                      "n2n_cold_s": n2n_cold, "n2n_warm_s": n2n_warm}
        print(f"{kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[kind].items()), flush=True)

    first = next(iter(rows.values()))
    print(f"\n{args.model}, {args.candidates} Quantune candidates, {args.students} N2N students of "
          f"{args.student_steps} steps; workers {args.workers}, threads per task {args.threads}, {os.cpu_count()} CPUs")
    print("| executor | start-up s | Quantune cold s | warm s | warm × first | N2N cold s | warm s | warm × first |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['startup_s']:.2f} | {r['quantune_cold_s']:.2f} | {r['quantune_warm_s']:.2f} | "
              f"{first['quantune_warm_s'] / r['quantune_warm_s']:.2f} | {r['n2n_cold_s']:.2f} | {r['n2n_warm_s']:.2f} | "
              f"{first['n2n_warm_s'] / r['n2n_warm_s']:.2f} |")
    write_atomic(out, json.dumps({"args": vars(args), "cpus": os.cpu_count(), "rows": rows,
                                  "identical_results": True}, indent=2))


if __name__ == "__main__":
    main()
