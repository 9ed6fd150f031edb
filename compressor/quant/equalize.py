"""Cross-layer equalization (Nagel et al., *Data-Free Quantization Through Weight Equalization and Bias
Correction*, ICCV 2019, §4.1) on the BatchNorm-folded float ONNX graph.

For two convolutions joined by a positively homogeneous function f (f(x/s) = f(x)/s for s > 0: identity, ReLU),
dividing output channel i of the first by s_i and multiplying input channel i of the second by s_i leaves the
network's function unchanged. With r1_i and r2_i the ranges (max |w|) of those channels, s_i = sqrt(r1_i / r2_i)
makes both ranges sqrt(r1_i r2_i), which maximises the paper's per-channel precision objective Σ_i p1_i p2_i
(p_i = r_i / max_j r_j). Pairs sharing a layer (depthwise between two pointwise convs) are equalized in turn until
the scales stop changing, as the paper iterates.

**ReLU6** (a Clip to [0, 6] in ONNX) is not homogeneous: clip(x/s, 0, 6)·s = clip(x, 0, 6s). The paper replaces
ReLU6 by ReLU, which changes the network; we may not. Channel i stays exact only when the clip never acts on it
before or after the rescaling: when interval arithmetic proves the first conv's output channel i never exceeds
B_i ≤ 6 (its input is itself bounded, e.g. by a preceding ReLU6) and the new bound B_i/s_i ≤ 6 too, i.e. s_i ≥
B_i/6. Every other channel behind a ReLU6 keeps s_i = 1. In MobileNetV2 this reaches only some depthwise →
projection channels; expansion → depthwise pairs read unbounded block inputs and are left alone.

Why ONNX and not torch: the quantize pass quantizes the exported graph, where BatchNorm is already folded and
every consumer of a tensor is explicit (a tensor read by a residual Add as well is not rescaled); the search
needs the plain and the equalized graph side by side; and node names, which ``keep_float`` and sensitivity use,
stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.quant.qdq import attribute, graph_index, set_initializer


@dataclass
class Pair:
    """Two convs joined by ``act`` (``identity`` | ``relu`` | ``clip``) on a tensor nothing else reads."""

    first: str
    second: str
    act: str
    clip: tuple[float, float] | None = None


@dataclass
class Equalization:
    """What :func:`equalize` did: the pairs, sweeps until convergence, and per pair the channels it may move
    (all of them for ReLU / identity, the provably unclipped ones for ReLU6)."""

    pairs: list[Pair] = field(default_factory=list)
    sweeps: int = 0
    movable: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"pairs": len(self.pairs), "sweeps": self.sweeps,
                "channels_movable": sum(self.movable.values()), "channels": sum(self.channels.values())}


def _clip_bounds(node: onnx.NodeProto, inits: dict) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants, else None."""
    vals = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) > i and node.input[i]:
            if node.input[i] not in inits:
                return None
            vals.append(float(numpy_helper.to_array(inits[node.input[i]])))
        else:
            vals.append(default)
    return vals[0], vals[1]


def _weighted_conv(node: onnx.NodeProto | None, inits: dict) -> bool:
    return node is not None and node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Conv → [Relu | Clip(0, c)] → Conv chains whose intermediate tensors have exactly one reader."""
    producers, consumers, inits = graph_index(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for a in model.graph.node:
        if not _weighted_conv(a, inits):
            continue
        tensor, act, clip = a.output[0], "identity", None
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip") and tensor not in outputs:
            node = users[0]
            if node.op_type == "Clip":
                clip = _clip_bounds(node, inits)
                if clip is None or clip[0] != 0.0 or not np.isfinite(clip[1]):
                    continue
            act, tensor = node.op_type.lower(), node.output[0]
            users = consumers.get(tensor, [])
        if len(users) == 1 and tensor not in outputs and _weighted_conv(users[0], inits) and users[0].input[0] == tensor:
            pairs.append(Pair(a.name, users[0].name, act, clip))
    return pairs


def _input_bounds(model: onnx.ModelProto, conv: onnx.NodeProto, producers: dict, inits: dict) -> tuple[float, float]:
    """Provable (low, high) of a conv's input: from a preceding Relu or constant Clip, else unbounded."""
    p = producers.get(conv.input[0])
    if p is not None and p.op_type == "Relu":
        return 0.0, np.inf
    if p is not None and p.op_type == "Clip":
        return _clip_bounds(p, inits) or (-np.inf, np.inf)
    return -np.inf, np.inf


