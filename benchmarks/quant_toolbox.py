"""Ablation of the PTQ toolbox on the shared CIFAR-10 teachers: each technique's own contribution.

For each model and each weight granularity, a base configuration (1,000 calibration images, max ranges,
asymmetric uint8 activations, all-int8) is measured alone, with one technique switched on at a time (cross-layer
equalization, bias correction, AdaRound, MSE ranges) and with all of them, each as a real QDQ model in ONNX
Runtime, on the validation split (what the search sees) and on the 10,000 test images (what the report quotes).
Accuracy only; every row is written to ``<out>/ablation_<model>.json`` as soon as it is measured, and a rerun
skips rows already there. A model is a zoo teacher name or ``label=path`` to a pipeline stage file, as in
``quant_search.py``. ``--weight-bits 4`` puts the weights on a 4-bit grid stored in int8 (no faster; where
quantization costs accuracy and the techniques have something to win back), written to
``ablation_<model>_w4.json``.

    python benchmarks/quant_toolbox.py --models cifar_mobilenetv2 cifar_resnet20 cifar_resnet56
    python benchmarks/quant_toolbox.py --models cifar_resnet20 --test 500 --validation 200 --calibration 200 \\
        --adaround-iterations 20 --granularities per_tensor      # a quick check that it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.files import write_atomic
from compressor.quant.adaround import AdaRoundSettings
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.space import QuantConfig
from compressor.runtime.export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_search import DATA, TEACHERS, bits_suffix, load_spec  # noqa: E402

VARIANTS = {
    "base": {},
    "+ CLE": {"cle": True},
    "+ bias correction": {"bias_correction": True},
    "+ AdaRound": {"adaround": True},
    "+ MSE ranges": {"clipping": "mse"},
    "+ CLE + AdaRound + bias correction": {"cle": True, "adaround": True, "bias_correction": True},
    "all four": {"cle": True, "adaround": True, "bias_correction": True, "clipping": "mse"},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(TEACHERS))
    ap.add_argument("--data", default=str(DATA / "cifar10" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--validation", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--test", type=int, default=None, help="N seeded random test images (default: all); test/ is ordered by class, so "
                    "its first N would be one class")
    ap.add_argument("--granularities", nargs="+", default=["per_tensor", "per_channel"])
    ap.add_argument("--scheme", default="asymmetric")
    ap.add_argument("--adaround-iterations", type=int, default=AdaRoundSettings.iterations)
    ap.add_argument("--weight-images", type=int, default=256)
    ap.add_argument("--weight-bits", type=int, default=8, choices=range(2, 9), metavar="2..8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/quant_bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    splits = make_splits(load_dataset(args.data), args.seed, validation=args.validation, calibration=args.calibration)
    test = splits.test if args.test is None else \
        splits.test.subset(np.sort(np.random.default_rng(args.seed).permutation(len(splits.test))[: args.test]))
    pp = Preprocess()
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.models:
        name, teacher = load_spec(spec)
        path = args.out / f"ablation_{name}{bits_suffix(args.weight_bits)}.json"
        record = json.loads(path.read_text()) if path.exists() else {"model": name, "rows": {},
                                                                     "weight_bits": args.weight_bits}
        fp32_path = export_onnx(teacher, Path(tempfile.mkdtemp()) / "fp32.onnx", (3, 32, 32))
        problem = QuantProblem(onnx.load(fp32_path), splits.calibration, splits.validation, pp,
                               adaround=AdaRoundSettings(iterations=args.adaround_iterations),
                               weight_images=args.weight_images, seed=args.seed, progress=True,
                               weight_bits=args.weight_bits)
        record["fp32"] = {"val_top1": top1_onnx(problem.float_model, splits.validation, pp),
                          "test_top1": top1_onnx(problem.float_model, test, pp)}
        print(f"\n## {name}: FP32 val {record['fp32']['val_top1']:.2f}, test {record['fp32']['test_top1']:.2f} "
              f"({len(test)} test images)\n\n| granularity | variant | val top-1 | test top-1 | Δ test vs FP32 | s |\n"
              "|---|---|---|---|---|---|", flush=True)
        for gran in args.granularities:
            base = QuantConfig(1000, "max", args.scheme, gran, "int8")  # capped by the calibration split
            for label, change in VARIANTS.items():
                cfg = dataclasses.replace(base, **change)
                key = f"{gran} | {label}"
                if key not in record["rows"]:
                    t = time.perf_counter()
                    val = problem.evaluate(cfg)
                    row = {"config": cfg.as_dict(), "val_top1": val, "test_top1": top1_onnx(problem.build(cfg), test, pp),
                           "seconds": round(time.perf_counter() - t, 1)}
                    record["rows"][key] = row
                    record["equalization"] = problem.equalization and problem.equalization.as_dict()
                    record["weight_tables"] = {**record.get("weight_tables", {}), **problem.weight_summaries()}
                    write_atomic(path, json.dumps(record, indent=1))
                row = record["rows"][key]
                print(f"| {gran} | {label} | {row['val_top1']:.2f} | {row['test_top1']:.2f} | "
                      f"{row['test_top1'] - record['fp32']['test_top1']:+.2f} | {row['seconds']} |", flush=True)
        write_atomic(path, json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
