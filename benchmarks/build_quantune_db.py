"""Build the XGBoost tuner's warm-start database from real grid measurements.

Reads the ``grid_<model>.json`` files that ``benchmarks/quant_search.py measure`` wrote (every configuration of the
ort-cpu space measured as an INT8 QDQ model in ONNX Runtime on the validation split of the real CIFAR-10 JPEG
data, with the shared teachers and any students measured beside them) and writes
``compressor/quant/quantune_db.json``. The tuner leaves the current model out when it trains on this file.
Unfinished grids are skipped. Records carry every knob of the space; the tuner reads records written before the
toolbox knobs existed as measurements with those knobs off, which is what they were. With ``--keep``, a model
already in the database that has no finished grid in ``--grids`` keeps its records (so a grid too slow to remeasure
in full stays represented by its older real measurements).

    python benchmarks/build_quantune_db.py [--grids out/quant_bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from compressor.quant.space import QuantConfig
from compressor.quant.tuner import DEFAULT_DB


def dump(db: dict) -> str:
    """JSON with one measurement per line: the shipped file stays small and its diffs readable."""
    models = []
    for m in db["models"]:
        head = json.dumps({k: v for k, v in m.items() if k != "results"})
        rows = ",\n".join("   " + json.dumps(r, separators=(",", ":")) for r in m["results"])
        models.append(f'  {head[:-1]}, "results": [\n{rows}\n  ]}}')
    return f'{{"about": {json.dumps(db["about"])},\n "models": [\n' + ",\n".join(models) + "\n ]}\n"


def measurements(results: list[dict]) -> list[dict]:
    """Configuration (every knob spelled out) and validation top-1 of each result."""
    return [{"config": QuantConfig(**r["config"]).as_dict(), "val_top1": r["val_top1"]} for r in results]


def build(grid_dir: Path, out: Path = DEFAULT_DB, keep: bool = False) -> dict:
    models = []
    for path in sorted(grid_dir.glob("grid_*.json")):
        g = json.loads(path.read_text())
        if g.get("complete") is False:
            print(f"skipping {path}: the grid is unfinished ({len(g['results'])} configurations)")
            continue
        if g.get("weight_bits", 8) != 8:
            print(f"skipping {path}: {g['weight_bits']}-bit weights are a benchmark space, not the pass's")
            continue
        results = measurements(g["results"])
        models.append({
            "model": g["model"], "descriptors": g["descriptors"], "fp32_val_top1": g["fp32_val_top1"],
            "validation_images": g["validation_images"], "calibration_images": g["calibration_images"],
            "validation_from": g.get("validation_from", "train"), "restrict": g.get("restrict", {}),
            "results": results,
        })
    if keep and out.exists():
        fresh = {m["model"] for m in models}
        for m in json.loads(out.read_text())["models"]:
            if m["model"] not in fresh:  # written in today's format: every knob spelled out
                models.append({**m, "validation_from": m.get("validation_from", "train"),
                               "restrict": m.get("restrict", {}), "results": measurements(m["results"])})
    sources = {m["validation_from"] for m in models}
    if len(sources) > 1:  # FP32-relative targets mean different things on memorised and on held-out images
        raise SystemExit(f"grids disagree on where validation came from ({', '.join(sorted(sources))}); "
                         "build the database from one kind (quant_search.py measure --validation-from-test or not)")
    if len(models) < 2:
        raise SystemExit(f"need at least two models (finished grids in {grid_dir}, plus those kept with --keep), "
                         f"found {len(models)}")
    db = {
        "about": "Real validation top-1 of INT8 QDQ models (ONNX Runtime CPU) per PTQ configuration; written by "
                 "benchmarks/build_quantune_db.py from benchmarks/quant_search.py measurements.",
        "models": models,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(dump(db))
    os.replace(tmp, out)
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", type=Path, default=Path("out/quant_bench"))
    ap.add_argument("--out", type=Path, default=DEFAULT_DB)
    ap.add_argument("--keep", action="store_true", help="keep the records of models that have no finished grid here")
    args = ap.parse_args()
    db = build(args.grids, args.out, args.keep)
    print(f"wrote {args.out}: " + ", ".join(f"{m['model']} ({len(m['results'])} configs)" for m in db["models"]))


if __name__ == "__main__":
    main()
