"""OpenVINO CPU: compiled models, predictions, the layers its execution graph runs in INT8, and IR export.

This module imports only numpy at load time (OpenVINO when first used), so the benchmark's child processes
(``python -m compressor.runtime.bench --child X --backend openvino``) start without torch or onnxruntime.

OpenVINO reads an ONNX file directly, QDQ included: its ONNX frontend turns each QuantizeLinear/DequantizeLinear
pair into a FakeQuantize and its low-precision transformations run the layers between them in u8/i8. The
precision hint decides what the float parts run in: ``f32``; ``bf16`` (the CPU plugin's own default on CPUs with
native bfloat16); or ``default``, which leaves the choice to the plugin. The hint changes numerics, so every
deployment to OpenVINO has its accuracy measured with the hint it ships with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.core.files import atomic_path
from compressor.errors import CompressorError

PRECISIONS = ("f32", "bf16", "default")
RT_INFO_HINT = ["runtime_options", "INFERENCE_PRECISION_HINT"]  # where the IR records the hint it was checked with
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul", "GroupConvolution")
INT8 = ("u8", "i8")


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise CompressorError(
            "OpenVINO is not installed; install the extra with pip install -e \".[openvino]\" (or pip install openvino)"
        ) from None
    return openvino


def compile_model(model: str | Path | bytes | Any, threads: int = 0, precision: str = "f32",
                  batch: int | None = None, input_shape: tuple[int, ...] | None = None,
                  perf_count: bool = False) -> Any:
    """A CPU ``CompiledModel`` of an .onnx or .xml file, ONNX bytes or an ``openvino.Model``.

    ``threads``: inference threads (0 lets OpenVINO choose), one stream, as an ONNX Runtime session with that many
    intra-op threads. ``precision``: one of :data:`PRECISIONS`. ``batch``: compile for that static batch size
    (what a deployment does; without it OpenVINO compiles for the dynamic batch axis of our exports).
    ``input_shape``: C,H,W to fix dynamic image dims at (with ``batch``). ``perf_count``: keep per-node
    timings (``InferRequest.get_profiling_info``)."""
    if precision not in PRECISIONS:
        raise CompressorError(f"unknown OpenVINO precision {precision!r}; choose {' | '.join(PRECISIONS)}")
    ov = import_openvino()
    core = ov.Core()
    try:
        if isinstance(model, (str, Path)):
            net = core.read_model(str(model))
        elif isinstance(model, bytes):
            net = core.read_model(model)
        else:
            net = model.clone() if batch is not None else model
        if batch is not None:  # every input's batch axis (a residual Add layer has two inputs)
            shapes = {}
            for k, port in enumerate(net.inputs):
                shape = port.get_partial_shape()
                shape[0] = batch
                shapes[port] = [batch, *input_shape] if k == 0 and input_shape is not None else shape
            net.reshape(shapes)
        config: dict[str, Any] = {"NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if perf_count:
            config["PERF_COUNT"] = True
        return core.compile_model(net, "CPU", config)
    except RuntimeError as exc:
        name = Path(model).name if isinstance(model, (str, Path)) else "the model"
        raise CompressorError(f"OpenVINO could not compile {name}: {openvino_reason(exc)}; check that the file is "
                              "a model this OpenVINO reads, or run it on ONNX Runtime (target ort-cpu, "
                              "--backend onnxruntime-cpu)") from None


def openvino_reason(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what went wrong: its messages open with "Exception from
    src/...cpp:N:" location lines and put the cause last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (causes or lines or [type(exc).__name__])[-1]


def runner(path: str | Path, batch: int, threads: int, precision: str = "f32", inputs: np.ndarray | None = None,
           input_shape: tuple[int, ...] | None = None, kernels: bool = False):
    """One synchronous inference of ``batch`` images per call, as ``bench.onnx_runner`` for ONNX Runtime.

    ``kernels``: each call returns the graph's kernel time (ms) from OpenVINO's per-node counters instead of being
    timed from outside (:class:`KernelClock`)."""
    compiled = compile_model(path, threads, precision, batch, input_shape, perf_count=kernels)
    request = compiled.create_infer_request()
    if inputs is None:  # every input random, of its own element type (a quantized layer reads uint8 / int8)
        rng = np.random.default_rng(0)
        feed = {}
        for k, port in enumerate(compiled.inputs):
            shape, dtype = tuple(port.get_shape()), port.get_element_type().to_dtype()
            feed[k] = (rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape, dtype=dtype)
                       if np.issubdtype(dtype, np.integer) else rng.standard_normal(shape).astype(dtype))
    else:
        feed = {0: np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=np.float32)}
    clock = KernelClock(request) if kernels else None

    def run() -> float | None:
        request.infer(feed)
        return clock.tick() if clock is not None else None

    return run


class KernelClock:
    """The kernel time (ms) of a request compiled with ``perf_count``: the nodes OpenVINO executed except its layout
    ``Reorder``s.

    Why: a single layer's graph pays a reorder from the plain layout into its kernel's blocked one and back, and
    the copies of its inputs and outputs, which a whole model does not pay between layers; its executed nodes are
    what the layer costs inside a model (the counters of a compiled ResNet-56 INT8 add up to 6.18 of its 6.27 ms at
    batch 64). OpenVINO reports each node's mean over every inference since compilation, in whole microseconds
    (each call truncated, so a node reads up to 1 µs low per call). ``tick``, called once after each inference,
    returns the mean over the inferences since the first ``SKIP`` (the first, slow ones drop out), node by node.
    Its values are cumulative means, not per-call times: the median that ``bench.measure`` takes of them is the
    mean over the first half of the window."""

    SKIP = 5

    def __init__(self, request: Any, skip: int = SKIP):
        self.request, self.skip, self.calls = request, skip, 0
        self.base: dict[str, float] = {}  # per node, its summed time (µs) over the skipped calls
        self.base_calls = 0

    def totals_us(self) -> dict[str, float]:
        """Per executed node (Reorders left out), its summed time over all inferences so far (µs)."""
        return {p.node_name: self.calls * p.real_time.total_seconds() * 1e6 for p in self.request.get_profiling_info()
                if p.node_type != "Reorder" and str(p.status).endswith("EXECUTED")}

    def tick(self) -> float:
        self.calls += 1
        totals = self.totals_us()
        if self.calls <= self.skip:
            self.base, self.base_calls = totals, self.calls
            return sum(totals.values()) / self.calls / 1e3
        since = sum(t - self.base.get(node, 0.0) for node, t in totals.items())
        return since / (self.calls - self.base_calls) / 1e3


def predict(model: str | Path | bytes | Any, images: np.ndarray, precision: str = "f32", threads: int = 0,
            batch: int = 250, preprocess: Callable | None = None) -> np.ndarray:
    """Logits of ``images``: preprocessed NCHW floats, or raw images that ``preprocess`` turns into a tensor batch by
    batch (as ``export.ort_predict``). Compiled for a static ``batch``, the last batch padded with zeros."""
    batch = min(batch, len(images))
    request = compile_model(model, threads, precision, batch).create_infer_request()
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch] if preprocess is None else preprocess(images[i : i + batch]).numpy()
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
        out.append(np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0][:n]))
    return np.concatenate(out)


@dataclass(frozen=True)
class ExecLayer:
    """One node of OpenVINO's execution graph (``CompiledModel.get_runtime_model()``)."""

    name: str
    type: str  # the CPU plugin's layer type: Convolution, FullyConnected, ...
    precision: str  # runtimePrecision: what the layer computes in (u8/i8 for INT8 kernels)
    primitive: str  # the kernel chosen, e.g. brgconv_avx512_amx_I8

    @property
    def int8(self) -> bool:
        return self.precision in INT8


