"""ONNX Runtime CPU sessions, in a module that imports only onnxruntime so that the benchmark's child processes
(``python -m compressor.runtime.bench --child``) start without torch."""

from __future__ import annotations

import onnxruntime as ort


def ort_session(model, threads: int = 0) -> ort.InferenceSession:
    """A CPU session (all graph optimisations) on a file or an in-memory ``onnx.ModelProto``; threads=0 lets ORT
    choose."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
