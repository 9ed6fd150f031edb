"""ONNX Runtime CPU sessions and the loop that times them.

This file imports only numpy and onnxruntime so that ``quant.latency.measure_isolated`` can run it as a script in
a fresh process that holds one session and nothing else (no torch, no other ORT session), as a deployment would:

    python compressor/ort_timing.py MODEL.onnx IMAGES.npy --threads 2 --rounds 3

prints one JSON line ``{"batch1_ms": ..., "batch_ms": ..., "batch": N}`` (medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def ort_session(model, threads: int = 0) -> ort.InferenceSession:
    """A CPU session (all graph optimisations) on a file or an in-memory model; threads=0 lets ORT choose."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def seconds_per_run(sess: ort.InferenceSession, x: np.ndarray, repeat: int) -> float:
    name = sess.get_inputs()[0].name
    t = time.perf_counter()
    for _ in range(repeat):
        sess.run(None, {name: x})
    return (time.perf_counter() - t) / repeat


def warm_up(sess: ort.InferenceSession, x1: np.ndarray, xb: np.ndarray) -> None:
    """The first runs allocate buffers and pack weights; they are not timed."""
    seconds_per_run(sess, x1, 3)
    seconds_per_run(sess, xb, 1)


def main() -> None:
    p = argparse.ArgumentParser(description="Time one ONNX model alone in this process.")
    p.add_argument("model")
    p.add_argument("images", help=".npy of preprocessed float NCHW images; all of them form the batch")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat1", type=int, default=30)
    p.add_argument("--repeat-batch", type=int, default=5)
    args = p.parse_args()
    xb = np.load(args.images)
    x1 = xb[:1]
    sess = ort_session(args.model, args.threads)
    warm_up(sess, x1, xb)
    one, many = [], []
    for _ in range(args.rounds):
        one.append(seconds_per_run(sess, x1, args.repeat1))
        many.append(seconds_per_run(sess, xb, args.repeat_batch))
    print(json.dumps({"batch1_ms": float(np.median(one)) * 1e3, "batch_ms": float(np.median(many)) * 1e3,
                      "batch": len(xb)}))


if __name__ == "__main__":
    main()
