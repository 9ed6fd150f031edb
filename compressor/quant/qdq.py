"""Emit an INT8 QDQ ONNX model from a float model, a range table and a configuration.

ONNX Runtime's ``QDQQuantizer`` does the placement; this module chooses its options per target and adds the
rewrites it lacks:

- ``ort-cpu`` (fast on ONNX Runtime's CPU provider): uint8 activations + int8 symmetric weights (the u8s8 form
  the VNNI kernels and ORT's QDQ→QLinearConv fusion accept; int8 activations after a ReLU keep the ReLU because
  its zero point is 0, not -128, and the conv then stays in float), every op type quantized so residual Adds
  become QLinearAdd, and the option-A shortcut's zero-padding kept in the quantized domain (a uint8 Pad whose
  constant is the zero point) instead of a DequantizeLinear → float Pad → QuantizeLinear island.
- ``tensorrt`` (NVIDIA's explicit-quantization rules, TensorRT developer guide): int8 symmetric activations and
  weights, zero point 0, per-output-channel weight scales, Q/DQ on the inputs of Conv/Gemm and residual Adds,
  no output quantization on convolutions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import save_and_reload_model_with_shape_infer, update_opset_version
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from .space import QuantConfig

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
TENSORRT_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]


def prepare_float(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's quantization pre-processing: shape inference and constant folding (e.g. the shortcut's pad sizes)."""
    with tempfile.TemporaryDirectory(prefix="compressor-quant-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return onnx.load(dst)


def weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that carry weights (the candidates to keep in float for mixed precision)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits]


def quantize(
    model: onnx.ModelProto,
    ranges: dict[str, tuple[float, float]],
    config: QuantConfig,
    target: str = "ort-cpu",
    exclude: tuple[str, ...] | list[str] = (),
) -> onnx.ModelProto:
    """The QDQ model for ``config`` on ``target``; ``exclude`` names nodes kept in float (mixed precision)."""
    tensorrt = target == "tensorrt"
    signed = tensorrt or config.scheme == "symmetric"
    act_type = QuantType.QInt8 if signed else QuantType.QUInt8
    per_channel = tensorrt or config.granularity == "per_channel"
    data = {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()}
    extra: dict = {"WeightSymmetric": True, "ActivationSymmetric": signed}
    if config.scheme in ("symmetric_uint8", "power_of_two") and not tensorrt:
        # Symmetric around 128 for signed tensors; non-negative ones keep zero point 0 (asymmetric with min 0).
        # Overriding the signed ones (not the non-negative ones) keeps ORT's ReLU removal working.
        extra["TensorQuantOverrides"] = {k: [{"symmetric": True}] for k, (lo, _) in ranges.items() if lo < 0}
    if tensorrt:
        op_types = TENSORRT_OPS
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]
        extra["QDQOpTypePerChannelSupportToAxis"] = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}
        extra["QuantizeBias"] = False  # TensorRT quantizes biases itself; int32 bias DQ is not accepted
    else:
        op_types = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    model = save_and_reload_model_with_shape_infer(model)
    model = update_opset_version(model, QuantType.QInt8, act_type)
    quantizer = QDQQuantizer(
        model, per_channel, False, QuantType.QInt8, act_type, TensorsData(CalibrationMethod.MinMax, data),
        [], list(exclude), op_types, extra,
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    out = quantizer.model.model
    if not tensorrt:
        quantized_pads(out)
        pad_input_channels(out)
    if config.scheme == "power_of_two" and not tensorrt:
        power_of_two_scales(out)
    return out


def attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    """The value of ``node``'s attribute ``name``, or ``default`` when it is absent."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def graph_index(model: onnx.ModelProto) -> tuple[dict, dict, dict]:
    """(producer of each tensor, consumers of each tensor, initializer protos by name): what every rewrite walks."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return {o: n for n in g.node for o in n.output}, consumers, {i.name: i for i in g.initializer}


def _same_params(model: onnx.ModelProto, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in (*a.input[1:], *b.input[1:])}
    try:
        return all(np.array_equal(inits[x], inits[y]) for x, y in zip(a.input[1:3], b.input[1:3]))
    except KeyError:
        return False


def quantized_pads(model: onnx.ModelProto) -> int:
    """Rewrite DequantizeLinear → Pad(constant 0) → QuantizeLinear (same scale and zero point) into one Pad on the
    integer tensor whose constant is the zero point: ORT has no QDQ fusion for Pad, so the island would run in
    float and force a dequantize/requantize per shortcut. Returns the number of rewrites."""
    g = model.graph
    producers, consumers, inits = graph_index(model)
    done = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        mode = attribute(pad, "mode", b"constant")
        dq = producers.get(pad.input[0])
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1:
            continue
        q = users[0]
        if q.op_type != "QuantizeLinear" or not _same_params(model, dq, q) or len(dq.input) < 3:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            if float(numpy_helper.to_array(inits[pad.input[2]])) != 0.0:
                continue
        if len(consumers.get(dq.output[0], [])) != 1:
            continue
        zp = inits[dq.input[2]]
        const = numpy_helper.from_array(numpy_helper.to_array(zp).reshape(()), f"{pad.name}_zero_point")
        g.initializer.append(const)
        new_inputs = [dq.input[0], pad.input[1], const.name] + list(pad.input[3:4])
        del pad.input[:]
        pad.input.extend(new_inputs)
        q_out = q.output[0]
        pad.output[0] = q_out
        g.node.remove(dq)
        g.node.remove(q)
        done += 1
    return done


def pad_input_channels(model: onnx.ModelProto, multiple: int = 4) -> int:
    """Give every quantized dense conv whose input-channel count is not a multiple of ``multiple`` zero input
    channels: the integer input is padded with its zero point and the int8 weights with zeros, so the result is
    unchanged. Why: MLAS's u8s8 kernels work on groups of four bytes (VNNI) and fall back to a slow path for the
    RGB stem (measured: a 3→16 QLinearConv at batch 64 took 6.5 ms, the same conv with 4 inputs 4.1 ms).
    Returns the number of convs padded."""
    g = model.graph
    producers, consumers, inits = graph_index(model)
    done = 0
    for conv in [n for n in g.node if n.op_type == "Conv"]:
        group = attribute(conv, "group", 1)
        x_dq, w_dq = producers.get(conv.input[0]), producers.get(conv.input[1])
        if group != 1 or any(p is None or p.op_type != "DequantizeLinear" for p in (x_dq, w_dq)):
            continue
        if w_dq.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[w_dq.input[0]])
        extra = -w.shape[1] % multiple
        if extra == 0 or w.ndim != 4 or len(x_dq.input) < 3 or x_dq.input[2] not in inits:
            continue
        if len(consumers.get(w_dq.input[0], [])) != 1:
            continue
        w_padded = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
        inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(w_padded, w_dq.input[0]))
        zp = numpy_helper.to_array(inits[x_dq.input[2]]).reshape(())
        pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{conv.name}_channel_pads")
        const = numpy_helper.from_array(zp, f"{conv.name}_channel_pad_value")
        g.initializer.extend([pads, const])
        padded = f"{x_dq.input[0]}_channels{w.shape[1] + extra}"
        g.node.append(onnx.helper.make_node("Pad", [x_dq.input[0], pads.name, const.name], [padded], f"{conv.name}_channel_pad"))
        if len(consumers[x_dq.output[0]]) == 1:  # only this conv reads it: dequantize the padded tensor instead
            x_dq.input[0] = padded
        else:
            dq = onnx.helper.make_node("DequantizeLinear", [padded, *x_dq.input[1:]], [f"{padded}_dq"], f"{padded}_dq")
            conv.input[0] = dq.output[0]
            g.node.append(dq)
        done += 1
    if done:
        ONNXModel(model).topological_sort()
    return done


