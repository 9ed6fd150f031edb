"""Emit an INT8 QDQ ONNX model from a float model, a range table and a configuration.

ONNX Runtime's ``QDQQuantizer`` does the placement; this module chooses its options per target and adds the
rewrites it lacks:

- ``ort-cpu`` (fast on ONNX Runtime's CPU provider): uint8 activations + int8 symmetric weights (the u8s8 form
  the VNNI kernels and ORT's QDQ→QLinearConv fusion accept; int8 activations after a ReLU keep the ReLU because
  its zero point is 0, not -128, and the conv then stays in float), every op type quantized so residual Adds
  become QLinearAdd, and the option-A shortcut's zero-padding kept in the quantized domain (a uint8 Pad whose
  constant is the zero point) instead of a DequantizeLinear → float Pad → QuantizeLinear island, then the whole
  shortcut (two strided Slices and that Pad) replaced by one exact 1×1 strided QLinearConv.
- ``openvino-cpu`` (OpenVINO's CPU plugin): the ort-cpu placement (Q/DQ on the outputs of every op, so residual
  Adds and ReLUs carry quantized tensors and OpenVINO fuses each Add into its convolution as a sum post-op;
  quantizing only Conv/Gemm/Add inputs left every Add as a separate node) and the same tensor types per scheme,
  with the exact shortcut rewrite (OpenVINO runs the 1×1 conv in INT8 and drops the shortcut's StridedSlices, Pad
  and the layout reorders they forced; outputs are bit-identical) but without the stem's fourth input channel,
  which only MLAS needs and which costs OpenVINO a Pad node. That every convolution and the linear layer then
  execute in u8/i8 is checked on OpenVINO's execution graph (:func:`compressor.runtime.openvino.int8_layers`).
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

from compressor.quant.space import QuantConfig

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
    weight_bits: int = 8,
) -> onnx.ModelProto:
    """The QDQ model for ``config`` on ``target`` (ort-cpu | openvino-cpu | tensorrt); ``exclude`` names nodes kept
    in float (mixed precision); ``weight_bits`` below 8 narrows the weight grid (:func:`narrow_weights`)."""
    weight_qmax(weight_bits)  # a bad value fails before the quantizer runs
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
    float_weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer} if weight_bits < 8 else {}
    # QDQQuantizer is ORT's internal class (quantize_static wraps it): keywords keep a reordered signature from
    # silently swapping options; pyproject caps onnxruntime at the versions tested (tests/test_quant.py).
    quantizer = QDQQuantizer(
        model, per_channel=per_channel, reduce_range=False, weight_qType=QuantType.QInt8, activation_qType=act_type,
        tensors_range=TensorsData(CalibrationMethod.MinMax, data), nodes_to_quantize=[],
        nodes_to_exclude=list(exclude), op_types_to_quantize=op_types, extra_options=extra,
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()
    out = quantizer.model.model
    narrow_weights(out, weight_bits, float_weights, power_of_two=config.scheme == "power_of_two" and not tensorrt)
    if not tensorrt:
        quantized_pads(out)
        shortcut_convs(out)
    if target == "ort-cpu":
        widen_producers(out)
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


def _integer_chain(producers: dict, consumers: dict, tensor: str, op_type: str) -> list[onnx.NodeProto] | None:
    """The QDQ island ``DequantizeLinear → op → QuantizeLinear`` that produced ``tensor`` (returned in that order),
    when each link has a single consumer (so the island can be removed); otherwise None."""
    q = producers.get(tensor)
    op = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    dq = producers.get(op.input[0]) if op is not None and op.op_type == op_type else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    if any(len(consumers.get(n.output[0], [])) != 1 for n in (op, q)):
        return None
    return [dq, op, q]


def _every_other(slice_node: onnx.NodeProto, inits: dict) -> tuple[int, int] | None:
    """(axis, step) of a Slice that keeps every step-th element of one axis from 0 to the end, else None."""
    try:
        starts, ends, axes, steps = (numpy_helper.to_array(inits[i]).tolist() for i in slice_node.input[1:5])
    except (KeyError, ValueError):
        return None
    if len(axes) != 1 or starts != [0] or ends[0] < 2**31 or steps[0] < 1:
        return None
    return axes[0], steps[0]


def shortcut_convs(model: onnx.ModelProto) -> int:
    """Replace each option-A shortcut left on integer tensors by :func:`quantized_pads` (Slice every other row,
    Slice every other column, Pad the channels with the zero point) by one 1×1 convolution with stride 2 whose int8
    weights are a shifted identity (weight scale 1, output scale and zero point = input's): the accumulator is
    x − zero_point exactly and the requantization multiplier is exactly 1, so every output byte is the same.
    Why: ORT runs a uint8 Pad on the channel axis of its NHWC layout one pixel at a time (profile in
    docs/lab-notes/int8-latency.md), while the 1×1 QLinearConv is one cheap integer kernel.
    Returns the number of shortcuts rewritten."""
    g = model.graph
    producers, consumers, inits = graph_index(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    done = 0
    for pad in [n for n in g.node if n.op_type == "Pad" and n.input[0] in producers]:
        cols = _integer_chain(producers, consumers, pad.input[0], "Slice")
        rows = _integer_chain(producers, consumers, cols[0].input[0], "Slice") if cols else None
        if rows is None or len(pad.input) < 3 or pad.input[1] not in inits or pad.input[2] not in inits:
            continue
        chain = rows + cols
        if not all(_same_params(model, chain[0], n) for n in chain[2:] if n.op_type != "Slice") or len(chain[0].input) < 3:
            continue
        picks = [_every_other(rows[1], inits), _every_other(cols[1], inits)]
        if None in picks or {axis for axis, _ in picks} != {2, 3} or picks[0][1] != picks[1][1]:
            continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).tolist()
        channels = shapes.get(rows[0].input[0], [])
        zp = numpy_helper.to_array(inits[pad.input[2]])
        # uint8 only: ORT fuses no int8-activation conv here (see the module docstring), so the rewrite would not pay.
        if len(pads) != 8 or any(pads[i] for i in (0, 2, 3, 4, 6, 7)) or len(channels) != 4 or channels[1] < 1 \
                or zp.dtype != np.uint8 or zp != numpy_helper.to_array(inits[chain[0].input[2]]):
            continue
        c_in, (left, right), step = channels[1], (pads[1], pads[5]), picks[0][1]
        eye = np.zeros((left + c_in + right, c_in, 1, 1), np.int8)
        eye[np.arange(c_in) + left, np.arange(c_in)] = 1
        name = pad.name + "_as_conv"
        g.initializer.extend([numpy_helper.from_array(eye, f"{name}_weight"),
                              numpy_helper.from_array(np.array(1.0, np.float32), f"{name}_weight_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{name}_weight_zero_point")])
        x_q, scale, zero = chain[0].input[0], chain[0].input[1], chain[0].input[2]
        g.node.extend([
            onnx.helper.make_node("DequantizeLinear", [x_q, scale, zero], [f"{name}_x"], f"{name}_x_dq"),
            onnx.helper.make_node("DequantizeLinear", [f"{name}_weight", f"{name}_weight_scale",
                                                      f"{name}_weight_zero_point"], [f"{name}_w"], f"{name}_w_dq"),
            onnx.helper.make_node("Conv", [f"{name}_x", f"{name}_w"], [f"{name}_y"], name, kernel_shape=[1, 1],
                                  strides=[step, step]),
            onnx.helper.make_node("QuantizeLinear", [f"{name}_y", scale, zero], [pad.output[0]], f"{name}_q"),
        ])
        for n in [*chain[1:], pad] + ([chain[0]] if len(consumers.get(chain[0].output[0], [])) == 1 else []):
            g.node.remove(n)
        done += 1
    if done:
        used = {i for n in g.node for i in n.input}
        for init in [i for i in g.initializer if i.name not in used]:  # the Slices' and Pads' constants
            g.initializer.remove(init)
        ONNXModel(model).topological_sort()
    return done


_ZERO_KEEPING = ("QuantizeLinear", "DequantizeLinear", "Relu", "Clip")
"""Ops that map an all-zero channel to zero (Q/DQ per tensor: 0 ↔ the zero point; a Clip whose range holds 0)."""


def _own_weight(dq: onnx.NodeProto | None, consumers: dict, inits: dict, node: onnx.NodeProto) -> bool:
    """``dq`` dequantizes an initializer that only it reads, for ``node`` alone: rewriting it touches nothing else."""
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits \
        and len(consumers.get(dq.input[0], [])) == 1 and [n.name for n in consumers.get(dq.output[0], [])] == [node.name]


def _own_params(conv: onnx.NodeProto, producers: dict, consumers: dict, inits: dict) -> list[onnx.NodeProto] | None:
    """The DequantizeLinear nodes of ``conv``'s integer weight (and bias, when it has one), when only ``conv``
    reads them and their zero points are 0 (zero-valued slices then dequantize to 0); else None."""
    dqs = [producers.get(conv.input[1])]
    if len(conv.input) > 2 and conv.input[2]:
        dqs.append(producers.get(conv.input[2]))  # a float bias has no DequantizeLinear: refused below
    for dq in dqs:
        if not _own_weight(dq, consumers, inits, conv):
            return None
        if len(dq.input) > 2 and dq.input[2] and (dq.input[2] not in inits or numpy_helper.to_array(inits[dq.input[2]]).any()):
            return None
    return dqs if len(inits[dqs[0].input[0]].dims) == 4 else None


def _per_tensor(node: onnx.NodeProto, inits: dict) -> bool:
    return node.input[1] in inits and np.prod(inits[node.input[1]].dims) == 1


def _grow(model: onnx.ModelProto, dq: onnx.NodeProto, axis: int, extra: int, inits: dict) -> None:
    """Append ``extra`` zero slices on ``axis`` to the integer initializer ``dq`` reads and, when ``dq``'s scales
    run along that axis (per channel), copies of its last scale and zero point."""
    q = numpy_helper.to_array(inits[dq.input[0]])
    zeros = np.zeros((*q.shape[:axis], extra, *q.shape[axis + 1:]), q.dtype)
    set_initializer(model, dq, 0, np.concatenate([q, zeros], axis), "widened")
    if q.ndim > 1 and attribute(dq, "axis", 1) != axis:  # the new input channels share their rows' scales
        return
    for index in (1, 2):
        if index < len(dq.input) and dq.input[index] in inits:
            v = numpy_helper.to_array(inits[dq.input[index]])
            if v.ndim == 1 and v.shape[0] == q.shape[axis]:
                set_initializer(model, dq, index, np.concatenate([v, np.repeat(v[-1:], extra)]), "widened")


def _zero_keeping_source(node: onnx.NodeProto, producers: dict, consumers: dict, inits: dict,
                         outputs: set) -> onnx.NodeProto | None:
    """The Conv whose output alone reaches ``node`` through :data:`_ZERO_KEEPING` ops, each tensor on the way
    read only by the next op and none a graph output; else None."""
    while node.op_type in _ZERO_KEEPING:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not _per_tensor(node, inits):
            return None
        if node.op_type == "Clip":
            bounds = [*node.input[1:3], "", ""][:2]
            if any(b and b not in inits for b in bounds):
                return None
            lo, hi = (float(numpy_helper.to_array(inits[b])) if b else d for b, d in zip(bounds, (-np.inf, np.inf)))
            if not lo <= 0 <= hi:
                return None
        source = producers.get(node.input[0])
        if source is None or node.input[0] in outputs or len(consumers.get(node.input[0], [])) != 1:
            return None
        node = source
    return node if node.op_type == "Conv" else None


def _quantized_output(conv: onnx.NodeProto, producers: dict, consumers: dict, inits: dict,
                      outputs: set) -> onnx.NodeProto | None:
    """The QuantizeLinear that ``conv``'s output alone reaches through :data:`_ZERO_KEEPING` ops and whose
    integer tensor convs read (through DequantizeLinear); else None."""
    node = conv
    while True:
        readers = consumers.get(node.output[0], [])
        if len(readers) != 1 or node.output[0] in outputs or readers[0].op_type not in _ZERO_KEEPING:
            return None
        node = readers[0]
        after = [r for dq in consumers.get(node.output[0], []) for r in consumers.get(dq.output[0], [])]
        if node.op_type == "QuantizeLinear" and after and all(r.op_type == "Conv" for r in after):
            return node if _zero_keeping_source(node, producers, consumers, inits, outputs) is conv else None


def _conv_readers(q: onnx.NodeProto, producers: dict, consumers: dict, inits: dict,
                  outputs: set) -> list[tuple[onnx.NodeProto, bool]] | None:
    """Everything that must grow with the integer tensor ``q`` writes, as (conv, is_depthwise): the dense convs
    reading it (they get zero input channels) and the depthwise convs reading it (they get zero channels and
    pass them on, so their own readers follow). None when anything else reads it."""
    dqs = consumers.get(q.output[0], [])
    if not dqs or q.output[0] in outputs:
        return None
    found: list[tuple[onnx.NodeProto, bool]] = []
    for dq in dqs:
        if dq.op_type != "DequantizeLinear" or dq.output[0] in outputs or not _per_tensor(dq, inits):
            return None
        for conv in consumers.get(dq.output[0], []):
            if conv.op_type != "Conv" or conv.input[0] != dq.output[0] or _own_params(conv, producers, consumers, inits) is None:
                return None
            groups, w = attribute(conv, "group", 1), inits[producers[conv.input[1]].input[0]].dims
            if groups == 1:
                found.append((conv, False))
                continue
            if groups != w[0] or w[1] != 1:  # grouped but not depthwise
                return None
            after = _quantized_output(conv, producers, consumers, inits, outputs)
            later = None if after is None else _conv_readers(after, producers, consumers, inits, outputs)
            if later is None:
                return None
            found += [(conv, True), *later]
    return found


def widen_producers(model: onnx.ModelProto, multiple: int = 4) -> int:
    """Give each quantized dense conv whose output-channel count is not a multiple of ``multiple``, and whose
    quantized output only quantized convs read, zero output channels (int8 weights and int32 bias 0, so the new
    channels are exactly 0 and quantize to the zero point); dense readers get as many zero input channels, and a
    depthwise reader (MobileNet's expand → depthwise → project) as many zero channels, passed on to its own
    readers. The way may run through ReLU / Clip and per-tensor Q/DQ (int8 activations keep a float ReLU).
    Outputs are unchanged. Why: otherwise :func:`pad_input_channels` pads the dense readers' inputs with a Pad
    node, which ORT runs inside a model on its NHWC layout one pixel at a time (14 % of a channel-pruned
    ResNet-56's INT8 time, docs/lab-notes/latency.md §6), while a few more output channels cost next to nothing.
    A tensor written by anything else (an Add, the graph input) still gets the Pad. Returns the producers widened."""
    g = model.graph
    producers, consumers, inits = graph_index(model)
    outputs = {o.name for o in g.output}
    done = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        conv = _zero_keeping_source(q, producers, consumers, inits, outputs)
        if conv is None or attribute(conv, "group", 1) != 1:
            continue
        params = _own_params(conv, producers, consumers, inits)
        extra = -inits[params[0].input[0]].dims[0] % multiple if params else 0
        readers = _conv_readers(q, producers, consumers, inits, outputs) if extra else None
        if not readers:
            continue
        grows = [(dq, 0) for dq in params]
        for reader, depthwise in readers:
            own = _own_params(reader, producers, consumers, inits)
            grows += [(dq, 0) for dq in own] if depthwise else [(own[0], 1)]
            if depthwise:
                next(a for a in reader.attribute if a.name == "group").i += extra
        for dq, axis in grows:
            _grow(model, dq, axis, extra, inits)
            inits = {i.name: i for i in g.initializer}  # set_initializer may have added a copy
        done += 1
    if done:  # channel counts changed: the shapes recorded by shape inference no longer hold
        del g.value_info[:]
    return done


def pad_input_channels(model: onnx.ModelProto, multiple: int = 4) -> int:
    """Give every quantized dense conv whose input-channel count is not a multiple of ``multiple`` zero input
    channels: the integer input is padded with its zero point and the int8 weights with zeros, so the result is
    unchanged. Why: MLAS's u8s8 kernels work on groups of four bytes (VNNI) and fall back to a slow path for the
    RGB stem (docs/lab-notes/int8-latency.md).

    One tensor may feed several convs (parallel branches, a block and its projection shortcut) and one weight
    several convs (a module called twice): each integer tensor gets one Pad and one DequantizeLinear per scale,
    shared by its readers, and a weight is padded only when every conv reading it can be.
    Returns the number of convs padded."""
    g = model.graph
    producers, consumers, inits = graph_index(model)
    by_weight: dict[str, list[onnx.NodeProto]] = {}
    for conv in [n for n in g.node if n.op_type == "Conv"]:
        w_dq = producers.get(conv.input[1])
        if w_dq is not None and w_dq.op_type == "DequantizeLinear" and w_dq.input[0] in inits:
            by_weight.setdefault(w_dq.output[0], []).append(conv)

    def paddable(conv: onnx.NodeProto) -> bool:
        x_dq = producers.get(conv.input[0])
        return attribute(conv, "group", 1) == 1 and x_dq is not None and x_dq.op_type == "DequantizeLinear" \
            and len(x_dq.input) >= 3 and x_dq.input[2] in inits

    shared_dq: dict[tuple[str, ...], str] = {}  # (padded tensor, scale, zero point) -> its dequantized name
    done = 0
    for w_out, convs in by_weight.items():
        w_dq = producers[w_out]
        w = numpy_helper.to_array(inits[w_dq.input[0]])
        extra = -w.shape[1] % multiple if w.ndim == 4 else 0
        if extra == 0 or len(consumers.get(w_dq.input[0], [])) != 1 or len(consumers[w_out]) != len(convs) \
                or not all(paddable(c) for c in convs):
            continue
        _grow(model, w_dq, 1, extra, inits)
        for conv in convs:
            x_dq = producers[conv.input[0]]
            padded = f"{x_dq.input[0]}_channels{w.shape[1] + extra}"
            if padded not in producers:
                zp = numpy_helper.to_array(inits[x_dq.input[2]]).reshape(())
                pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{conv.name}_channel_pads")
                const = numpy_helper.from_array(zp, f"{conv.name}_channel_pad_value")
                g.initializer.extend([pads, const])
                pad = onnx.helper.make_node("Pad", [x_dq.input[0], pads.name, const.name], [padded], f"{conv.name}_channel_pad")
                g.node.append(pad)
                producers[padded] = pad
            if len(consumers[x_dq.output[0]]) == 1:  # only this conv reads it: dequantize the padded tensor instead
                x_dq.input[0] = padded
            else:
                key = (padded, *x_dq.input[1:])
                if key not in shared_dq:
                    name = f"{padded}_dq{len(shared_dq)}"
                    g.node.append(onnx.helper.make_node("DequantizeLinear", list(key), [name], name))
                    shared_dq[key] = name
                conv.input[0] = shared_dq[key]
            done += 1
    if done:
        ONNXModel(model).topological_sort()
    return done


def _pow2(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(np.maximum(x, np.finfo(np.float32).tiny)))).astype(np.float32)


def _weight_dqs(model: onnx.ModelProto, inits: dict, arr: dict) -> list[tuple[onnx.NodeProto, list[int]]]:
    """Every DequantizeLinear of an int8 weight initializer, with the shape its scale broadcasts to."""
    out = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or arr[n.input[0]].dtype != np.int8:
            continue
        shape = [1] * arr[n.input[0]].ndim
        if arr[n.input[1]].ndim:
            shape[attribute(n, "axis", 1)] = -1
        out.append((n, shape))
    return out


def _requantize_biases(model: onnx.ModelProto, producers: dict, arr: dict, new: dict,
                       weight_scale: dict[str, np.ndarray]) -> None:
    """Give every int32 bias the scale input scale x (new) weight scale that the integer kernels assume."""
    for node in model.graph.node:
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


def _write(inits: dict, arr: dict, new: dict) -> None:
    """Replace initializers by name with the new values, each in its old dtype."""
    for name, value in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(arr[name].dtype), name))


def power_of_two_scales(model: onnx.ModelProto) -> None:
    """Round every scale up to a power of two (shift-only rescaling) and requantize weights and biases to match."""
    producers, _, inits = graph_index(model)
    arr = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    new: dict[str, np.ndarray] = {}  # initializer name -> replacement value
    # Activation scales first (Q nodes and DQ nodes whose data is not an initializer).
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits:
            new[n.input[1]] = _pow2(arr[n.input[1]])
    # Weights: requantize against the rounded scale. Rounding a scale up only shrinks |w / s|, so a grid narrowed
    # by narrow_weights stays inside its range.
    weight_scale: dict[str, np.ndarray] = {}
    for n, shape in _weight_dqs(model, inits, arr):
        q, s = arr[n.input[0]], arr[n.input[1]]
        s2 = _pow2(s)
        new[n.input[0]] = np.clip(np.round(q.astype(np.float32) * s.reshape(shape) / s2.reshape(shape)), -127, 127)
        new[n.input[1]] = s2
        weight_scale[n.output[0]] = s2
    _requantize_biases(model, producers, arr, new, weight_scale)
    _write(inits, arr, new)


def weight_qmax(bits: int) -> int:
    """The largest integer of a symmetric signed ``bits``-bit weight grid (zero point 0, range ±qmax)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"weight_bits={bits}: choose 2 to 8 (weights are stored as int8)")
    return 2 ** (bits - 1) - 1


def narrow_weights(model: onnx.ModelProto, bits: int, float_weights: dict[str, np.ndarray],
                   power_of_two: bool = False) -> None:
    """Put every learned int8 weight (input 1 of a Conv / Gemm / MatMul) of a fresh QDQ model on a symmetric
    ``bits``-bit grid, stored in int8: the scale of each channel (or tensor) grows by 127 / qmax, so the max range
    maps onto ±qmax (``power_of_two``: then rounded up to 2^k, so :func:`power_of_two_scales` leaves it as it is),
    and each weight is rounded to nearest once, from its float value in ``float_weights`` (by the initializer's
    name before ORT's ``_quantized`` suffix). Biases are requantized from ORT's int32 to the new scales.

    The model still runs on the int8 kernels at int8 speed; nothing deploys faster. It exists to make the space
    harder for the search benchmark: at 4 bits, rounding and ranges cost real accuracy, which is where AdaRound,
    CLE and bias correction were designed to help (both papers report 4-bit weights). Call it before the emission
    adds its own exact weights (shortcut selections, zero padding) and before :func:`power_of_two_scales`."""
    qmax = weight_qmax(bits)
    if qmax == 127:
        return
    producers, consumers, inits = graph_index(model)
    arr = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    new: dict[str, np.ndarray] = {}
    weight_scale: dict[str, np.ndarray] = {}
    for n, shape in _weight_dqs(model, inits, arr):
        readers = consumers.get(n.output[0], [])
        if not readers or any(r.op_type not in WEIGHTED_OPS or list(r.input).index(n.output[0]) != 1 for r in readers):
            continue  # an int8 constant that is not a layer's weight
        if len(n.input) > 2 and np.any(arr[n.input[2]]):
            raise ValueError(f"narrow_weights: {n.name} has a non-zero weight zero point; weights must be symmetric")
        source = n.input[0].removesuffix("_quantized")
        if source not in float_weights:
            raise ValueError(f"narrow_weights: no float weight {source!r} for {n.name}")
        s2 = (arr[n.input[1]].astype(np.float32) * np.float32(127 / qmax)).astype(np.float32)
        if power_of_two:
            s2 = _pow2(s2)
        new[n.input[0]] = np.clip(np.round(float_weights[source] / s2.reshape(shape)), -qmax, qmax)
        new[n.input[1]] = s2
        weight_scale[n.output[0]] = s2
    _requantize_biases(model, producers, arr, new, weight_scale)
    _write(inits, arr, new)


def set_initializer(model: onnx.ModelProto, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str) -> None:
    """Give ``node``'s ``index``-th input (an initializer) the value ``value``. An initializer other nodes also
    read is left alone and the node gets its own copy, named ``<node>_<index>_<suffix>``."""
    name = node.input[index]
    readers = sum(name in n.input for n in model.graph.node)
    if readers > 1:
        new = f"{node.name}_{index}_{suffix}"
        model.graph.initializer.append(numpy_helper.from_array(value, new))
        node.input[index] = new
        return
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value, name))
