"""Serialized TensorRT engines from our ONNX exports, through TensorRT's Python builder API.

INT8 follows TensorRT's explicit quantization: a Q/DQ ONNX built as a strongly typed network (the only INT8 path
left in TensorRT 11, whose implicit calibrators and precision flags are gone), checked first against the TensorRT
Q/DQ placement rules (``compressor.quant.qdq_rules``). FP16 converts the FP32 ONNX to FP16 tensors (graph inputs
and outputs stay FP32 behind Casts) and builds it strongly typed too, so one code path serves TensorRT 10 and 11.
References: TensorRT developer guide, "Working with Quantized Types" and "Strongly Typed Networks".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.core.files import atomic_path
from compressor.errors import CompressorError

PRECISIONS = ("int8", "fp16", "fp32")
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise CompressorError(
            "building a TensorRT engine needs the `tensorrt` Python package: install the tensorrt extra "
            "(pip install 'compressor[tensorrt]') on a machine with an NVIDIA GPU"
        ) from None
    return trt


def qdq_violations(model: onnx.ModelProto) -> list[str]:
    """TensorRT Q/DQ rule violations by node name, from ``compressor.quant.qdq_rules.check_tensorrt``."""
    try:
        from compressor.quant.qdq_rules import check_tensorrt
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.quant.qdq_rules":
            raise
        return []  # the rules module is not part of this checkout yet
    return list(check_tensorrt(model))


def _fp16_tensor(t: TensorProto) -> TensorProto:
    if t.data_type != TensorProto.FLOAT:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)


def convert_float_to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP32 → FP16 ONNX: initializers, constants and Casts to float become float16; FP32 graph I/O via Casts."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_fp16_tensor(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_fp16_tensor(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    init_names = {i.name for i in graph.initializer}
    casts_in = []
    for inp in graph.input:
        if inp.name in init_names or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}__fp16"
        for node in graph.node:
            node.input[:] = [half if name == inp.name else name for name in node.input]
        casts_in.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16, name=f"{half}_cast"))
    casts_out = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{out.name}__fp16"
        for node in graph.node:
            node.output[:] = [half if name == out.name else name for name in node.output]
            node.input[:] = [half if name == out.name else name for name in node.input]
        casts_out.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT, name=f"{half}_cast"))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # element types changed; TensorRT and checkers re-infer them
    onnx.checker.check_model(model)
    return model


def _onnx_input(path: Path, precision: str) -> bytes:
    if precision not in PRECISIONS:
        raise CompressorError(f"unknown TensorRT precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if not path.is_file():
        raise CompressorError(f"ONNX model {path} does not exist; export it first (compressor export)")
    model = onnx.load(str(path))
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if precision == "int8":
        if not has_qdq:
            raise CompressorError(f"{path} has no QuantizeLinear/DequantizeLinear nodes; export the INT8 QDQ model")
        violations = qdq_violations(model)
        if violations:
            shown = "; ".join(violations[:5]) + (f"; and {len(violations) - 5} more" if len(violations) > 5 else "")
            raise CompressorError(f"{path} breaks TensorRT's Q/DQ rules: {shown}")
        return model.SerializeToString()
    if has_qdq:
        raise CompressorError(f"{path} is a Q/DQ model; build it with precision 'int8', or pass the FP32 ONNX")
    if precision == "fp16":
        model = convert_float_to_float16(model)
    return model.SerializeToString()


def build_engine(
    onnx_path: str | Path, engine_path: str | Path, precision: str = "int8", batch: int = 1, max_batch: int = 256, workspace_gib: int = 4
) -> Path:
    """Build and write a serialized engine; a dynamic batch axis gets the profile 1 ≤ batch (optimum) ≤ max_batch."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt = _import_tensorrt()
    data = _onnx_input(onnx_path, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompressorError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape[1:]):
            raise CompressorError(f"input {inp.name} has dynamic non-batch dimensions {shape}; export fixed sizes")
        if shape and shape[0] < 0:
            dynamic = True
            profile.set_shape(inp.name, [1, *shape[1:]], [batch, *shape[1:]], [max(batch, max_batch), *shape[1:]])
    if dynamic:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompressorError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return engine_path
