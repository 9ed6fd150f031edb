"""Does proposing a batch of configurations per refit cost the XGBoost tuner search quality?

Replays the tuner against the shipped measurement database (``compressor/quant/quantune_db.json``: every
configuration of the ort-cpu space measured on each model's validation split), each model searched with the
others as transfer data (leave-one-model-out, as the pass does). An evaluation is a lookup of its measured
accuracy, so this measures search quality only, never time. For each batch size it reports, over seeds, the
best validation top-1 found within ``max_evals`` evaluations (the pass's default 12 and the demo's 6) and the
evaluations needed to come within 0.1 point of the model's best.

    python benchmarks/quant_batch.py --batches 1,2,4,8 --seeds 10

``--transfer pooled --eta 0.15 --gamma 3`` replays the tuner as Quantune set it (and as it shipped until
2026-12-04); ``--cold`` without the database; ``--no-target`` skips the slow evaluations-to-target column.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from compressor.core.files import write_atomic
from compressor.quant import tuner as tuner_module
from compressor.quant.tuner import DEFAULT_DB, TRANSFERS, Budget, XGBoostTuner, load_db, search

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--max-evals", default="6,12")
    ap.add_argument("--diversity", default="2", help="the tuner's diversity filter (1: plain top-k of the predictions)")
    ap.add_argument("--transfer", choices=TRANSFERS, default="prior")
    ap.add_argument("--cold", action="store_true", help="no warm-start database")
    ap.add_argument("--eta", type=float, default=None, help="both regressors' eta (default the tuner's)")
    ap.add_argument("--gamma", type=float, default=None, help="both regressors' gamma (default the tuner's)")
    ap.add_argument("--prior-gamma", type=float, default=None, help="the prior regressor's gamma (default the tuner's)")
    ap.add_argument("--no-target", action="store_true", help="skip the evaluations-to-target column")
    ap.add_argument("--json", default=str(ROOT / "out" / "quant_batch.json"))
    args = ap.parse_args()
    tuner_module.set_params(args.eta, args.gamma, args.prior_gamma)
    records = load_db(DEFAULT_DB)
    models = sorted({r.model for r in records})
    batches = [int(b) for b in args.batches.split(",")]
    limits = [int(m) for m in args.max_evals.split(",")]
    out: dict = {}
    header = " | ".join(f"best in {m}" for m in limits)
    diversities = [int(d) for d in args.diversity.split(",")]
    print(f"| model | batch | diversity | {header} | evals to best − 0.1 |")
    print("|---|---|---|" + "---|" * len(limits) + "---|")
    for model in models:
        mine = [r for r in records if r.model == model]
        table = {r.config: r.val_top1 for r in mine}
        space, best = list(table), max(table.values())
        fp32, descriptors = mine[0].fp32_val_top1, mine[0].descriptors
        out[model] = {"grid_best": best}
        for batch in batches:
            for div in diversities if batch > 1 else [1]:
                tuner = functools.partial(XGBoostTuner, descriptors, fp32, [] if args.cold else records, model,
                                          diversity=div, transfer=args.transfer)
                row = {}
                for m in limits:
                    found = [search(tuner(), space, table.__getitem__, Budget(m), seed, batch=batch).best.val_top1
                             for seed in range(args.seeds)]
                    row[f"best_in_{m}"] = float(np.mean(found))
                evals = [] if args.no_target else [
                    len(search(tuner(), space, table.__getitem__, Budget(len(space), None, best - 0.1), seed,
                               batch=batch).steps) for seed in range(args.seeds)]
                row["evals_to_target"] = float(np.mean(evals)) if evals else float("nan")
                out[model][f"batch_{batch}_diversity_{div}"] = row
                cells = " | ".join(f"{row[f'best_in_{m}']:.2f}" for m in limits)
                print(f"| {model} (grid best {best:.2f}) | {batch} | {div} | {cells} | {row['evals_to_target']:.1f} |",
                      flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.json, json.dumps({"args": vars(args), "results": out}, indent=2))


if __name__ == "__main__":
    main()
