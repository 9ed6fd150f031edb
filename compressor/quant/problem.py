"""One model's quantization problem: build the INT8 QDQ model of any configuration and score it on validation
in the runtime of its target (ONNX Runtime for ort-cpu and tensorrt, OpenVINO for openvino-cpu).

Everything expensive is done once and reused: the float graph is pre-processed once (and cross-layer equalized
once, when a configuration asks for it), statistics are collected once per (graph, calibration size)
(``Calibrator``), AdaRound and bias correction once per weight-relevant key (:meth:`QuantProblem.weight_key`),
layer sensitivity once per non-precision configuration, and each configuration is evaluated at most once
(``evaluations`` counts real evaluations). ``evaluate_many`` evaluates a search round's configurations as
independent tasks of an executor (:mod:`compressor.core.executors`), after doing that shared work in the driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

from compressor.core.data import Preprocess, Split
from compressor.core.executors import task_threads
from compressor.core.metrics import top1
from compressor.quant import weights
from compressor.quant.adaround import AdaRoundSettings
from compressor.quant.calibrate import Calibrator
from compressor.quant.equalize import Equalization, equalize
from compressor.quant.fallback import match_layers
from compressor.quant.qdq import prepare_float, quantize, weight_qmax
from compressor.quant.sensitivity import layer_sensitivity, most_sensitive
from compressor.quant.space import QuantConfig, config_space
from compressor.runtime.export import ort_predict, ort_session

if TYPE_CHECKING:
    from compressor.core.executors import Executor


class QuantProblem:
    """Build and evaluate QDQ models of ``model`` (float ONNX) for ``target``.

    ``keep_float`` holds module-name or node-name patterns never quantized (matched on the prepared graph by
    :func:`compressor.quant.fallback.match_layers`); ``restrict`` narrows the space's knobs; ``adaround`` and
    ``weight_images`` set AdaRound's schedule and how many calibration images AdaRound and bias correction use.
    ``weight_bits`` below 8 puts the weights on a narrower grid stored in int8
    (:func:`compressor.quant.qdq.narrow_weights`): no faster, but a harder space for the search benchmark.
    """

    def __init__(
        self, model: onnx.ModelProto, calibration: Split, validation: Split, preprocess: Preprocess,
        target: str = "ort-cpu", mixed_fraction: float = 0.1, sensitivity_images: int = 64,
        keep_float: tuple[str, ...] | list[str] = (), restrict: dict[str, tuple] | None = None,
        adaround: AdaRoundSettings | None = None, weight_images: int = 256, seed: int = 0,
        progress: bool = False, precision: str = "f32", weight_bits: int = 8,
    ):
        self.weight_bits, self.weight_qmax = weight_bits, weight_qmax(weight_bits)
        self.float_model = prepare_float(model)
        self.calibrator = Calibrator(self.float_model, calibration, preprocess)
        self._graphs: dict[bool, tuple[onnx.ModelProto, Calibrator]] = {False: (self.float_model, self.calibrator)}
        self.equalization: Equalization | None = None
        self.validation, self.preprocess, self.target = validation, preprocess, target
        self.precision = precision  # OpenVINO's precision hint for the float parts (openvino-cpu only)
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
                           self.keep_float, self.weight_bits)
            self._tables[key] = weights.optimize(model, qdq, self._weight_x, self.adaround if config.adaround else None,
                                                 config.bias_correction, self.seed, self.progress,
                                                 qmax=self.weight_qmax)
        return self._tables[key]

    def weight_summaries(self) -> dict[str, dict]:
        """Per weight key computed: layers, seconds, and how many layers AdaRound reconstructed better."""
        return {key_name(k): t.summary() for k, t in self._tables.items()}

    def _quantize(self, config: QuantConfig, exclude: tuple[str, ...]) -> onnx.ModelProto:
        model, calibrator = self.graph(config.cle)
        qdq = quantize(model, calibrator.ranges(config.calibration, config.clipping), config, self.target, exclude,
                       self.weight_bits)
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

    def predict(self, model: onnx.ModelProto, threads: int = 0) -> np.ndarray:
        """Validation-split class predictions of ``model`` in the target's runtime."""
        return predict_labels(model, self.validation, self.preprocess, self.target, self.precision, threads)

    def evaluate(self, config: QuantConfig, extra_float: tuple[str, ...] = ()) -> float:
        """Validation top-1 (percent) of the INT8 model, run in the target's runtime; cached per configuration (and
        per set of extra float layers)."""
        if extra_float:
            key = (config, tuple(extra_float))
            if key not in self._extra:
                self.evaluations += 1
                pred = self.predict(self.build(config, extra_float))
                self._extra[key] = float((pred == self.validation.labels).mean() * 100)
            return self._extra[key]
        if config not in self.results:
            self._record(config, self.predict(self.build(config)))
        return self.results[config]

    def evaluate_many(self, configs: Sequence[QuantConfig], executor: Executor) -> list[float]:
        """``evaluate`` for a round of configurations, the new ones run as tasks of ``executor``.

        Statistics are collected here in the driver first, so every task (wherever it runs) derives its ranges
        from the same tables; the problem is then handed to the workers once for the round.
        """
        todo = list(dict.fromkeys(c for c in configs if c not in self.results))
        if todo:
            for config in todo:  # the shared work, so that no worker repeats it and every one reads the same tables
                self.graph(config.cle)[1].table(config.calibration)
                self.weight_table(config)
                self.float_layers(config)
            self.float_predictions()
            shared = executor.put(self)
            names = [f"quantize candidate {c.key()}" for c in todo]
            for config, pred in zip(todo, executor.map(_evaluate_task, todo, shared, names)):
                self._record(config, pred)
        return [self.results[c] for c in configs]

    def float_predictions(self) -> np.ndarray:
        if self._float_predictions is None:
            self._float_predictions = self.predict(self.float_model)
        return self._float_predictions

    def _record(self, config: QuantConfig, pred: np.ndarray) -> None:
        self.evaluations += 1
        self.results[config] = float((pred == self.validation.labels).mean() * 100)
        self.agreement[config] = float((pred == self.float_predictions()).mean() * 100)


