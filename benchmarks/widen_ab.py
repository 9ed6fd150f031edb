"""What widening producers buys on ONNX Runtime CPU: the same channel-pruned INT8 model emitted with Pads between
convs (``pad_input_channels`` alone, the emission before 83256bf) and with widened producers (``widen_producers``).

For each model, ``--variants`` random channel-pruned copies (each non-residual layer kept at a random fraction in
[--min-keep, 1], random channels; random weights: speed does not depend on them) are quantized with the quantize
pass's default configuration on random calibration data, both ways; the two files are checked to compute the same
numbers (ORT without graph optimizations) and timed each in its own process, alternating over ``--rounds``
windows, at batch 1 and ``--batch``. Prints both and their ratio; ``--json`` keeps them.

    python benchmarks/widen_ab.py --models cifar_resnet56 cifar_mobilenetv2 --variants 2 --json out/widen_ab.json
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import torch
from latency_model import random_variant  # this directory's script: the same random variants

from compressor.core.files import write_atomic
from compressor.core.zoo import ZOO
from compressor.quant import qdq
from compressor.runtime.export import export_onnx
from compressor.runtime.latency import measure_isolated
from compressor.runtime.latency_targets import int8_qdq

SHAPE = (3, 32, 32)


def unfused(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenetv2"], choices=sorted(ZOO))
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--min-keep", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="per model, round and batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    x = rng.random((args.batch, *SHAPE)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="widen-ab-") as tmp:
        for name in args.models:
            base = ZOO[name]().eval()
            for v in range(args.variants):
                path = export_onnx(random_variant(base, rng, "inner", args.min_keep), Path(tmp) / f"{name}-{v}.onnx", SHAPE)
                widened = int8_qdq(onnx.load(path))
                with mock.patch.object(qdq, "widen_producers", lambda model, multiple=4: 0):
                    padded = int8_qdq(onnx.load(path))
                same = bool(np.array_equal(unfused(widened, x[:8]), unfused(padded, x[:8])))
                pads = [collections.Counter(n.op_type for n in m.graph.node)["Pad"] for m in (padded, widened)]
                timed = measure_isolated({"padded": padded, "widened": widened}, x, args.batch, args.threads,
                                         args.rounds, args.seconds, progress=True)
                row = {"model": name, "variant": v, "pads": pads, "same_outputs": same,
                       **{f"{k}_b1_ms": t.batch1_ms for k, t in timed.items()},
                       **{f"{k}_img_s": t.throughput for k, t in timed.items()}}
                row["speedup_b1"] = row["padded_b1_ms"] / row["widened_b1_ms"]
                row["speedup_b64"] = row["widened_img_s"] / row["padded_img_s"]
                rows.append(row)
                print(f"{name} variant {v}: Pads {pads[0]} -> {pads[1]}, same outputs {same}; batch 1 "
                      f"{row['padded_b1_ms']:.3f} -> {row['widened_b1_ms']:.3f} ms (x{row['speedup_b1']:.2f}); batch "
                      f"{args.batch} {row['padded_img_s']:,.0f} -> {row['widened_img_s']:,.0f} img/s "
                      f"(x{row['speedup_b64']:.2f})", flush=True)
    if args.json:
        write_atomic(Path(args.json), json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
