"""Measured per-layer sensitivity for mixed precision: how much quantization error each weighted layer adds.

For every Conv/Gemm the signal-to-quantization-noise ratio (SQNR) of its input and of its output is measured in
the all-INT8 QDQ model against the float model on real calibration images; the layer's sensitivity is the SQNR it
loses (input SQNR − output SQNR), i.e. the error that its own weight and activation quantization adds on top of
what it receives. Quantune's "mixed" precision keeps the most sensitive layers in float.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.quant.calibrate import intermediate_session, run_intermediates


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return 10.0 * np.log10(max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30) / max(noise, 1e-30))


def layer_sensitivity(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """SQNR (dB) lost across each weighted node of ``qdq_model`` that also exists in ``float_model``."""
    fnodes = {n.name: n for n in float_model.graph.node}
    pairs = []
    for n in qdq_model.graph.node:
        f = fnodes.get(n.name)
        if f is not None and n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            pairs.append((n.name, f.input[0], f.output[0], n.input[0], n.output[0]))
    fnames = sorted({p[1] for p in pairs} | {p[2] for p in pairs})
    qnames = sorted({p[3] for p in pairs} | {p[4] for p in pairs})
    fvals = run_intermediates(intermediate_session(float_model, fnames), x, fnames)
    qvals = run_intermediates(intermediate_session(qdq_model, qnames), x, qnames)
    out = {}
    for name, fin, fout, qin, qout in pairs:
        # The emission may give a layer zero channels (qdq.widen_producers, pad_input_channels): compare the float
        # layer's own channels.
        ref_out, got_out = fvals[fout], qvals[qout][:, : fvals[fout].shape[1]]
        if ref_out.min() >= 0:  # ORT folded the following ReLU into this node's output name
            got_out = np.maximum(got_out, 0)
        got_in = qvals[qin][:, : fvals[fin].shape[1]]
        out[name] = _sqnr(fvals[fin], got_in) - _sqnr(ref_out, got_out)
    return out


def most_sensitive(sensitivity: dict[str, float], fraction: float = 0.1) -> list[str]:
    """The top ``fraction`` of layers (at least one) by SQNR lost."""
    k = max(1, round(fraction * len(sensitivity)))
    return [name for name, _ in sorted(sensitivity.items(), key=lambda kv: -kv[1])[:k]]
