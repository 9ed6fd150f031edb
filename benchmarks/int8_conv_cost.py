"""Where ResNet-20's INT8 time goes on ORT-CPU: the cost of one 3×3 conv at the three CIFAR ResNet stage shapes.

The three shapes (16 channels at 32×32, 32 at 16×16, 64 at 8×8) do the same MACs. Each is timed as a chain of
``--depth`` identical convs (FP32 Conv+ReLU, and INT8 QLinearConv with u8 activations and symmetric per-channel
s8 weights, the form our ort-cpu emission gives ORT) minus a chain of one, so the two layout Transposes ORT adds
at the graph's ends cancel out; FP32 and INT8, both depths, are interleaved in one process. Random weights and
inputs: speed only.

Why it matters: MLAS's symmetric INT8 conv kernel (``MlasConvSymKernelAvx512Vnni``) blocks 6 output pixels × 64
output channels and rebuilds a 9-pointer indirection entry per output pixel per image, so a 16-channel conv uses
a quarter of its register block and pays the per-pixel cost on 4× the pixels of a 64-channel one. FP32's NCHWc
direct convolution has no such per-pixel cost.

    python benchmarks/int8_conv_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = ((16, 32), (32, 16), (64, 8))  # (channels, height = width)


def conv_chain(channels: int, size: int, depth: int, int8: bool, batch: int, rng: np.random.Generator) -> bytes:
    """A chain of ``depth`` same-shape 3×3 convs (pad 1), FP32 Conv+Relu or INT8 QLinearConv."""
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"t{i}"
        if int8:
            inits += [numpy_helper.from_array(rng.integers(-127, 128, (channels, channels, 3, 3)).astype(np.int8), f"w{i}"),
                      numpy_helper.from_array(np.zeros(channels, np.int8), f"wz{i}"),
                      numpy_helper.from_array(np.full(channels, 2e-3, np.float32), f"ws{i}"),
                      numpy_helper.from_array(np.zeros(channels, np.int32), f"b{i}")]
            nodes.append(helper.make_node("QLinearConv", [prev, "s", "z", f"w{i}", f"ws{i}", f"wz{i}", "s", "z", f"b{i}"],
                                          [out], pads=[1, 1, 1, 1]))
        else:
            w = (rng.standard_normal((channels, channels, 3, 3)) / (3 * channels**0.5)).astype(np.float32)
            inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
            nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", [f"c{i}"], [out])]
        prev = out
    if int8:
        inits += [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(0), "z")]
    dtype = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    shape = [batch, channels, size, size]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--depth", type=int, default=7)
    p.add_argument("--rounds", type=int, default=25)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    print(f"{args.threads} threads, batch {args.batch}, per conv = (chain of {args.depth} − chain of 1) / "
          f"{args.depth - 1}, median of {args.rounds} interleaved rounds")
    print("| channels × size | MMAC per image | FP32 ms | INT8 ms | INT8 × FP32 | INT8 GMAC/s |\n|---|---|---|---|---|---|")
    for channels, size in SHAPES:
        sessions = {}
        for int8 in (False, True):
            x = (rng.integers(0, 256, (args.batch, channels, size, size), dtype=np.uint8) if int8
                 else rng.random((args.batch, channels, size, size), dtype=np.float32))
            for depth in (1, args.depth):
                model = conv_chain(channels, size, depth, int8, args.batch, rng)
                sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
                sess.run(None, {"x": x})
                sessions[(int8, depth)] = (sess, x)
        times: dict = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for key, (sess, x) in sessions.items():
                t = time.perf_counter()
                sess.run(None, {"x": x})
                times[key].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        fp32, int8 = ((med[(q, args.depth)] - med[(q, 1)]) / (args.depth - 1) for q in (False, True))
        macs = channels * channels * 9 * size * size
        print(f"| {channels} × {size}² | {macs / 1e6:.2f} | {fp32:.2f} | {int8:.2f} | {fp32 / int8:.2f} | "
              f"{macs * args.batch / int8 / 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
