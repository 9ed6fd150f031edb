"""Calibration-data weight optimisation of a QDQ model, layer by layer: AdaRound rounding
(:mod:`compressor.quant.adaround`) and empirical bias correction (:mod:`compressor.quant.bias_correction`).

Both need, for every weighted layer in graph order, its float output W x and its input x̂ in the model whose
earlier layers already carry their quantized (and corrected) weights. One ONNX Runtime session of the float graph
with every weight and bias turned into a graph input gives both: it runs once over the images with the float
weights, and once per layer with the weights decided so far. Activations stay float in that model, because both
methods target the error of weight quantization.

The result is plain data, a :class:`WeightTable` of integer weights and bias corrections per node, computed once
per weight-relevant configuration and written into any QDQ model of the same weight grid by :func:`apply`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from tqdm import tqdm

from compressor.quant.adaround import AdaRoundSettings, adaround, reconstruction_error
from compressor.quant.bias_correction import add_to_bias, channel_means
from compressor.quant.calibrate import float_tensors
from compressor.quant.qdq import attribute, graph_index, set_initializer


@dataclass
class Grid:
    """One layer's weight quantization in a QDQ model: integer weights, scale (broadcastable to them) and the
    int8 initializer's name."""

    q: np.ndarray
    scale: np.ndarray
    init: str


@dataclass
class LayerWeights:
    q: np.ndarray | None = None  # integer weights (AdaRound), or None to keep the emission's nearest rounding
    bias_delta: np.ndarray | None = None
    error_nearest: float | None = None  # AdaRound's reconstruction loss (sampled positions) with nearest rounding
    error_adaround: float | None = None  # ... and with AdaRound's rounding


@dataclass
class WeightTable:
    layers: dict[str, LayerWeights] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        ada = [v for v in self.layers.values() if v.error_adaround is not None]
        return {"layers": len(self.layers), "seconds": round(self.seconds, 1),
                "adaround_better": sum(v.error_adaround < v.error_nearest for v in ada)}


def read_grids(qdq: onnx.ModelProto) -> dict[str, Grid]:
    """The int8 weight grid of every 2-D Conv / Gemm whose weight is a DequantizeLinear of an initializer and
    that :func:`torch_layer` can run; other layers keep nearest rounding and no bias correction."""
    producers, _, inits = graph_index(qdq)
    out = {}
    for node in qdq.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]])
        if q.dtype != np.int8 or not _runs_in_torch(node, q):
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[attribute(dq, "axis", 1)] = -1
        out[node.name] = Grid(q, scale.reshape(shape), dq.input[0])
    return out