def _pow2(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(np.maximum(x, np.finfo(np.float32).tiny)))).astype(np.float32)


def power_of_two_scales(model: onnx.ModelProto) -> None:
    """Round every scale up to a power of two (shift-only rescaling) and requantize weights and biases to match."""
    g = model.graph
    producers, _, inits = graph_index(model)
    arr = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    new: dict[str, np.ndarray] = {}  # initializer name -> replacement value

    # Activation scales first (Q nodes and DQ nodes whose data is not an initializer).
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits:
            new[n.input[1]] = _pow2(arr[n.input[1]])
    # Weights: requantize against the rounded per-channel (or per-tensor) scale.
    weight_scale: dict[str, np.ndarray] = {}
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or arr[n.input[0]].dtype != np.int8:
            continue
        q, s = arr[n.input[0]], arr[n.input[1]]
        axis = attribute(n, "axis", 1)
        shape = [1] * q.ndim
        if s.ndim:
            shape[axis] = -1
        w = q.astype(np.float32) * s.reshape(shape)
        s2 = _pow2(s)
        new[n.input[0]] = np.clip(np.round(w / s2.reshape(shape)), -127, 127).astype(np.int8)
        new[n.input[1]] = s2
        weight_scale[n.output[0]] = s2
    # Biases: scale = input scale x weight scale, both now powers of two.
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        bdq, xdq = producers.get(node.input[2]), producers.get(node.input[0])
        if bdq is None or xdq is None or bdq.op_type != "DequantizeLinear" or node.input[1] not in weight_scale:
            continue
        b = arr[bdq.input[0]].astype(np.float64) * arr[bdq.input[1]]
        sb = new.get(xdq.input[1], arr[xdq.input[1]]) * weight_scale[node.input[1]]
        sb = sb.astype(np.float32).reshape(arr[bdq.input[1]].shape)
        new[bdq.input[0]] = np.round(b / sb).astype(np.int32)
        new[bdq.input[1]] = sb
    for name, value in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(arr[name].dtype), name))
