"""Calibration: collect activation statistics once per calibration size, derive clipping ranges from them.

The split follows ONNX Runtime's own design (``onnxruntime.quantization.calibrate``): a calibrator produces a plain
table, a quantizer consumes ranges. Here the table keeps, for every float tensor of the graph, its exact min/max
and a signed histogram, so max, KL-entropy (the TensorRT/Glow "KL" calibration, Migacz 2017), percentile and MSE
(the range minimising the expected quantization error, as in Nagel et al.'s *White Paper on Neural Network
Quantization*, 2021, §3.4) ranges are all derived from one pass over the images. Searching 100 configurations therefore costs one
calibration run per calibration size, which ``Calibrator.runs`` counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressor.core.data import Preprocess, Split
from compressor.core.files import write_atomic
from compressor.quant.space import Clipping

BINS = 2048  # signed histogram bins over [-R, R]; divisible by 4 so range doubling merges bins exactly
BATCH = 50
HIST_SAMPLE = 1 << 18


@dataclass
class TensorStats:
    """Min, max, the count of exact zeros and a histogram of the non-zero values over [-bound, bound].

    Zeros (half of every post-ReLU tensor) are counted apart: every scheme represents 0 exactly, and left in the
    histogram their spike dominates the KL divergence and drives the entropy threshold to its minimum.
    """

    min: float
    max: float
    bound: float
    hist: np.ndarray
    zeros: int = 0

    def add(self, x: np.ndarray) -> None:
        x = x.ravel()
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        need = max(abs(lo), abs(hi))
        while need > self.bound:  # double the range: pairs of old bins become one new bin in the middle half
            merged = self.hist.reshape(-1, 2).sum(1)
            self.hist = np.zeros_like(self.hist)
            self.hist[BINS // 4 : BINS // 4 + BINS // 2] = merged
            self.bound *= 2.0
        # Min/max see every value; the histogram a fixed stride of at most HIST_SAMPLE values per batch.
        x = x[:: max(1, x.size // HIST_SAMPLE)]
        nonzero = x[x != 0]
        self.zeros += x.size - nonzero.size
        idx = ((nonzero + np.float32(self.bound)) * np.float32(BINS / (2 * self.bound))).astype(np.int32)
        self.hist += np.bincount(np.clip(idx, 0, BINS - 1, out=idx), minlength=BINS)

    @classmethod
    def first(cls, x: np.ndarray) -> TensorStats:
        bound = float(np.abs(x).max()) or 1e-8
        s = cls(float(x.min()), float(x.max()), bound, np.zeros(BINS, dtype=np.int64))
        s.add(x)
        return s

    def as_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "bound": self.bound, "hist": self.hist.tolist(), "zeros": self.zeros}

    @classmethod
    def from_dict(cls, d: dict) -> TensorStats:
        return cls(d["min"], d["max"], d["bound"], np.asarray(d["hist"], dtype=np.int64), d.get("zeros", 0))


@dataclass
class StatsTable:
    """Statistics of every float tensor over ``images`` calibration images: the calibrator's plain output."""

    images: int
    tensors: dict[str, TensorStats] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"images": self.images, "tensors": {k: v.as_dict() for k, v in self.tensors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> StatsTable:
        return cls(d["images"], {k: TensorStats.from_dict(v) for k, v in d["tensors"].items()})

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.as_dict()))

    @classmethod
    def load(cls, path: str | Path) -> StatsTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph input and every float node output (shape inference supplies the types)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    names = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    for node in model.graph.node:
        names += [o for o in node.output if o and types.get(o) == onnx.TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def intermediate_session(model: onnx.ModelProto, names: list[str], threads: int = 0) -> ort.InferenceSession:
    """A session whose outputs are ``names`` (intermediate tensors); basic optimisation only, nothing fused away."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    existing = {o.name for o in aug.graph.output}
    graph_inputs = {i.name for i in aug.graph.input}
    for n in names:
        if n not in existing and n not in graph_inputs:
            aug.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(aug.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_intermediates(session: ort.InferenceSession, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Values of ``names`` for input ``x`` (the graph input itself included when asked for)."""
    inp = session.get_inputs()[0].name
    wanted = [n for n in names if n != inp]
    out = dict(zip(wanted, session.run(wanted, {inp: x})))
    if inp in names:
        out[inp] = x
    return out


def collect(model: onnx.ModelProto, images: np.ndarray, preprocess: Preprocess) -> StatsTable:
    """One calibration run: stream ``images`` through the float model and histogram every float tensor."""
    names = float_tensors(model)
    session = intermediate_session(model, names)
    table = StatsTable(len(images))
    for i in range(0, len(images), BATCH):
        values = run_intermediates(session, preprocess(images[i : i + BATCH]).numpy(), names)
        for name, v in values.items():
            if name in table.tensors:
                table.tensors[name].add(v)
            else:
                table.tensors[name] = TensorStats.first(v)
    return table


def _abs_hist(s: TensorStats) -> np.ndarray:
    """Histogram of |x| over [0, bound] (BINS/2 bins)."""
    half = BINS // 2
    return s.hist[half:] + s.hist[:half][::-1]


def entropy_threshold(s: TensorStats, quant_bins: int = 128, step: int = 8) -> float:
    """|x| threshold minimising KL(P || Q) between the clipped histogram and its 128-level quantisation."""
    hist = _abs_hist(s).astype(np.float64)
    n = len(hist)
    if hist.sum() == 0:
        return s.bound
    best, best_i = np.inf, n
    for i in range(quant_bins, n + 1, step):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        # Merge the i reference bins into quant_bins groups and spread each group's mass over its non-empty bins.
        group = np.arange(i) * quant_bins // i
        mass = np.bincount(group, weights=sliced, minlength=quant_bins)
        count = np.bincount(group, weights=nz, minlength=quant_bins)
        q = np.where(nz, mass[group] / np.maximum(count[group], 1), 0.0)
        pn, qn = p[nz] / p.sum(), q[nz] / max(q.sum(), 1e-12)
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return s.bound * best_i / n


def percentile_threshold(s: TensorStats, percentile: float = 99.99) -> float:
    hist = _abs_hist(s).copy()
    hist[0] += s.zeros
    cdf = np.cumsum(hist) / max(hist.sum(), 1)
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return s.bound * min(idx + 1, len(hist)) / len(hist)


def mse_threshold(s: TensorStats, levels: int = 256) -> float:
    """|x| threshold t minimising the expected squared error of 8-bit quantization over the histogram.

    With range [lo, hi] = [max(min, -t), min(max, t)] and step Δ = (hi - lo) / (levels - 1), a value inside the
    range costs Δ²/12 (uniform rounding noise), one outside costs its squared distance to the range end, and exact
    zeros cost nothing (every scheme represents 0 exactly). Candidates are the histogram's bin edges; each one's
    error comes from prefix sums, so the whole scan is linear in the number of bins. The step is the asymmetric
    grid's; a symmetric scheme spans [-t, t] and so has a larger step on a one-signed tensor: the same threshold is
    used for every scheme, an approximation that favours a slightly wider range there.
    """
    hist = s.hist.astype(np.float64)
    total = hist.sum() + s.zeros
    if hist.sum() == 0:
        return s.bound
    width = 2 * s.bound / BINS
    centers = -s.bound + width * (np.arange(BINS) + 0.5)
    half = BINS // 2
    t = s.bound * np.arange(1, half + 1) / half  # candidate thresholds: the positive bin edges
    lo, hi = np.maximum(s.min, -t), np.minimum(s.max, t)
    # Mass and moments of the bins whose centre lies above hi (suffix sums) and below lo (prefix sums).
    def moments(h):
        return np.concatenate([[0.0], np.cumsum(h)]), np.concatenate([[0.0], np.cumsum(h * centers)]), \
            np.concatenate([[0.0], np.cumsum(h * centers**2)])
    n, m1, m2 = moments(hist)
    above = np.searchsorted(centers, hi, side="right")  # first bin with centre > hi
    below = np.searchsorted(centers, lo, side="left")  # bins [0, below) have centre < lo
    n_hi, s1_hi, s2_hi = n[-1] - n[above], m1[-1] - m1[above], m2[-1] - m2[above]
    n_lo, s1_lo, s2_lo = n[below], m1[below], m2[below]
    clip = (s2_hi - 2 * hi * s1_hi + hi**2 * n_hi) + (s2_lo - 2 * lo * s1_lo + lo**2 * n_lo)
    step = (hi - lo) / (levels - 1)
    rounding = (hist.sum() - n_hi - n_lo) * step**2 / 12
    mse = (clip + rounding) / total
    return float(t[int(np.argmin(mse))])


_THRESHOLDS = {Clipping.ENTROPY: entropy_threshold, Clipping.PERCENTILE: percentile_threshold,
               Clipping.MSE: mse_threshold}


def tensor_range(s: TensorStats, clipping: str) -> tuple[float, float]:
    """(low, high) for one tensor; clipping thresholds are on |x| and never widen the observed range. An unknown
    clipping is a ValueError (``Clipping(...)``), never a silent fallback."""
    clipping = Clipping(clipping)
    if clipping is Clipping.MAX:
        return s.min, s.max
    t = _THRESHOLDS[clipping](s)
    return max(s.min, -t), min(s.max, t)


class Calibrator:
    """Statistics per calibration size, collected at most once each; ranges per (size, clipping) memoised.

    ``runs`` counts calibration passes over images, so a search can be checked to calibrate once per size.
    """

    def __init__(self, model: onnx.ModelProto, split: Split, preprocess: Preprocess):
        self.model, self.split, self.preprocess = model, split, preprocess
        self.runs = 0
        self._tables: dict[int, StatsTable] = {}
        self._ranges: dict[tuple[int, str], dict[str, tuple[float, float]]] = {}

    def effective_size(self, nominal: int) -> int:
        return max(1, min(nominal, len(self.split)))

    def table(self, nominal: int) -> StatsTable:
        n = self.effective_size(nominal)
        if n not in self._tables:
            self.runs += 1
            self._tables[n] = collect(self.model, self.split.images[:n], self.preprocess)
        return self._tables[n]

    def ranges(self, nominal: int, clipping: str) -> dict[str, tuple[float, float]]:
        key = (self.effective_size(nominal), clipping)
        if key not in self._ranges:
            table = self.table(nominal)
            self._ranges[key] = {name: tensor_range(s, clipping) for name, s in table.tensors.items()}
        return self._ranges[key]
