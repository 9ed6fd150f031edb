"""Checks that a QDQ ONNX model is what TensorRT's explicit-quantization importer accepts.

Rules from NVIDIA's TensorRT developer guide ("Working with Quantized Types") and the ONNX parser's assertions:
QDQ format only (no QOperator ops), symmetric INT8 (every zero point 0 and int8; biases stay float), per-output-channel weight scales on
axis 0 for Conv/Gemm and axis 1 for ConvTranspose, opset ≥ 13 (per-channel ``axis``), and both inputs of a
residual Add quantized so the Add can fuse into the preceding convolution.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.quant.qdq import attribute

QOPERATOR_OPS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QGemm",
    "DynamicQuantizeLinear", "QLinearReduceMean", "QLinearSoftmax", "QAttention",
}
WEIGHT_AXIS = {"Conv": 0, "Gemm": 0, "ConvTranspose": 1}


def check_tensorrt(model: onnx.ModelProto) -> list[str]:
    """Violations of TensorRT's QDQ requirements, each naming the offending node; empty when compliant."""
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    out: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        out.append(f"model: opset {opset} < 13 (per-channel QDQ needs the axis attribute of opset 13)")
    for n in g.node:
        if n.op_type in QOPERATOR_OPS:
            out.append(f"{n.name}: QOperator node {n.op_type}; TensorRT accepts only QuantizeLinear/DequantizeLinear")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) > 2 and n.input[2]:
                zp = inits.get(n.input[2])
                if zp is None:
                    out.append(f"{n.name}: zero point is not a constant initializer")
                elif np.any(zp != 0):
                    out.append(f"{n.name}: non-zero zero point {zp.ravel()[:4].tolist()}; TensorRT INT8 is symmetric")
                elif zp.dtype != np.int8:
                    out.append(f"{n.name}: {zp.dtype} quantization; TensorRT takes int8 (leave biases in float)")
            scale = inits.get(n.input[1])
            if scale is None:
                out.append(f"{n.name}: scale is not a constant initializer")
            elif np.any(scale <= 0):
                out.append(f"{n.name}: non-positive scale")
    for n in g.node:
        if n.op_type in WEIGHT_AXIS and len(n.input) > 1:
            dq = producers.get(n.input[1])
            if dq is None or dq.op_type != "DequantizeLinear":
                if n.input[1] in inits or (dq is not None and dq.op_type == "Constant"):
                    out.append(f"{n.name}: weight {n.input[1]} is not quantized (no DequantizeLinear)")
                continue
            scale = inits.get(dq.input[1])
            w = inits.get(dq.input[0])
            if w is None and dq.input[0] in producers:  # fp32 weight behind Q→DQ
                q = producers[dq.input[0]]
                w = inits.get(q.input[0])
            channels = None if w is None else w.shape[WEIGHT_AXIS[n.op_type]]
            if n.op_type == "Gemm" and w is not None:
                trans_b = attribute(n, "transB", 0)
                channels = w.shape[0] if trans_b else w.shape[1]
            if scale is None or scale.ndim == 0 or scale.size == 1 and (channels or 1) > 1:
                out.append(f"{n.name}: weight scale is per-tensor; TensorRT wants one scale per output channel")
            elif n.op_type != "Gemm" and (axis := attribute(dq, "axis", 1)) != WEIGHT_AXIS[n.op_type]:
                out.append(f"{n.name}: weight scale axis {axis}, expected {WEIGHT_AXIS[n.op_type]} ({n.op_type})")
            if n.input[0] in producers and producers[n.input[0]].op_type != "DequantizeLinear":
                out.append(f"{n.name}: activation input {n.input[0]} is not quantized")
        if n.op_type == "Add" and all(i not in inits for i in n.input):
            unq = [i for i in n.input if i in producers and producers[i].op_type != "DequantizeLinear"]
            if unq:
                out.append(f"{n.name}: residual Add input(s) {unq} not quantized; TensorRT cannot fuse it into the conv")
    return out
