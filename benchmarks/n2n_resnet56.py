"""N2N on the CIFAR-10 ResNet-56 teacher against two block-removal baselines with the same fine-tune budget.

Runs the two-stage N2N search (compressor.n2n) within the budget given on the command line, fine-tunes the best
student (KD + CE), and compares it with (a) removing the same number of residual blocks chosen at random and
(b) removing the blocks whose residual branch receives the least LRP relevance (Yeom et al.; falls back to the
L1 norm of the branch's filters when compressor.pruning.lrp is absent). Reports parameters, MACs, validation and test
top-1 and wall times, and writes them to ``<out>/n2n_resnet56.json``. Test images are used only for reporting.

Example (small CPU run):
    nice -n 10 python benchmarks/n2n_resnet56.py --threads 1 --removal-iterations 4 --shrink-iterations 2 \\
        --rollouts 4 --student-steps 10 --final-steps 80 --test-images 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.executors import SerialExecutor
from compressor.core.metrics import count_macs, count_params, predict, top1
from compressor.core.train import BN_MODES, TRAIN_PRECISIONS, FinetuneConfig, distill
from compressor.core.zoo import ZOO
from compressor.n2n.layers import Candidate, build_student, describe_layers
from compressor.n2n.search import N2NConfig, N2NSearch
from compressor.passes import Context

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INPUT = (3, 32, 32)
TEACHER_TEST_TOP1 = 90.08  # data README, all 10,000 test images


def block_scores(teacher: torch.nn.Module, table, splits, preprocess: Preprocess) -> tuple[dict[str, float], str]:
    """Score of each removable block: relevance (or L1) at its residual branch's last conv, summed over filters."""
    try:
        from compressor.pruning.criteria import LRPCriterion

        scores, how = LRPCriterion()(teacher, splits.reference, preprocess), "lrp"
    except ImportError:
        from compressor.pruning.criteria import L1Criterion

        scores, how = L1Criterion()(teacher), "l1"
    last = {}
    for layer in table.layers:
        if layer.unit is not None:
            last[layer.unit] = layer.name
    return {unit: float(scores[name].sum()) for unit, name in last.items()}, how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "cifar10" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10_resnet56.pt"))
    ap.add_argument("--out", default=str(ROOT / "out" / "n2n_resnet56"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--validation", type=int, default=500, help="validation images scoring the search")
    ap.add_argument("--removal-iterations", type=int, default=4)
    ap.add_argument("--shrink-iterations", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--student-steps", type=int, default=10)
    ap.add_argument("--student-batch", type=int, default=64)
    ap.add_argument("--student-lr", type=float, default=0.001)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--no-student-augment", action="store_true",
                    help="students train unaugmented, reusing the teacher's logits computed once (faster students)")
    ap.add_argument("--final-lr", type=float, default=0.001)
    ap.add_argument("--final-steps", type=int, default=80)
    ap.add_argument("--final-batch", type=int, default=64)
    ap.add_argument("--bn", default="frozen", choices=BN_MODES, help="BatchNorm while students train")
    ap.add_argument("--final-bn", default="frozen", choices=BN_MODES,
                    help="BatchNorm in the final fine-tune (N2N's best student and both baselines)")
    ap.add_argument("--precision", default="fp32", choices=TRAIN_PRECISIONS,
                    help="students and fine-tunes: fp32, or bf16 autocast (CPUs with native bfloat16)")
    ap.add_argument("--min-compression", type=float, default=None,
                    help="hard limit: at least this many times fewer parameters than the teacher (paper's penalty)")
    ap.add_argument("--max-compression", type=float, default=None,
                    help="size floor: at most this many times fewer parameters (our addition, same penalty)")
    ap.add_argument("--test-images", type=int, default=0, help="report on a seeded subset of the test split (0: all)")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    ds = load_dataset(args.data)
    splits = make_splits(ds, args.seed, validation=args.validation, calibration=0)
    if args.test_images:
        pick = np.sort(np.random.default_rng(args.seed).permutation(len(splits.test))[: args.test_images])
        splits.test = splits.test.subset(pick)
    teacher = ZOO["cifar_resnet56"]()
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    pre = Preprocess()
    # Students train with the same threads as everything else here (the executor's per-task threads).
    ctx = Context(splits, teacher, pre, INPUT, out, seed=args.seed, progress=True,
                  executor=SerialExecutor(torch.get_num_threads()))
    final = FinetuneConfig(steps=args.final_steps, batch_size=args.final_batch, lr=args.final_lr, kd_loss="mse",
                           ce_weight=1.0, tune_mode=False, bn=args.final_bn, precision=args.precision)
    config = N2NConfig(
        removal_iterations=args.removal_iterations, shrink_iterations=args.shrink_iterations,
        rollouts=args.rollouts, student_steps=args.student_steps, student_batch_size=args.student_batch,
        student_lr=args.student_lr, student_augment=not args.no_student_augment, subset_size=args.subset,
        final_steps=args.final_steps, final_lr=args.final_lr, final_batch_size=args.final_batch,
        final_kd_loss="mse", final_ce_weight=1.0, bn=args.bn, final_bn=args.final_bn,
        tune_mode=False, resume=not args.no_resume, precision=args.precision,
        max_params=int(count_params(teacher) / args.min_compression) if args.min_compression else None,
        min_params=int(count_params(teacher) / args.max_compression) if args.max_compression else None,
    )

    def report(name: str, model: torch.nn.Module, seconds: float, candidate: Candidate) -> dict:
        params, macs = count_params(model), count_macs(model, INPUT)
        return {
            "method": name, "removed_blocks": len(candidate.remove), "shrunk_layers": len(candidate.scales),
            "params": params, "macs": macs, "compression_params": t_params / params, "compression_macs": t_macs / macs,
            "validation_top1": ctx.validation_top1(model),
            "test_top1": top1(predict(model, splits.test, pre), splits.test.labels), "seconds": seconds,
            "removed": list(candidate.remove),
        }

    t_params, t_macs = count_params(teacher), count_macs(teacher, INPUT)
    rows = [report("teacher", teacher, 0.0, Candidate())]

    start = time.perf_counter()
    search = N2NSearch(teacher, ctx, config)
    result = search.run()
    rows.append(report("n2n (search + fine-tune)", result.model, time.perf_counter() - start, result.candidate))
    search_seconds = result.details["budget"]["search_seconds_this_run"]

    table = describe_layers(teacher)
    units = sorted(table.units)
    k = len(result.candidate.remove)
    rng = np.random.default_rng(args.seed + 1)
    random_pick = Candidate.make(list(rng.choice(units, size=k, replace=False)) if k else [])
    start = time.perf_counter()
    scores, how = block_scores(teacher, table, splits, pre)
    lowest = Candidate.make(sorted(units, key=lambda u: scores[u])[:k])
    score_seconds = time.perf_counter() - start
    for name, cand in ((f"random {k} blocks", random_pick), (f"lowest-{how} {k} blocks", lowest)):
        start = time.perf_counter()
        student = build_student(teacher, table, cand, INPUT)
        distill(student, teacher, splits.finetune, pre, final, seed=args.seed, progress=True, desc=name)
        extra = score_seconds if "lowest" in name else 0.0
        rows.append(report(name, student, time.perf_counter() - start + extra, cand))

    summary = {
        "settings": vars(args), "teacher_test_top1_readme": TEACHER_TEST_TOP1, "block_score": how,
        "test_images": len(splits.test), "search_seconds": search_seconds,
        "search_budget": result.details["budget"], "best": result.details["best"], "rows": rows,
        "history": result.details["history"], "total_seconds": time.perf_counter() - t_all,
        "threads": torch.get_num_threads(),
    }
    (out / "n2n_resnet56.json").write_text(json.dumps(summary, indent=2))
    print(f"\nResNet-56 teacher: {t_params:,} params, {t_macs / 1e6:.2f} M MACs; README test top-1 {TEACHER_TEST_TOP1} %"
          f" (10,000 images); measured here on {len(splits.test)} test images")
    print(f"N2N search: {search_seconds / 60:.1f} min, {result.details['budget']['candidates_measured']} students "
          f"trained ({args.removal_iterations}+{args.shrink_iterations} iterations x {args.rollouts} rollouts x "
          f"{args.student_steps} steps of {args.student_batch}); fine-tune {args.final_steps} steps of "
          f"{args.final_batch} (KD-MSE + CE, BN {args.final_bn}) for every compressed model; block scores: {how}")
    print(f"{'method':28s} {'params':>9s} {'xP':>5s} {'MACs(M)':>8s} {'xM':>5s} {'val%':>6s} {'test%':>6s} {'sec':>6s}")
    for r in rows:
        print(f"{r['method']:28s} {r['params']:9,d} {r['compression_params']:5.2f} {r['macs'] / 1e6:8.2f} "
              f"{r['compression_macs']:5.2f} {r['validation_top1']:6.2f} {r['test_top1']:6.2f} {r['seconds']:6.0f}")
    print(f"N2N removed: {', '.join(result.candidate.remove) or 'nothing'}; shrunk: "
          f"{dict(result.candidate.scales) or 'nothing'}")
    print(f"total wall time {summary['total_seconds'] / 60:.1f} min; results in {out / 'n2n_resnet56.json'}")


if __name__ == "__main__":
    main()
