"""Scarce-data pruning without fine-tuning (scenario 2 of Yeom et al., "Pruning by Explaining", 2021).

K reference images per class from train/ rank the filters once (one-shot); 10–50 % of the prunable filters are
removed physically and top-1 is measured on the test split, for the LRP, L1, Taylor and random criteria with the
same seeds. This is exactly what the ``prune`` pass does with ``schedule: one_shot`` and no fine-tuning; the
scores are computed once per criterion and each rate prunes a fresh copy, so rates share one ranking.

    python benchmarks/prune_scarce.py --models resnet20 resnet56 --json prune_scarce.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.metrics import count_macs, predict, top1
from compressor.core.zoo import ZOO
from compressor.graph.dependency import DependencyGraph
from compressor.passes.prune import conv_widths, recalibrate_bn, select
from compressor.pruning.criteria import CRITERIA, LRPCriterion, RandomCriterion, group_scores

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPE = (3, 32, 32)


def criterion(name: str, seed: int, args: argparse.Namespace):  # noqa: ANN201
    if name == "lrp":
        return LRPCriterion(abs=args.lrp_abs, normalize=args.lrp_normalize, residual=args.lrp_residual)
    if name == "random":
        return RandomCriterion(seed)
    return CRITERIA[name]()


def parse_setting(text: str) -> tuple[str, str, bool]:
    """'scope-ranking[-recal]', e.g. inner-layer-recal: scope inner|all, ranking global|layer."""
    parts = text.split("-")
    if len(parts) not in (2, 3) or parts[0] not in ("inner", "all") or parts[1] not in ("global", "layer") or (
        len(parts) == 3 and parts[2] != "recal"
    ):
        raise SystemExit(f"bad setting {text!r}: use scope-ranking[-recal], e.g. inner-layer-recal")
    return parts[0], parts[1], len(parts) == 3


def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(args.seed)
    ds = load_dataset(args.data)
    splits = make_splits(ds, seed=args.seed, validation=500, calibration=500, reference_per_class=args.per_class)
    test = splits.test if args.test_limit is None else splits.test.subset(
        np.random.default_rng(args.seed).permutation(len(splits.test))[: args.test_limit])
    pre = Preprocess()
    rows = []
    for model_name in args.models:
        model = ZOO[f"cifar_{model_name}"]()
        model.load_state_dict(torch.load(Path(args.teachers) / f"cifar10_{model_name}.pt", weights_only=True))
        model.eval()
        base = top1(predict(model, test, pre), test.labels)
        base_macs = count_macs(model, SHAPE)
        print(f"{model_name}: unpruned test top-1 {base:.2f} % on {len(test)} images", flush=True)
        graph = DependencyGraph(model, SHAPE)
        widths = conv_widths(model)
        floors = dict.fromkeys(widths, 1)
        for crit_name in args.criteria:
            t0 = time.time()
            conv_scores = criterion(crit_name, args.seed, args)(
                model, splits.reference, pre)
            score_s = time.time() - t0
            for setting in args.settings:
                scope, ranking, recal = parse_setting(setting)
                groups = [g for g in graph.groups() if scope == "all" or not g.residual]
                scores = group_scores(groups, conv_scores)
                total = sum(g.size for g in groups)
                sizes = Counter(g.layer_key for g in groups)
                accs, macs = [], []
                for rate in args.rates:
                    quota = None if ranking == "global" else {k: round(rate * n) for k, n in sizes.items()}
                    chosen = select(groups, scores, round(rate * total), widths, floors, 1, quota)
                    pruned = graph.prune(chosen, copy.deepcopy(model))
                    if recal:
                        recalibrate_bn(pruned, splits.reference, pre)
                    accs.append(top1(predict(pruned, test, pre), test.labels))
                    macs.append(base_macs / count_macs(pruned, SHAPE))
                label = crit_name if crit_name != "lrp" else f"lrp ({args.lrp_abs}, {args.lrp_residual} add)"
                row = {"model": model_name, "criterion": label, "scope": scope, "ranking": ranking,
                       "recalibrate_bn": recal, "rates": list(args.rates), "top1": accs, "macs_reduction": macs,
                       "unpruned": base, "prunable_filters": total, "score_seconds": score_s,
                       "test_images": len(test), "reference_images": len(splits.reference)}
                rows.append(row)
                print(f"  {crit_name:7s} {setting:18s} " + " ".join(f"{a:6.2f}" for a in accs), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    rates = rows[0]["rates"]
    head = "| model | criterion | scope | ranking | BN recal | " + " | ".join(f"{round(r * 100)} %" for r in rates) + " |"
    lines = [head, "|" + "---|" * (5 + len(rates))]
    for r in rows:
        cells = " | ".join(f"{a:.1f} (×{m:.2f})" for a, m in zip(r["top1"], r["macs_reduction"]))
        lines.append(f"| {r['model']} ({r['unpruned']:.1f}) | {r['criterion']} | {r['scope']} | {r['ranking']} | "
                     f"{'yes' if r['recalibrate_bn'] else 'no'} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--teachers", default=str(SHARED / "teachers"))
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--criteria", nargs="+", default=["lrp", "l1", "taylor", "random"], choices=list(CRITERIA))
    p.add_argument("--settings", nargs="+", default=["inner-layer", "inner-layer-recal", "all-global-recal"],
                   help="scope-ranking[-recal]: scope inner|all, ranking global|layer, -recal re-estimates BN "
                        "statistics on the reference images after pruning")
    p.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--per-class", type=int, default=10, help="reference images per class (from train/)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on a seeded subset of the test split")
    p.add_argument("--lrp-abs", default="elementwise", choices=["none", "elementwise", "per_sample"])
    p.add_argument("--lrp-normalize", action="store_true")
    p.add_argument("--lrp-residual", default="proportional", choices=["proportional", "gradient"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows as JSON to this path")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = run(args)
    print()
    print("Test top-1 % (MAC reduction) after removing the given fraction of prunable filters, no fine-tuning:")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
