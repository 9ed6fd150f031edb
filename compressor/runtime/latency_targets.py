"""Deployment targets of the latency model: how one layer is built in its deployed form and timed.

A :class:`LatencyTarget` knows three things about a runtime: a fingerprint of what makes its timings valid (machine,
runtime version, thread count), how a single layer looks once deployed at a precision (``layer_model``), and how to
time one layer and whole models on it (``time_layer``, ``time_models``). :class:`OrtCpuTarget` is ONNX Runtime's
CPU provider: FP32 is the exported graph as is, INT8 the QDQ form the quantize pass emits for ``ort-cpu``
(:func:`compressor.quant.qdq.quantize`, its rewrites included), and every file is timed in a fresh process that
holds only its session (:func:`compressor.runtime.bench.measure_onnx_isolated`). :class:`OpenVinoCpuTarget` builds
the same layers in the ``openvino-cpu`` emission and times them in OpenVINO under a precision hint. Each runtime is
an entry of :data:`TARGETS`; tests put analytic doubles there.

A layer is measured *inside* the deployed graph: the INT8 layer reads and writes uint8 tensors (the quantize at its
input and the dequantize at its output are removed), as it does between two quantized layers of a whole model.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import CompressorError

if TYPE_CHECKING:
    from torch import nn

PRECISIONS = ("int8", "fp32")


@dataclass(frozen=True, order=True)
class LayerShape:
    """One layer as the latency model sees it: everything that sets its cost on a runtime, nothing else.

    ``kind``: conv (Conv2d, any groups), add (a residual sum, two inputs of ``cin`` channels), shortcut (the
    option-A shortcut: subsample by ``stride``, pad ``cin`` channels to ``cout``), pool (global average) or linear.
    ``h``/``w``: input spatial size; ``act``: the activation that follows and that runtimes fuse (relu | relu6 | "").
    """

    kind: str
    cin: int
    cout: int
    h: int = 1
    w: int = 1
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    act: str = ""

    def key(self) -> str:
        """A stable text key (the table's)."""
        return (f"{self.kind}:{self.cin}x{self.h}x{self.w}->{self.cout}:k{self.kernel}s{self.stride}p{self.padding}"
                f"g{self.groups}{':' + self.act if self.act else ''}")

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "conv":
            return ((self.h + 2 * self.padding - self.kernel) // self.stride + 1,
                    (self.w + 2 * self.padding - self.kernel) // self.stride + 1)
        if self.kind == "shortcut":
            return -(-self.h // self.stride), -(-self.w // self.stride)
        return (1, 1) if self.kind in ("pool", "linear") else (self.h, self.w)


EMPTY = LayerShape("empty", 1, 1)
"""A layer that does nothing: the fixed cost of one inference call, subtracted from every measured layer."""


# ------------------------------------------------------------------------------------------ single-layer graphs


def float_layer(shape: LayerShape, seed: int = 0) -> onnx.ModelProto:
    """The layer as ``torch.onnx.export`` writes it (Conv with bias after BN folding, Relu or Clip, Add, the
    shortcut's two strided Slices and channel Pad, GlobalAveragePool + Flatten, Gemm), batch axis dynamic."""
    rng = np.random.default_rng(seed)
    s = shape
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    dims = ["N", s.cin, s.h, s.w] if s.kind not in ("linear", "empty") else ["N", s.cin]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    y = "y"
    if s.kind == "conv":
        w = rng.standard_normal((s.cout, s.cin // s.groups, s.kernel, s.kernel)).astype(np.float32) * 0.1
        nodes.append(helper.make_node("Conv", ["x", const("W", w), const("B", np.zeros(s.cout, np.float32))], ["c"],
                                      kernel_shape=[s.kernel] * 2, strides=[s.stride] * 2, pads=[s.padding] * 4,
                                      group=s.groups))
        last = "c"
    elif s.kind == "add":
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, dims))
        nodes.append(helper.make_node("Add", ["x", "x2"], ["c"]))
        last = "c"
    elif s.kind == "shortcut":
        big = np.array([2**63 - 1], np.int64)
        zero, step = np.array([0], np.int64), np.array([s.stride], np.int64)
        nodes.append(helper.make_node("Slice", ["x", const("s0", zero), const("e0", big), const("a0", np.array([2], np.int64)),
                                                const("t0", step)], ["r"]))
        nodes.append(helper.make_node("Slice", ["r", const("s1", zero), const("e1", big), const("a1", np.array([3], np.int64)),
                                                const("t1", step)], ["rc"]))
        left = (s.cout - s.cin) // 2
        pads = np.array([0, left, 0, 0, 0, s.cout - s.cin - left, 0, 0], np.int64)
        nodes.append(helper.make_node("Pad", ["rc", const("pads", pads)], ["c"]))
        last = "c"
    elif s.kind == "pool":
        nodes += [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["c"], axis=1)]
        last = "c"
    elif s.kind == "linear":
        w = rng.standard_normal((s.cout, s.cin)).astype(np.float32) * 0.1
        nodes.append(helper.make_node("Gemm", ["x", const("W", w), const("B", np.zeros(s.cout, np.float32))], ["c"],
                                      transB=1))
        last = "c"
    elif s.kind == "empty":
        nodes.append(helper.make_node("Identity", ["x"], ["c"]))
        last = "c"
    else:
        raise CompressorError(f"latency model: unknown layer kind {s.kind!r}")
    if s.act == "relu":
        nodes.append(helper.make_node("Relu", [last], [y]))
    elif s.act == "relu6":
        nodes.append(helper.make_node("Clip", [last, const("lo", np.array(0.0, np.float32)),
                                               const("hi", np.array(6.0, np.float32))], [y]))
    else:
        nodes[-1].output[0] = y
    out_dims = ["N", s.cout] if s.kind in ("pool", "linear", "empty") else ["N", s.cout, *s.out_hw]
    graph = helper.make_graph(nodes, s.kind, inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_dims)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-negative inputs (what follows a ReLU) of every graph input, at ``batch``."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.random((batch, *[d.dim_value for d in i.type.tensor_type.shape.dim[1:]])).astype(np.float32)
            for i in model.graph.input}


def _ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Min and max of every float tensor on random inputs: the calibration table the QDQ emitter consumes."""
    from compressor.runtime.sessions import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out not in known:
                probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
                known.add(out)
    feeds = _feeds(model, 8)
    sess = ort_session(probe, 1)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    values.update(feeds)
    return {k: (min(float(v.min()), 0.0), max(float(v.max()), 1e-3)) for k, v in values.items()
            if v.dtype == np.float32}


def interior(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear of every graph input and the DequantizeLinear of every graph output, so the layer
    reads and writes integer tensors as it does between two quantized layers of a deployed model."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    types = {TensorProto.UINT8, TensorProto.INT8}
    for inp in list(g.input):
        qs = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == inp.name]
        if len(qs) != 1 or len(qs[0].input) < 3 or qs[0].input[2] not in inits:
            continue
        (q,) = qs
        dtype = inits[q.input[2]].data_type
        if dtype not in types:
            continue
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == q.output[0]:
                    n.input[i] = inp.name
        g.node.remove(q)
        g.input.remove(inp)
        g.input.append(helper.make_tensor_value_info(inp.name, dtype, dims))
    for out in list(g.output):
        dqs = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == out.name]
        if len(dqs) != 1 or dqs[0].input[0] in inits:
            continue
        (dq,) = dqs
        dtype = inits[dq.input[2]].data_type if len(dq.input) > 2 and dq.input[2] in inits else TensorProto.UINT8
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        for n in g.node:
            for i, name in enumerate(n.output):
                if name == dq.input[0]:
                    n.output[i] = out.name
        for n in g.node:  # other readers of the integer tensor now read it under the output's name
            for i, name in enumerate(n.input):
                if name == dq.input[0]:
                    n.input[i] = out.name
        g.node.remove(dq)
        g.output.remove(out)
        g.output.append(helper.make_tensor_value_info(out.name, dtype, dims))
    del g.value_info[:]
    return model


def int8_qdq(model: onnx.ModelProto, target: str = "ort-cpu") -> onnx.ModelProto:
    """The QDQ model the quantize pass emits for ``target`` with its default configuration (asymmetric uint8
    activations, per-channel int8 weights), on ranges measured from random inputs: values do not set the speed."""
    from compressor.quant.qdq import prepare_float, quantize
    from compressor.quant.space import QuantConfig

    prepared = prepare_float(model)
    return quantize(prepared, _ranges(prepared), QuantConfig(), target)


# --------------------------------------------------------------------------------------------------- targets


class LatencyTarget(Protocol):
    """A runtime the latency model can time on. ``time_layer`` times one layer shape built alone in its deployed
    form, ``time_models`` whole models, each in its precision, alternating over ``rounds`` windows; both return
    the median latency in ms per batch size, every window timed alone (its own process, or the runtime's own
    isolation). ``fingerprint`` says what makes the timings valid."""

    name: str

    def fingerprint(self) -> dict[str, str]: ...

    # Optional: ``deployed_shape(shape, precision)``, the shape a layer runs at; EMPTY for a layer the runtime
    # fuses away (``LatencyModel.runs``). Targets without it run every layer as described.

    def time_layer(self, shape: LayerShape, precision: str, batches: list[int]) -> dict[int, float]: ...

    def time_models(self, models: list[tuple[nn.Module, str]], input_shape: tuple[int, ...], batches: list[int],
                    rounds: int = 1) -> list[dict[int, float]]: ...


def cpu_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class OrtCpuTarget:
    """ONNX Runtime's CPU execution provider with ``threads`` intra-op threads; each layer (whole model) is timed
    in a fresh process (``bench.measure_onnx_isolated``) for ``duration`` (``model_duration``) seconds per batch
    size after ``warmup``."""

    threads: int = 2
    duration: float = 0.3
    warmup: float = 0.1
    model_duration: float = 1.0
    name: str = "ort-cpu"
    channel_multiple: int = 4
    """INT8 dense and depthwise convs are timed at channel counts rounded up to this: the ort-cpu emission widens
    a conv read only by convs with zero output channels, and its readers to match (``qdq.widen_producers``), so
    inside a model such a layer runs at the rounded width with no Pad before it. Not so for a conv whose input an
    Add writes (residual channels pruned to an odd width with ``scope: all``): the model keeps a Pad there that
    the table does not time, and a conv writing an Add runs at its own width. The RGB stem's Pad runs before the
    layout change and costs little."""
    _timed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def fingerprint(self) -> dict[str, str]:
        import onnxruntime

        own = {"target": self.name, "cpu": cpu_name(), "cores": str(os.cpu_count()), "arch": platform.machine(),
               "runtime": f"onnxruntime {onnxruntime.__version__}", "threads": str(self.threads)}
        if self.channel_multiple > 1:
            own["int8_conv_channels"] = f"dense and depthwise rounded up to a multiple of {self.channel_multiple}"
        return own

    def deployed(self, float_model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
        """The model as the deployment runs it: the exported graph (FP32) or the quantize pass's QDQ form (INT8)."""
        return int8_qdq(float_model, self.name) if precision == "int8" else float_model

    def deployed_shape(self, shape: LayerShape, precision: str) -> LayerShape:
        """The shape a layer runs at in the deployed model: an INT8 shortcut as its 1x1 conv, INT8 dense and
        depthwise convs at channel counts rounded up to ``channel_multiple``."""
        # Both CPU emissions (ort-cpu, openvino-cpu) rewrite the option-A shortcut as a 1x1 conv (shortcut_convs).
        if precision == "int8" and shape.kind == "shortcut":
            shape = LayerShape("conv", shape.cin, shape.cout, shape.h, shape.w, 1, shape.stride)
        m = self.channel_multiple
        if precision != "int8" or shape.kind != "conv" or m == 1:
            return shape
        up = lambda c: -(-c // m) * m  # noqa: E731
        if shape.groups == 1:
            return replace(shape, cin=up(shape.cin), cout=up(shape.cout))
        if shape.groups == shape.cin == shape.cout:
            return replace(shape, cin=up(shape.cin), cout=up(shape.cout), groups=up(shape.cin))
        return shape

    def layer_model(self, shape: LayerShape, precision: str) -> onnx.ModelProto:
        shape = self.deployed_shape(shape, precision)
        model = self.deployed(float_layer(shape), precision)
        return interior(model) if precision == "int8" else model

    def _time(self, models: list[onnx.ModelProto], batches: list[int], duration: float,
              rounds: int = 1, layer: bool = False) -> list[dict[int, float]]:
        from compressor.runtime.bench import BenchSettings, measure_onnx_isolated

        settings = BenchSettings(warmup=self.warmup, duration=duration * rounds, iterations=5 * rounds,
                                 threads=self.threads)
        with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
            paths = [Path(tmp) / f"model{i}.onnx" for i in range(len(models))]
            for model, path in zip(models, paths):
                onnx.save(model, path)
            # Each window a fresh process holding one session; several models alternate window by window.
            measured = measure_onnx_isolated([self.timed(p, layer) for p in paths], batches, settings, windows=rounds)
        return [{b: float(np.median(measured[b][i][0])) for b in batches} for i in range(len(models))]

    def timed(self, path: Path, layer: bool = False):  # noqa: ANN201
        """How bench's child process runs ``path`` on this target (``layer``: a single-layer model)."""
        from compressor.runtime.bench import Timed

        return Timed(path)

    def time_layer(self, shape: LayerShape, precision: str, batches: list[int]) -> dict[int, float]:
        # Shapes that deploy alike (widths 13-16 all run at 16) are one timing: the table gets equal entries, so
        # the knapsack sees a flat step, not noise between copies of one measurement.
        key = (self.deployed_shape(shape, precision), precision, tuple(batches))
        if key not in self._timed:
            self._timed[key] = self._time([self.layer_model(shape, precision)], batches, self.duration, layer=True)[0]
        return self._timed[key]

    def time_models(self, models: list[tuple[nn.Module, str]], input_shape: tuple[int, ...], batches: list[int],
                    rounds: int = 1) -> list[dict[int, float]]:
        from compressor.runtime.export import export_onnx

        deployed = []
        with tempfile.TemporaryDirectory(prefix="compressor-latency-") as tmp:
            for i, (model, precision) in enumerate(models):
                path = export_onnx(model, Path(tmp) / f"model{i}.onnx", input_shape)
                deployed.append(self.deployed(onnx.load(path), precision))
        return self._time(deployed, batches, self.model_duration, rounds)


@dataclass
class OpenVinoCpuTarget(OrtCpuTarget):
    """OpenVINO's CPU plugin with ``threads`` inference threads and one stream, the float parts under
    ``precision_hint`` (the recipe's ``openvino.precision``); INT8 is the quantize pass's openvino-cpu emission.
    Every file is timed in a fresh process as on ONNX Runtime (bench's openvino child)."""

    precision_hint: str = "f32"
    name: str = "openvino-cpu"
    channel_multiple: int = 1  # its emission pads nothing: OpenVINO takes any channel count

    def fingerprint(self) -> dict[str, str]:
        from compressor.runtime.openvino import KernelClock, import_openvino

        ov = import_openvino()
        # Its INT8 layers are emitted by ONNX Runtime's quantizer (the ort-cpu fingerprint's "runtime"), so an
        # update of either changes what is timed.
        own = super().fingerprint()
        return {**own, "emitter": own["runtime"], "runtime": f"openvino {ov.__version__}",
                "precision_hint": self.precision_hint,
                "layer_timing": f"kernel counters less reorders, mean after {KernelClock.SKIP} calls; a residual "
                                 "Add fused"}

    def deployed_shape(self, shape: LayerShape, precision: str) -> LayerShape:
        """As on ort-cpu, except that a residual Add deploys as nothing: OpenVINO's CPU plugin fuses it into the
        convolution that writes one operand (its execution graph folds every Add of ResNet-56 and MobileNetV2 into
        a convolution, FP32 and INT8), so it is never timed and costs nothing (``LatencyModel.runs``)."""
        return EMPTY if shape.kind == "add" else super().deployed_shape(shape, precision)

    def timed(self, path: Path, layer: bool = False):  # noqa: ANN201
        from compressor.runtime.bench import Timed

        # A single-layer graph pays reorders into and out of its kernel's blocked layout, and input and output
        # copies, that a whole model does not pay between layers: timed with them, the layer sum over-counted a
        # ResNet-56 4.5-fold (docs/latency.md). Its kernels, from OpenVINO's counters, are what the model pays.
        return Timed(path, "openvino", self.precision_hint, kernels=layer)


TARGETS: dict[str, Callable[..., LatencyTarget]] = {"ort-cpu": OrtCpuTarget, "openvino-cpu": OpenVinoCpuTarget}
"""Runtimes by name; ``factory(threads=...)`` builds one; the prune and n2n configs take their allowed ``target``
values from this mapping."""


def make_target(name: str, threads: int = 2, precision_hint: str = "f32") -> LatencyTarget:
    """``precision_hint``: OpenVINO's hint for the float parts (openvino-cpu only)."""
    if name not in TARGETS:
        raise CompressorError(f"latency target {name!r} is not available here; choose {' | '.join(sorted(TARGETS))}")
    factory = TARGETS[name]
    takes_hint = "precision_hint" in inspect.signature(factory).parameters
    return factory(threads=threads, precision_hint=precision_hint) if takes_hint else factory(threads=threads)


def fingerprint_key(fingerprint: dict[str, str]) -> str:
    """A short file-name-safe digest of a target fingerprint."""
    return hashlib.sha256(repr(sorted(fingerprint.items())).encode()).hexdigest()[:16]