def output_upper_bound(w: np.ndarray, b: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per output channel, the largest value a conv can produce on inputs in [low, high] (zero padding included,
    which needs low ≤ 0 ≤ high): b + Σ max(w·high, w·low)."""
    with np.errstate(invalid="ignore", over="ignore"):
        pos = np.where(w > 0, w * high, 0.0) + np.where(w < 0, w * low, 0.0)
        return b + np.nan_to_num(pos.reshape(w.shape[0], -1), nan=0.0, posinf=np.inf).sum(1)


def _input_ranges(w2: np.ndarray, group: int) -> np.ndarray:
    """max |w| per input channel of a (grouped) conv: channel c is column c mod (C/group) of group c // (C/group)."""
    v = np.abs(w2).reshape(group, w2.shape[0] // group, w2.shape[1], -1)
    return v.max(axis=(1, 3)).reshape(-1)


def _scale_inputs(w2: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """``w2`` with input channel c multiplied by s_c."""
    v = w2.reshape(group, w2.shape[0] // group, w2.shape[1], -1) * s.reshape(group, 1, w2.shape[1], 1)
    return v.reshape(w2.shape)


def equalize(model: onnx.ModelProto, max_sweeps: int = 100, tol: float = 1e-6) -> tuple[onnx.ModelProto, Equalization]:
    """A copy of ``model`` with every equalizable pair equalized (the network's function unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = find_pairs(out)
    report = Equalization(pairs)
    if not pairs:
        return out, report
    producers, _, inits = graph_index(out)
    nodes = {n.name: n for n in out.graph.node}
    # Work on private float64 copies of every touched weight and bias; shared initializers are split on write.
    touched = {n for p in pairs for n in (p.first, p.second)}
    w = {n: numpy_helper.to_array(inits[nodes[n].input[1]]).astype(np.float64) for n in touched}
    b = {n: (numpy_helper.to_array(inits[nodes[n].input[2]]).astype(np.float64) if len(nodes[n].input) > 2
             and nodes[n].input[2] else np.zeros(w[n].shape[0])) for n in touched}
    for sweep in range(1, max_sweeps + 1):
        largest = 0.0
        for p in pairs:
            a, c = nodes[p.first], nodes[p.second]
            group = attribute(c, "group", 1)
            r1 = np.abs(w[p.first]).reshape(w[p.first].shape[0], -1).max(1)
            r2 = _input_ranges(w[p.second], group)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / r2), 1.0)
            report.channels[p.first] = len(s)
            if p.act == "clip":
                low, high = _input_bounds(out, a, producers, inits)
                bound = output_upper_bound(w[p.first], b[p.first], low, high)
                exact = bound <= p.clip[1]
                s = np.where(exact, np.maximum(s, bound / p.clip[1]), 1.0)
                # Equalizing only some channels can lower the pair's objective (a moved channel may set a new
                # maximum range); such a step is skipped. Unconstrained pairs reach the optimum (paper, §4.1).
                if _objective_after(w[p.first], w[p.second], s, group) < pair_objective(w[p.first], w[p.second], group):
                    s = np.ones_like(s)
                report.movable[p.first] = int(exact.sum())
            else:
                report.movable[p.first] = len(s)
            w[p.first] /= s.reshape(-1, *[1] * (w[p.first].ndim - 1))
            b[p.first] /= s
            w[p.second] = _scale_inputs(w[p.second], s, group)
            largest = max(largest, float(np.abs(np.log(s)).max()))
        report.sweeps = sweep
        if largest < tol:
            break
    for name in sorted(touched):  # set order varies between processes; appended initializers must not
        node = nodes[name]
        set_initializer(out, node, 1, w[name].astype(np.float32), "equalized")
        if len(node.input) > 2 and node.input[2]:  # a bias-free conv stays bias-free: scaling keeps zeros zero
            set_initializer(out, node, 2, b[name].astype(np.float32), "equalized")
    return out, report


def _objective_after(w1: np.ndarray, w2: np.ndarray, s: np.ndarray, group: int) -> float:
    return pair_objective(w1 / s.reshape(-1, *[1] * (w1.ndim - 1)), _scale_inputs(w2, s, group), group)


def pair_objective(w1: np.ndarray, w2: np.ndarray, group: int) -> float:
    """The paper's objective for one pair: Σ_i p1_i p2_i with p_i = r_i / max_j r_j (eq. 9)."""
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
    r2 = _input_ranges(w2, group)
    return float(np.sum((r1 / r1.max()) * (r2 / r2.max())))