def _evaluate_task(problem: QuantProblem, config: QuantConfig) -> np.ndarray:
    """The executor task: validation predictions of one configuration, with the task's thread budget."""
    return problem.predict(problem.build(config), task_threads())


def top1_onnx(model: onnx.ModelProto | str, split: Split, preprocess: Preprocess, batch: int = 250,
              target: str = "ort-cpu", precision: str = "f32", threads: int = 0) -> float:
    """Top-1 (percent) of an ONNX model on ``split`` in the runtime of ``target``."""
    return top1(onnx_logits(model, split, preprocess, batch, target=target, precision=precision, threads=threads),
                split.labels)


def onnx_logits(model: onnx.ModelProto | str, split: Split, preprocess: Preprocess, batch: int = 250,
                target: str = "ort-cpu", precision: str = "f32", threads: int = 0) -> np.ndarray:
    """Logits of an ONNX model on ``split``, run by OpenVINO (with ``precision``) for the openvino-cpu target and by
    ONNX Runtime otherwise (a TensorRT engine is built elsewhere, on a GPU). ``threads``: 0 lets the runtime
    choose."""
    if target == "openvino-cpu":
        from compressor.runtime import openvino

        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        return openvino.predict(src, split.images, precision, threads, batch=batch, preprocess=preprocess)
    return ort_predict(ort_session(model, threads), split, preprocess, batch)


def predict_labels(model: onnx.ModelProto | str, split: Split, preprocess: Preprocess, target: str = "ort-cpu",
                   precision: str = "f32", threads: int = 0) -> np.ndarray:
    return onnx_logits(model, split, preprocess, 250, target=target, precision=precision, threads=threads).argmax(1)


def key_name(key: tuple) -> str:
    return "-".join(map(str, key))


def weight_key(config: QuantConfig, target: str = "ort-cpu") -> tuple:
    """What AdaRound and bias correction depend on: the graph, the weight grid (granularity, power-of-two scales)
    and which of the two run. Activation settings do not enter: both work on float activations."""
    tensorrt = target == "tensorrt"
    granularity = "per_channel" if tensorrt else config.granularity
    return (config.cle, granularity, config.scheme == "power_of_two" and not tensorrt, config.adaround,
            config.bias_correction)

