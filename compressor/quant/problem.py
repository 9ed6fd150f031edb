"""One model's quantization problem: build the INT8 QDQ model of any configuration and score it on validation.

Everything expensive is done once and reused: the float graph is pre-processed once (and cross-layer equalized
once, when a configuration asks for it), statistics are collected once per (graph, calibration size)
(``Calibrator``), AdaRound and bias correction once per weight-relevant key (:meth:`QuantProblem.weight_key`),
layer sensitivity once per non-precision configuration, and each configuration is evaluated at most once
(``evaluations`` counts real evaluations).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx

from compressor.core.data import Preprocess, Split
from compressor.core.metrics import top1
from compressor.quant import weights
from compressor.quant.adaround import AdaRoundSettings
from compressor.quant.calibrate import Calibrator
from compressor.quant.equalize import Equalization, equalize
from compressor.quant.fallback import match_layers
from compressor.quant.qdq import prepare_float, quantize
from compressor.quant.sensitivity import layer_sensitivity, most_sensitive
from compressor.quant.space import QuantConfig, config_space
from compressor.runtime.export import ort_predict, ort_session


class QuantProblem:
    """Build and evaluate QDQ models of ``model`` (float ONNX) for ``target``.

    ``keep_float`` holds module-name or node-name patterns never quantized (matched on the prepared graph by
    :func:`compressor.quant.fallback.match_layers`); ``restrict`` narrows the space's knobs; ``adaround`` and
    ``weight_images`` set AdaRound's schedule and how many calibration images AdaRound and bias correction use.
    """

    def __init__(
        self, model: onnx.ModelProto, calibration: Split, validation: Split, preprocess: Preprocess,
        target: str = "ort-cpu", mixed_fraction: float = 0.1, sensitivity_images: int = 64,
        keep_float: tuple[str, ...] | list[str] = (), restrict: dict[str, tuple] | None = None,
        adaround: AdaRoundSettings | None = None, weight_images: int = 256, seed: int = 0,
        progress: bool = False,
    ):
        self.float_model = prepare_float(model)
        self.calibrator = Calibrator(self.float_model, calibration, preprocess)
        self._graphs: dict[bool, tuple[onnx.ModelProto, Calibrator]] = {False: (self.float_model, self.calibrator)}
        self.equalization: Equalization | None = None
        self.validation, self.preprocess, self.target = validation, preprocess, target
        self.keep_float = tuple(match_layers(self.float_model, keep_float))
        self.mixed_fraction, self.restrict = mixed_fraction, restrict
        self.adaround, self.seed, self.progress = adaround or AdaRoundSettings(), seed, progress
        self._sens_x = preprocess(calibration.images[:sensitivity_images]).numpy()
        self._weight_x = preprocess(calibration.images[:weight_images]).numpy()
        self._float_layers: dict[QuantConfig, list[str]] = {}
        self._sensitivity: dict[QuantConfig, dict[str, float]] = {}
        self._tables: dict[tuple, weights.WeightTable] = {}
        self.results: dict[QuantConfig, float] = {}
        self.agreement: dict[QuantConfig, float] = {}  # validation top-1 agreement with the float model, percent
        self._float_predictions = None
        self._extra: dict[tuple[QuantConfig, tuple[str, ...]], float] = {}
        self.evaluations = 0

    def space(self) -> list[QuantConfig]:
        return config_space(self.target, len(self.calibrator.split), self.restrict)

    def graph(self, cle: bool) -> tuple[onnx.ModelProto, Calibrator]:
        """The float graph (equalized when ``cle``) and its calibrator."""
        if cle not in self._graphs:
            model, self.equalization = equalize(self.float_model)
            self._graphs[cle] = (model, Calibrator(model, self.calibrator.split, self.calibrator.preprocess))
        return self._graphs[cle]

    @property
    def calibration_runs(self) -> int:
        return sum(cal.runs for _, cal in self._graphs.values())

    def weight_key(self, config: QuantConfig) -> tuple:
        return weight_key(config, self.target)

    def weight_table(self, config: QuantConfig) -> weights.WeightTable | None:
        """AdaRound / bias correction results for ``config``'s weight key, computed once with every layer but
        ``keep_float`` quantized (so any later precision choice finds its layers in the table)."""
        if not (config.adaround or config.bias_correction):
            return None
        key = self.weight_key(config)
        if key not in self._tables:
            model, calibrator = self.graph(config.cle)
            base = dataclasses.replace(config, precision="int8")
            qdq = quantize(model, calibrator.ranges(config.calibration, config.clipping), base, self.target,
                           self.keep_float)
            self._tables[key] = weights.optimize(model, qdq, self._weight_x, self.adaround if config.adaround else None,
                                                 config.bias_correction, self.seed, self.progress)
        return self._tables[key]

    def weight_summaries(self) -> dict[str, dict]:
        """Per weight key computed: layers, seconds, and how many layers AdaRound reconstructed better."""
        return {key_name(k): t.summary() for k, t in self._tables.items()}

    def _quantize(self, config: QuantConfig, exclude: tuple[str, ...]) -> onnx.ModelProto:
        model, calibrator = self.graph(config.cle)
        qdq = quantize(model, calibrator.ranges(config.calibration, config.clipping), config, self.target, exclude)
        table = self.weight_table(config)
        return qdq if table is None else weights.apply(qdq, table)

    def sensitivity(self, config: QuantConfig) -> dict[str, float]:
        """SQNR lost per quantized layer in the all-int8 model of ``config`` (``keep_float`` layers excluded)."""
        base = dataclasses.replace(config, precision="int8")
        if base not in self._sensitivity:
            model, _ = self.graph(config.cle)
            self._sensitivity[base] = layer_sensitivity(model, self._quantize(base, self.keep_float), self._sens_x)
        return self._sensitivity[base]

    def float_layers(self, config: QuantConfig) -> list[str]:
        """Layers kept in float for ``config``: ``keep_float`` plus, for mixed, the most sensitive others."""
        if config.precision == "int8":
            return list(self.keep_float)
        base = dataclasses.replace(config, precision="int8")
        if base not in self._float_layers:
            self._float_layers[base] = most_sensitive(self.sensitivity(base), self.mixed_fraction)
        return [*self.keep_float, *self._float_layers[base]]

    def build(self, config: QuantConfig, extra_float: tuple[str, ...] = ()) -> onnx.ModelProto:
        """The QDQ model of ``config``; ``extra_float`` names more layers to keep in float (the accuracy goal)."""
        exclude = tuple(dict.fromkeys([*self.float_layers(config), *extra_float]))
        return self._quantize(config, exclude)

    def evaluate(self, config: QuantConfig, extra_float: tuple[str, ...] = ()) -> float:
        """Validation top-1 (percent) of the INT8 model, run in ONNX Runtime; cached per configuration (and per
        set of extra float layers)."""
        if extra_float:
            key = (config, tuple(extra_float))
            if key not in self._extra:
                self.evaluations += 1
                self._extra[key] = top1_onnx(self.build(config, extra_float), self.validation, self.preprocess)
            return self._extra[key]
        if config not in self.results:
            self.evaluations += 1
            if self._float_predictions is None:
                self._float_predictions = _predict(self.float_model, self.validation, self.preprocess)
            pred = _predict(self.build(config), self.validation, self.preprocess)
            self.results[config] = float((pred == self.validation.labels).mean() * 100)
            self.agreement[config] = float((pred == self._float_predictions).mean() * 100)
        return self.results[config]


def _predict(model: onnx.ModelProto, split: Split, preprocess: Preprocess) -> np.ndarray:
    return ort_predict(ort_session(model), split, preprocess, 250).argmax(1)


def key_name(key: tuple) -> str:
    return "-".join(map(str, key))


def weight_key(config: QuantConfig, target: str = "ort-cpu") -> tuple:
    """What AdaRound and bias correction depend on: the graph, the weight grid (granularity, power-of-two scales)
    and which of the two run. Activation settings do not enter: both work on float activations."""
    tensorrt = target == "tensorrt"
    granularity = "per_channel" if tensorrt else config.granularity
    return (config.cle, granularity, config.scheme == "power_of_two" and not tensorrt, config.adaround,
            config.bias_correction)


def top1_onnx(model: onnx.ModelProto | str, split: Split, preprocess: Preprocess, batch: int = 250) -> float:
    return top1(ort_predict(ort_session(model), split, preprocess, batch), split.labels)

