"""INT8 vs FP32 ORT-CPU throughput with each model timed alone in its own process, alternating A, B, A, B, ...

The same measurement as the quantize pass's speed check (`compressor.quant.latency.measure_isolated`), printed
pair by pair. `measure_interleaved` keeps every session in one process, where on a 2-core machine the idle
session's thread pool disturbs the one being timed; a fresh process holding one session is what a deployment
runs. The INT8 model is the pass's ort-cpu emission for asymmetric / entropy / per-channel. The demo subset only
calibrates it.

    python benchmarks/int8_process_latency.py --pairs 6 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def build(model_name: str, weights: str, work: Path) -> tuple[Path, Path]:
    import onnx
    import torch

    from compressor.core.data import Preprocess, load_dataset, make_splits
    from compressor.core.zoo import ZOO
    from compressor.graph.fusion import fold_batchnorm
    from compressor.quant.problem import QuantProblem
    from compressor.quant.space import QuantConfig
    from compressor.runtime.export import export_onnx

    splits = make_splits(load_dataset(str(ROOT / "demo" / "cifar10-demo.tar.gz")), 0, validation=200, calibration=200)
    model = ZOO[model_name]()
    model.load_state_dict(torch.load(weights, weights_only=True))
    fp32 = export_onnx(fold_batchnorm(model.eval()), work / "fp32.onnx", SHAPE)
    int8 = QuantProblem(onnx.load(fp32), splits.calibration, splits.validation, Preprocess()).build(
        QuantConfig(1000, "entropy", "asymmetric", "per_channel"))
    onnx.save(int8, work / "int8.onnx")
    return Path(fp32), work / "int8.onnx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--weights", default=str(ROOT / "demo" / "cifar10_resnet20.pt"))
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    from compressor.quant.latency import measure_isolated

    fp32, int8 = build(args.model, args.weights, Path(tempfile.mkdtemp(prefix="int8-process-")))
    x = np.random.default_rng(0).random((args.batch, *SHAPE), dtype=np.float32)
    print("| pair | FP32 ms | INT8 ms | INT8 × FP32 throughput |\n|---|---|---|---|")
    ratios = []
    for i in range(args.pairs):
        lat = measure_isolated({"fp32": str(fp32), "int8": str(int8)}, x, args.batch, args.threads, rounds=1, seconds=1.0)
        f, q = (args.batch / lat[k].throughput * 1e3 for k in ("fp32", "int8"))
        ratios.append(f / q)
        print(f"| {i + 1} | {f:.2f} | {q:.2f} | {f / q:.2f} |", flush=True)
    print(f"median INT8 × FP32 at batch {args.batch}: {np.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}; {args.threads} threads)")


if __name__ == "__main__":
    main()
