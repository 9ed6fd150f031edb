"""Pruning with fine-tuning (scenario 1 of Yeom et al., "Pruning by Explaining", 2021) on CIFAR ResNet-56.

Runs the ``prune`` pass to a MAC-reduction target (default ≥ 2.5×) with knowledge-distillation fine-tuning
from the unpruned teacher between steps and at the end, then reports test top-1 (never used for any decision)
against the teacher. Every budget is a CLI knob; the defaults are the full benchmark, which needs hours on a
laptop CPU. A short smoke run:

    python benchmarks/prune_finetune.py --schedule one_shot --final-steps 50 --test-limit 1000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.metrics import count_macs, count_params, predict, top1
from compressor.core.serialize import save_model
from compressor.core.train import BN_MODES, PRECISIONS
from compressor.core.zoo import ZOO
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPE = (3, 32, 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--criterion", default="lrp", choices=["lrp", "l1", "taylor", "random"])
    p.add_argument("--macs-reduction", type=float, default=2.5)
    p.add_argument("--schedule", default="iterative", choices=["one_shot", "iterative"])
    p.add_argument("--step", type=float, default=0.05, help="fraction of the original prunable filters per step")
    p.add_argument("--scope", default="all", choices=["all", "inner"])
    p.add_argument("--per-layer", action="store_true", help="per-layer instead of global ranking")
    p.add_argument("--steps-per-step", type=int, default=200, help="fine-tuning SGD steps after each step")
    p.add_argument("--final-steps", type=int, default=5000, help="fine-tuning SGD steps at the end")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.001, help="peak LR (cosine); with --bn frozen keep it ≤ 0.002")
    p.add_argument("--final-lr", type=float, default=None, help="peak LR of the final fine-tune (default: --lr)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fine-tuning precision: fp32, or bf16 autocast + channels-last (CPUs with native bfloat16)")
    p.add_argument("--bn", default="frozen", choices=BN_MODES,
                   help="BatchNorm while fine-tuning: frozen (Tune mode, small lr) or train (batch statistics)")
    p.add_argument("--no-tune-mode", action="store_true", help="fine-tune conv → BN in Eval instead of Tune mode")
    p.add_argument("--validation", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on a seeded subset of the test split")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result (config, steps, test top-1) to this path")
    p.add_argument("--save", help="save the pruned, fine-tuned model here (compressor.core.serialize format, no pickle)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.time()
    splits = make_splits(load_dataset(args.data), seed=args.seed, validation=args.validation, calibration=500)
    test = splits.test if args.test_limit is None else splits.test.subset(
        np.random.default_rng(args.seed).permutation(len(splits.test))[: args.test_limit])
    pre = Preprocess()
    teacher = ZOO[args.model]()
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    ctx = Context(splits, teacher, pre, SHAPE, Path(tempfile.mkdtemp()), seed=args.seed)
    config = PruneConfig(
        criterion=args.criterion, target_macs_reduction=args.macs_reduction, schedule=args.schedule,
        step=args.step, scope=args.scope, global_ranking=not args.per_layer, finetune_steps=args.steps_per_step,
        final_finetune_steps=args.final_steps, batch_size=args.batch_size, lr=args.lr,
        final_lr=args.final_lr, tune_mode=not args.no_tune_mode, bn=args.bn, precision=args.precision,
    )
    result = Prune(config).run(teacher, ctx)
    base = top1(predict(teacher, test, pre), test.labels)
    pruned = top1(predict(result.model, test, pre), test.labels)
    out = {
        "model": args.model, "test_images": len(test), "teacher_top1": base, "pruned_top1": pruned,
        "drop": base - pruned, "macs": [count_macs(teacher, SHAPE), count_macs(result.model, SHAPE)],
        "params": [count_params(teacher), count_params(result.model)],
        "macs_reduction": result.details["macs_reduction"], "seconds": time.time() - start,
        "finetune_images": len(splits.finetune), "details": result.details,
    }
    print(f"{args.model}: teacher {base:.2f} % → pruned {pruned:.2f} % (drop {base - pruned:.2f} pt) on "
          f"{len(test)} test images; MACs ×{out['macs_reduction']:.2f} fewer, params {out['params'][0]:,} → "
          f"{out['params'][1]:,}; {out['seconds'] / 60:.1f} min")
    print("| step | rate | MACs (M) | params | val top-1 |\n|---|---|---|---|---|")
    for s in result.details["steps"]:
        tag = " (fine-tuned)" if s.get("finetuned") else ""
        print(f"| {s['step']}{tag} | {s['rate']:.3f} | {s['macs'] / 1e6:.2f} | {s['params']:,} | {s['val_top1']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.save:
        save_model(result.model, args.save, {"benchmark": "prune_finetune", "args": vars(args)})


if __name__ == "__main__":
    main()