def exec_layers(compiled: Any) -> list[ExecLayer]:
    """The convolutions and fully connected / MatMul layers of a compiled model's execution graph."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = {key: rt_value.astype(str) for key, rt_value in op.get_rt_info().items()}
        kind = rt.get("layerType", op.get_type_name())
        if kind in COMPUTE_LAYERS:
            out.append(ExecLayer(op.get_friendly_name(), kind, rt.get("runtimePrecision", ""), rt.get("primitiveType", "")))
    return out


def int8_layers(compiled: Any) -> tuple[list[ExecLayer], list[ExecLayer]]:
    """(layers that run in u8/i8, layers that do not) among :func:`exec_layers`: how to confirm from OpenVINO
    itself, not from the graph we emitted, that the convolutions and the linear layer execute in INT8."""
    layers = exec_layers(compiled)
    return [x for x in layers if x.int8], [x for x in layers if not x.int8]


def int8_summary(model: str | Path | bytes, precision: str = "f32") -> dict:
    """How many compute layers run in INT8 once ``model`` is compiled, with the names of those that do not."""
    int8, other = int8_layers(compile_model(model, 1, precision, 1))
    return {"int8_layers": len(int8), "compute_layers": len(int8) + len(other),
            "not_int8": {x.name: f"{x.type} {x.precision}" for x in other}}


def save_ir(model_path: str | Path, xml_path: str | Path, precision: str) -> Path:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin`` beside it), weights kept in their own precision,
    written to temporary names and renamed, .bin first (after removing an old .xml), so neither file is ever
    half-written and a new .bin never sits beside an old .xml. ``precision``
    is recorded in the IR's rt_info (``runtime_options``); OpenVINO does not apply it by itself, so a deployment
    passes it to ``compile_model`` as ``compressor`` does."""
    ov = import_openvino()
    xml_path = Path(xml_path)
    try:
        # read_model, not convert_model: convert_model applies its own transformations to a QDQ graph, and the INT8
        # IR then computed other logits than the ONNX file that was scored; read_model + save_model keeps them equal.
        net = ov.Core().read_model(str(model_path))
        net.set_rt_info(precision, RT_INFO_HINT)
        with atomic_path(xml_path) as tmp_xml:
            tmp_bin = tmp_xml.with_suffix(".bin")
            try:
                ov.save_model(net, str(tmp_xml), compress_to_fp16=False)
                # The .xml does not name its .bin (a reader looks beside it), so both can be renamed. An old .xml
                # goes first: a crash between the renames leaves no .xml rather than an old one beside a new .bin.
                xml_path.unlink(missing_ok=True)
                os.replace(tmp_bin, xml_path.with_suffix(".bin"))
            finally:
                tmp_bin.unlink(missing_ok=True)
    except RuntimeError as exc:
        raise CompressorError(f"OpenVINO IR export failed: {openvino_reason(exc)}; drop openvino from the recipe's "
                              "export or update openvino (pip install -U openvino)") from None
    return xml_path


def recorded_precision(xml_path: str | Path) -> str | None:
    """The precision hint :func:`save_ir` recorded in an IR, or None."""
    net = import_openvino().Core().read_model(str(xml_path))
    return net.get_rt_info(RT_INFO_HINT).astype(str) if net.has_rt_info(RT_INFO_HINT) else None
