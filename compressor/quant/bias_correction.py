"""Empirical bias correction (Nagel et al., *Data-Free Quantization*, ICCV 2019, §4.2).

Quantized weights Ŵ = W + ε shift a layer's expected output by E[ε x]; the paper adds the negative of that shift
to the layer's bias, computing E[x] from BatchNorm statistics or, when data is at hand (the empirical variant),
from real inputs. We use the calibration split: the correction of output channel c is E[(W x)_c] − E[(Ŵ x̂)_c],
the mean over images and positions, where x is the layer's input in the float model and x̂ its input in the
model whose earlier layers are already quantized and corrected. Layers are corrected in graph order, so each one
also absorbs the mean shift its quantized predecessors pass on; for the first layer x̂ = x and the correction is
exactly (W − Ŵ)E[x].
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compressor.quant.qdq import graph_index, set_initializer


def channel_means(y: torch.Tensor) -> np.ndarray:
    """E[y] per output channel (axis 1), averaged over images and positions."""
    return y.double().transpose(0, 1).reshape(y.shape[1], -1).mean(1).numpy()


def add_to_bias(model: onnx.ModelProto, node_name: str, delta: np.ndarray) -> bool:
    """Add ``delta`` to the bias of ``node_name`` in a QDQ model: an int32 bias behind a DequantizeLinear is
    requantized on its own scale, a float bias is changed directly. A bias longer than ``delta`` (zero channels the
    emission added, :func:`compressor.quant.qdq.widen_producers`) keeps its extra entries. False when the node
    has no bias."""
    producers, _, inits = graph_index(model)
    node = next(n for n in model.graph.node if n.name == node_name)
    if len(node.input) < 3 or not node.input[2]:
        return False

    def padded(size: int) -> np.ndarray:
        return np.concatenate([delta, np.zeros(size - len(delta), delta.dtype)])

    dq = producers.get(node.input[2])
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        new = np.clip(q + np.round(padded(len(q)) / scale), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        set_initializer(model, dq, 0, new.astype(np.int32), "corrected")
        return True
    if node.input[2] in inits:
        b = numpy_helper.to_array(inits[node.input[2]])
        set_initializer(model, node, 2, (b + padded(len(b))).astype(b.dtype), "corrected")
        return True
    return False