def _runs_in_torch(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    if node.op_type == "Gemm":
        return weight.ndim == 2 and not attribute(node, "transA", 0)
    return weight.ndim == 4 and attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def torch_layer(node: onnx.NodeProto, bias: np.ndarray | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The node as ``f(x, w)`` in torch, with its bias, on whole input tensors."""
    b = None if bias is None else torch.from_numpy(np.array(bias, np.float32))
    if node.op_type == "Gemm":
        trans_b, alpha, beta = attribute(node, "transB", 0), attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
        if attribute(node, "transA", 0):
            raise ValueError(f"{node.name}: Gemm with transA is not supported")

        def gemm(x, w):
            y = alpha * (x @ (w.t() if trans_b else w))
            return y if b is None else y + beta * b
        return gemm
    if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{node.name}: Conv with auto_pad is not supported")
    pads, stride, dilation, group = _conv_params(node)

    def conv(x, w):
        return F.conv2d(F.pad(x, pads) if any(pads) else x, w, b, stride, 0, dilation, group)
    return conv


def _conv_params(node: onnx.NodeProto) -> tuple[tuple[int, ...], list[int], list[int], int]:
    top, left, bottom, right = attribute(node, "pads", [0, 0, 0, 0])
    return ((left, right, top, bottom), list(attribute(node, "strides", [1, 1])),
            list(attribute(node, "dilations", [1, 1])), attribute(node, "group", 1))


def sample_columns(y_shape: tuple[int, ...], columns: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, position) pairs drawn for AdaRound from a layer's output of shape (N, C, H, W) or (N, C)."""
    positions = int(np.prod(y_shape[2:])) if len(y_shape) > 2 else 1
    pick = torch.randint(0, y_shape[0] * positions, (columns,), generator=gen)
    return pick // positions, pick % positions


def column_problem(node: onnx.NodeProto, bias: np.ndarray | None, w_shape: tuple[int, ...], x_hat: torch.Tensor,
                   image: torch.Tensor, pos: torch.Tensor) -> tuple[Callable, torch.Tensor]:
    """The layer as a matrix product on sampled output positions, for AdaRound: ``(layer, X)`` with X the input
    patches at the (image, position) pairs and ``layer(X, w)`` the outputs there. The loss of AdaRound's reference
    implementation (AIMET) sums over channels and averages over images and positions, so sampling positions keeps
    it unbiased at a fraction of a full convolution's cost."""
    b = None if bias is None else torch.from_numpy(np.array(bias, np.float32))
    if node.op_type == "Gemm":
        return torch_layer(node, bias), x_hat[image]
    pads, stride, dilation, group = _conv_params(node)
    out_ch, in_per_group = w_shape[0], w_shape[1]
    kernel = tuple(w_shape[2:])
    x_cols = torch.empty(len(image), group * in_per_group * int(np.prod(kernel)))
    for i in torch.unique(image):
        sel = image == i
        xi = F.pad(x_hat[i : i + 1], pads) if any(pads) else x_hat[i : i + 1]
        x_cols[sel] = F.unfold(xi, kernel, dilation=dilation, stride=stride)[0][:, pos[sel]].t()  # (C·k·k, positions)
    x_cols = x_cols.view(len(image), group, -1)

    def layer(x, w):
        out = torch.einsum("gok,bgk->bgo", w.reshape(group, out_ch // group, -1), x).reshape(len(x), out_ch)
        return out if b is None else out + b
    return layer, x_cols


def outputs_at(y: torch.Tensor, image: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """y (N, C, H, W) or (N, C) at (image, position) pairs: (pairs, C)."""
    return y[image] if y.ndim == 2 else y.flatten(2)[image, :, pos]


def activation(model: onnx.ModelProto, node: onnx.NodeProto) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ReLU or constant Clip that alone reads the node's output, else the identity."""
    _, consumers, inits = graph_index(model)
    users = consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Relu":
        return torch.relu
    if len(users) == 1 and users[0].op_type == "Clip":
        lo, hi = (float(numpy_helper.to_array(inits[i])) if i in inits else None for i in (list(users[0].input) + ["", ""])[1:3])
        return lambda y: torch.clamp(y, lo, hi)
    return lambda y: y


def _weights_as_inputs(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` whose weighted nodes read their own weight and bias as graph inputs, and the float
    values to feed them, by input name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {n.name: n for n in out.graph.node}
    inits = {i.name: i for i in out.graph.initializer}
    feeds = {}
    for node in nodes:
        node = by_name[node.name]
        for index in (1, 2):
            if len(node.input) <= index or node.input[index] not in inits:
                continue
            value = numpy_helper.to_array(inits[node.input[index]])
            name = f"{node.name}__weight_input_{index}"
            node.input[index] = name
            feeds[name] = value
            out.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, value.shape))
    used = {i for n in out.graph.node for i in n.input}
    for init in [i for i in out.graph.initializer if i.name not in used]:
        out.graph.initializer.remove(init)
    return out, feeds


CHUNK = 16  # images per float pass: every layer's output of a chunk is held at once


def optimize(float_model: onnx.ModelProto, qdq: onnx.ModelProto, images: np.ndarray,
             adaround_settings: AdaRoundSettings | None, bias_correction: bool, seed: int = 0,
             progress: bool = False, *, qmax: int) -> WeightTable:
    """AdaRound (when ``adaround_settings`` is given) and/or bias correction for every layer quantized in ``qdq``,
    in graph order, on ``images`` (preprocessed calibration images). Weights are symmetric on ±``qmax`` (127 for
    int8, as the QDQ emission writes them; less for a narrowed grid).

    The float model runs once, in chunks, keeping per layer what the methods need of W x: its mean per channel
    and, for AdaRound, its values at sampled output positions. The model with the decided weights runs once per
    layer (x̂ depends on every earlier decision); expectations over x̂ come from its mean image, since a layer is
    affine in its input."""
    start = time.perf_counter()
    grids = read_grids(qdq)
    order = [n for n in float_model.graph.node if n.name in grids]
    model, float_feeds = _weights_as_inputs(float_model, order)
    names = set(float_tensors(float_model))
    graph_in = model.graph.input[0].name
    for node in order:
        for t in (node.input[0], node.output[0]):
            if t in names and t not in {o.name for o in model.graph.output} and t != graph_in:
                model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    table = WeightTable()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-layer tensors: a second thread costs more in wake-ups than it gains
    try:
        reference = _float_pass(session, graph_in, images, order, float_feeds, adaround_settings, seed)
        quant_feeds = dict(float_feeds)

        def decided_input(tensor: str) -> torch.Tensor:
            if tensor == graph_in:
                return torch.from_numpy(images)
            return torch.from_numpy(session.run([tensor], {graph_in: images, **quant_feeds})[0])

        for i, node in enumerate(tqdm(order, desc="weights", unit="layer", disable=not progress, leave=False)):
            table.layers[node.name] = _layer(node, grids[node.name], float_model, float_feeds, quant_feeds,
                                             decided_input(node.input[0]), reference[node.name], adaround_settings,
                                             bias_correction, seed + i, qmax)
    finally:
        torch.set_num_threads(threads)
    table.seconds = time.perf_counter() - start
    return table


def _float_pass(session: ort.InferenceSession, graph_in: str, images: np.ndarray, order: list[onnx.NodeProto],
                feeds: dict, adaround_settings: AdaRoundSettings | None, seed: int) -> dict[str, dict]:
    """Per layer: ``mean`` of W x per channel and, for AdaRound, ``image``/``pos`` samples and W x there."""
    outs = [n.output[0] for n in order]
    ref: dict[str, dict] = {n.name: {"sum": 0.0} for n in order}
    for start in range(0, len(images), CHUNK):
        values = session.run(outs, {graph_in: images[start : start + CHUNK], **feeds})
        for i, (node, y) in enumerate(zip(order, values)):
            r, y = ref[node.name], torch.from_numpy(y)
            r["sum"] = r["sum"] + y.double().transpose(0, 1).reshape(y.shape[1], -1).sum(1)
            r["count"] = r.get("count", 0) + y.numel() // y.shape[1]
            if adaround_settings is None:
                continue
            if "image" not in r:
                r["image"], r["pos"] = sample_columns((len(images), *y.shape[1:]), adaround_settings.columns,
                                                      torch.Generator().manual_seed(seed + i))
                r["y"] = torch.empty(adaround_settings.columns, y.shape[1])
            sel = (r["image"] >= start) & (r["image"] < start + len(y))
            r["y"][sel] = outputs_at(y, r["image"][sel] - start, r["pos"][sel])
    for r in ref.values():
        r["mean"] = (r.pop("sum") / r.pop("count")).numpy()
    return ref


def _layer(node: onnx.NodeProto, grid: Grid, float_model: onnx.ModelProto, float_feeds: dict, quant_feeds: dict,
           x_hat: torch.Tensor, ref: dict, adaround_settings: AdaRoundSettings | None, bias_correction: bool,
           seed: int, qmax: int) -> LayerWeights:
    """Decide one layer's integer weights and bias correction, and feed them to the model for the next layers."""
    w_name, b_name = f"{node.name}__weight_input_1", f"{node.name}__weight_input_2"
    w = torch.from_numpy(np.array(float_feeds[w_name]))
    bias = float_feeds.get(b_name)
    # The emission may have padded the grid with zero channels (qdq.widen_producers, pad_input_channels): the
    # float layer is its leading slice, per-channel scales included.
    scale = torch.from_numpy(np.ascontiguousarray(grid.scale[tuple(slice(0, min(d, n)) for d, n in zip(w.shape, grid.scale.shape))]))
    q = torch.from_numpy(grid.q[tuple(slice(0, d) for d in w.shape)].astype(np.float32))  # nearest rounding
    entry = LayerWeights()
    if adaround_settings is not None:
        act = activation(float_model, node)
        layer, x_cols = column_problem(node, bias, tuple(w.shape), x_hat, ref["image"], ref["pos"])
        target = act(ref["y"])
        nearest = q
        q = adaround(w, scale, -qmax, qmax, layer, act, x_cols, target, adaround_settings, seed)
        entry.error_nearest = reconstruction_error(layer, act, nearest * scale, x_cols, target)
        entry.error_adaround = reconstruction_error(layer, act, q * scale, x_cols, target)
        entry.q = q.numpy().astype(np.int8)
    w_hat = (q * scale).float()
    if bias_correction and bias is not None:
        with torch.no_grad():  # E over images of an affine layer = the layer applied to the mean image
            mean_out = torch_layer(node, bias)(x_hat.double().mean(0, keepdim=True).float(), w_hat)
        entry.bias_delta = (ref["mean"] - channel_means(mean_out)).astype(np.float32)
        quant_feeds[b_name] = (bias + entry.bias_delta).astype(np.float32)
    quant_feeds[w_name] = w_hat.numpy()
    return entry


def apply(qdq: onnx.ModelProto, table: WeightTable) -> onnx.ModelProto:
    """A copy of ``qdq`` with the table's integer weights and bias corrections written in. Layers the table has
    but ``qdq`` keeps in float are skipped; a stem whose input channels the emission padded keeps its zeros."""
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    grids = read_grids(out)
    producers, _, _ = graph_index(out)
    nodes = {n.name: n for n in out.graph.node}
    for name, entry in table.layers.items():
        if name not in grids:
            continue
        if entry.q is not None:
            full = grids[name].q.copy()
            full[tuple(slice(0, d) for d in entry.q.shape)] = entry.q
            set_initializer(out, producers[nodes[name].input[1]], 0, full, "adarounded")
        if entry.bias_delta is not None:
            add_to_bias(out, name, entry.bias_delta)
    return out
