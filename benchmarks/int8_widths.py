"""Why a pruned model may gain little from INT8 on ORT-CPU: INT8 vs FP32 speed at three ResNet-56 width layouts.

MLAS runs a quantized conv on its fast symmetric u8s8 kernel only with ≥ 16 output channels, a multiple of 8 of
them and a multiple of 4 input channels. This compares, FP32 and INT8 measured interleaved in one process: the
teacher (inner widths 16/32/64), a pruned model given with --pruned (e.g. the file prune_finetune.py --save
writes), and a one-shot L1 prune of half the inner channels with round_to 8 and min_channels 16. Accuracy is not
measured (no fine-tuning); the demo subset only calibrates.

    python benchmarks/int8_widths.py --pruned out/r56_pruned_f7000.cpt --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
import torch

from compressor.core.data import Preprocess, load_dataset, make_splits
from compressor.core.serialize import load_model
from compressor.core.zoo import ZOO
from compressor.graph.fusion import fold_batchnorm
from compressor.passes.base import Context
from compressor.passes.prune import Prune, PruneConfig
from compressor.quant.latency import measure_interleaved
from compressor.quant.problem import QuantProblem
from compressor.quant.space import QuantConfig
from compressor.runtime.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def inner_widths(model: torch.nn.Module) -> list[int]:
    return sorted({m.out_channels for n, m in model.named_modules() if n.startswith("layer") and n.endswith("conv1")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ROOT.parent / "shared" / "data" / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--pruned", help="a pruned ResNet-56 saved by compressor (optional)")
    p.add_argument("--data", default=str(ROOT / "demo" / "cifar10-demo.tar.gz"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    splits = make_splits(load_dataset(args.data), 0, validation=200, calibration=200)
    pre = Preprocess()
    teacher = ZOO["cifar_resnet56"]()
    teacher.load_state_dict(torch.load(args.teacher, weights_only=True))
    teacher.eval()
    work = Path(tempfile.mkdtemp(prefix="int8-widths-"))
    ctx = Context(splits, teacher, pre, SHAPE, work, progress=False)
    rounded = Prune(PruneConfig(criterion="l1", target_ratio=0.5, schedule="one_shot", scope="inner",
                                global_ranking=False, round_to=8, min_channels=16)).run(teacher, ctx).model
    models = {"teacher": teacher}
    if args.pruned:
        models["--pruned"] = load_model(args.pruned)[0]
    models["l1 50 % inner, round_to 8, min 16"] = rounded
    images = pre(splits.validation.images[:64]).numpy()
    print("| model | inner widths | FP32 img/s | INT8 img/s | INT8 × | batch-1 FP32 / INT8 ms |\n|---|---|---|---|---|---|")
    for name, model in models.items():
        widths = inner_widths(model)
        fp32 = export_onnx(fold_batchnorm(model.eval()), work / "fp32.onnx", SHAPE)
        int8 = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, pre).build(
            QuantConfig(1000, "entropy", "asymmetric", "per_channel"))
        lat = measure_interleaved({"fp32": str(fp32), "int8": int8}, images, threads=args.threads, rounds=args.rounds,
                                  repeat1=10, repeat_batch=3)
        f, q = lat["fp32"], lat["int8"]
        print(f"| {name} | {widths} | {f.throughput:.0f} | {q.throughput:.0f} | {q.throughput / f.throughput:.2f} | "
              f"{f.batch1_ms:.2f} / {q.batch1_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
