"""ResNet-56 at equal measured latency: latency-driven LRP pruning vs MAC-driven LRP pruning vs latency-driven L1.

Arm ``lrp-macs`` is today's recipe (recipes/resnet56_prune.yaml: LRP, inner channels per layer, to a MAC target).
The latency arms (``lrp-latency``, ``l1-latency``: HALP's knapsack, docs/latency.md) prune to an INT8 latency
predicted by the latency table. Two ways to put them at one latency: by default the MAC arm runs to
--macs-reduction, its INT8 model (BatchNorm folded, the quantize pass's default configuration) is timed, and the
latency arms target that speed-up over the teacher's FP32 (when INT8 alone is already faster, they prune
nothing, which is then the finding); with --speedup S the latency arms target S and the MAC arm's reduction is
the one whose one-shot prune (no fine-tuning) measures closest to S, found by bisection. Every arm gets the same
fine-tuning budget (--steps iterative steps of --finetune-steps KD steps, then --final-steps). At the end every
pruned model's INT8 form is timed whole (each in its own process, arms alternating, --rounds rounds) at batch 1 and
64 next to the teacher's FP32, and scored on the test split (FP32 and INT8 top-1). Test accuracy decides nothing.

    python benchmarks/latency_prune.py --precision bf16 --json out/latency_prune.json          # the benchmark
    python benchmarks/latency_prune.py --precision bf16 --speedup 4 --json out/latency_prune_x4.json
    python benchmarks/latency_prune.py --precision bf16 --speedup 2.565 --arms lrp-latency   # one arm again
    python benchmarks/latency_prune.py --model cifar_resnet20 --teacher demo/cifar10_resnet20.pt \\
        --data demo/cifar10-demo.tar.gz --finetune-steps 1 --final-steps 1 --width-step 8 --rounds 1   # a check
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import onnx
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.files import write_atomic
from compressor.core.metrics import count_macs, predict, top1
from compressor.core.train import TRAIN_PRECISIONS
from compressor.core.zoo import ZOO
from compressor.graph.fusion import fold_batchnorm
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig
from compressor.quant.problem import QuantProblem, top1_onnx
from compressor.quant.space import QuantConfig
from compressor.runtime.export import export_onnx
from compressor.runtime.latency import measure_isolated
from compressor.runtime.latency_model import latency_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHAPE = (3, 32, 32)
ARMS = ("lrp-macs", "lrp-latency", "l1-latency")


def int8_model(model: torch.nn.Module, splits, pre: Preprocess, work: Path, name: str) -> onnx.ModelProto:
    """The INT8 QDQ model the quantize pass would emit with its default configuration, calibrated on real images."""
    path = export_onnx(fold_batchnorm(copy.deepcopy(model).eval()), work / f"{name}.onnx", SHAPE)
    return QuantProblem(onnx.load(path), splits.calibration, splits.validation, pre).build(QuantConfig())


def match_reduction(teacher: torch.nn.Module, ctx: Context, speedup: float, int8_speedup, probes: int = 6) -> float:
    """The MAC reduction whose one-shot MAC-driven LRP prune (no fine-tuning) measures closest to ``speedup`` in
    INT8, by bisection over [1.2, 8]; prints every probe."""
    lo, hi, best = 1.2, 8.0, (float("inf"), 2.5)
    for _ in range(probes):
        mid = (lo * hi) ** 0.5
        cfg = PruneConfig(criterion="lrp", target_macs_reduction=mid, scope="inner", global_ranking=False)
        got = int8_speedup(Prune(cfg).run(teacher, ctx).model)
        print(f"MAC-driven probe: x{mid:.2f} fewer MACs -> INT8 x{got:.3f}", flush=True)
        best = min(best, (abs(got - speedup), mid))
        lo, hi = (mid, hi) if got < speedup else (lo, mid)
    return best[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "cifar10" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--arms", default=",".join(ARMS),
                   help="without --speedup, lrp-macs always runs: it sets the latency; with it, only the arms named")
    p.add_argument("--target", default="ort-cpu")
    p.add_argument("--macs-reduction", type=float, default=2.5, help="the MAC arm's target (sets the latency)")
    p.add_argument("--speedup", type=float, help="the latency instead: INT8 speed-up over the teacher's FP32")
    p.add_argument("--steps", type=int, default=8, help="iterative pruning steps of every arm")
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--final-steps", type=int, default=4000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--precision", default="fp32", choices=TRAIN_PRECISIONS)
    p.add_argument("--width-step", type=int, default=1, help="latency arms: candidate widths multiples of this")
    p.add_argument("--min-channels", type=float, default=0.25, help="floor of the latency arms")
    p.add_argument("--batch", type=int, default=64, help="the latency the arms are matched at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds of the final measurement")
    p.add_argument("--validation", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    arms = args.arms.split(",")
    start = time.time()
    splits = make_splits(load_dataset(args.data), seed=args.seed, validation=args.validation, calibration=500)
    pre = Preprocess()
    teacher = ZOO[args.model]()
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    work = Path(tempfile.mkdtemp(prefix="latency-prune-"))
    ctx = Context(splits, teacher, pre, SHAPE, work, seed=args.seed)
    lm = latency_model(args.target, "int8", args.batch, args.threads, progress=True)
    common = dict(scope="inner", schedule="iterative", finetune_steps=args.finetune_steps,
                  final_finetune_steps=args.final_steps, batch_size=128, lr=args.lr, bn="train",
                  precision=args.precision)

    models, details, minutes = {}, {}, {}
    baseline = lm.measure_model(teacher, SHAPE, "fp32")

    def int8_speedup(model: torch.nn.Module) -> float:
        return baseline / lm.measure_model(model, SHAPE)

    reduction = args.macs_reduction
    if args.speedup is None or "lrp-macs" in arms:
        if args.speedup is not None:
            reduction = match_reduction(teacher, ctx, args.speedup, int8_speedup)
        t0 = time.time()
        mac_cfg = PruneConfig(criterion="lrp", target_macs_reduction=reduction, global_ranking=False,
                              step=0.6 / args.steps, **common)
        models["lrp-macs"] = Prune(mac_cfg).run(teacher, ctx).model
        minutes["lrp-macs"] = (time.time() - t0) / 60
        print(f"lrp-macs: x{reduction:.2f} fewer MACs", flush=True)
    speedup = args.speedup if args.speedup is not None else int8_speedup(models["lrp-macs"])
    print(f"the latency arms prune to an INT8 speed-up of x{speedup:.3f} over the teacher's FP32 ({baseline:.3f} ms "
          f"at batch {args.batch})", flush=True)
    for arm in (a for a in arms if a.endswith("-latency")):
        t0 = time.time()
        cfg = PruneConfig(criterion=arm.split("-")[0], target_speedup=speedup, target=args.target,
                          latency_batch=args.batch, threads=args.threads, width_step=args.width_step,
                          min_channels=args.min_channels, step=1.0 / args.steps, **common)
        result = Prune(cfg).run(teacher, ctx)
        models[arm], details[arm] = result.model, result.metrics["latency"]
        minutes[arm] = (time.time() - t0) / 60
        print(f"{arm}: predicted x{details[arm]['predicted_speedup']:.3f}, measured "
              f"x{details[arm]['measured_speedup']:.3f} ({minutes[arm]:.1f} min)", flush=True)

    int8 = {name: int8_model(m, splits, pre, work, name) for name, m in models.items()}
    fp32_teacher = onnx.load(export_onnx(teacher, work / "teacher.onnx", SHAPE))
    images = pre(splits.validation.images[: args.batch]).numpy()
    timed = measure_isolated({"teacher fp32": fp32_teacher, **{f"{k} int8": v for k, v in int8.items()}}, images,
                             args.batch, args.threads, rounds=args.rounds, seconds=1.0, progress=True)
    t_ref = timed["teacher fp32"]
    teacher_top1 = top1(predict(teacher, splits.test, pre), splits.test.labels)
    rows = []
    for name, m in models.items():
        lat = timed[f"{name} int8"]
        rows.append({
            "arm": name, "macs_reduction": count_macs(teacher, SHAPE) / count_macs(m, SHAPE),
            "inner_widths": sorted({mod.out_channels for n, mod in m.named_modules() if n.endswith("conv1") and "layer" in n}),
            "fp32_top1": top1(predict(m, splits.test, pre), splits.test.labels),
            "int8_top1": top1_onnx(int8[name], splits.test, pre),
            "int8_b1_ms": lat.batch1_ms, "int8_img_s": lat.throughput,
            "speedup_b1": t_ref.batch1_ms / lat.batch1_ms, "speedup_b64": lat.throughput / t_ref.throughput,
            "minutes": minutes[name], "latency_record": details.get(name),
        })
    print(f"\n{args.model} on {args.target}, {args.threads} threads; teacher FP32 {t_ref.batch1_ms:.3f} ms at batch 1, "
          f"{t_ref.throughput:,.0f} img/s at batch {args.batch}; teacher test top-1 {teacher_top1:.2f} % "
          f"({len(splits.test)} images)")
    print("| arm | MACs fewer | inner widths | test top-1 FP32 / INT8 | INT8 vs teacher FP32, batch 1 / 64 | min |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | ×{r['macs_reduction']:.2f} | {r['inner_widths']} | {r['fp32_top1']:.2f} / "
              f"{r['int8_top1']:.2f} | ×{r['speedup_b1']:.2f} / ×{r['speedup_b64']:.2f} | {r['minutes']:.1f} |")
    print(f"total {(time.time() - start) / 60:.1f} min")
    if args.json:
        write_atomic(Path(args.json), json.dumps({"args": vars(args), "teacher_top1": teacher_top1,
                                                  "teacher_fp32": t_ref.as_dict(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
