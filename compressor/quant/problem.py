"""One model's quantization problem: build the INT8 QDQ model of any configuration and score it on validation
in the runtime of its target (ONNX Runtime for ort-cpu and tensorrt, OpenVINO for openvino-cpu).

Everything expensive is done once and reused: the float graph is pre-processed once, statistics are collected
once per calibration size (``Calibrator``), layer sensitivity once per non-precision configuration, and each
configuration is evaluated at most once (``evaluations`` counts real evaluations). ``evaluate_many`` evaluates a
search round's configurations as independent tasks of an executor (:mod:`compressor.core.executors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx

from compressor.core.data import Preprocess, Split
from compressor.core.executors import task_threads
from compressor.core.metrics import top1
from compressor.quant.calibrate import Calibrator
from compressor.quant.qdq import prepare_float, quantize
from compressor.quant.sensitivity import layer_sensitivity, most_sensitive
from compressor.quant.space import QuantConfig, config_space
from compressor.runtime.export import ort_predict, ort_session

if TYPE_CHECKING:
    from compressor.core.executors import Executor


class QuantProblem:
    """Build and evaluate QDQ models of ``model`` (float ONNX) for ``target``."""

    def __init__(
        self, model: onnx.ModelProto, calibration: Split, validation: Split, preprocess: Preprocess,
        target: str = "ort-cpu", mixed_fraction: float = 0.1, sensitivity_images: int = 64,
        precision: str = "f32",
    ):
        self.float_model = prepare_float(model)
        self.calibrator = Calibrator(self.float_model, calibration, preprocess)
        self.validation, self.preprocess, self.target = validation, preprocess, target
        self.precision = precision  # OpenVINO's precision hint for the float parts (openvino-cpu only)
        self.mixed_fraction = mixed_fraction
        self._sens_x = preprocess(calibration.images[:sensitivity_images]).numpy()
        self._float_layers: dict[QuantConfig, list[str]] = {}
        self.results: dict[QuantConfig, float] = {}
        self.evaluations = 0

    def space(self) -> list[QuantConfig]:
        return config_space(self.target, len(self.calibrator.split))

    def float_layers(self, config: QuantConfig) -> list[str]:
        """Layers kept in float for ``config``: none for all-int8, the most sensitive ones for mixed."""
        if config.precision == "int8":
            return []
        base = dataclasses.replace(config, precision="int8")
        if base not in self._float_layers:
            ranges = self.calibrator.ranges(config.calibration, config.clipping)
            qdq = quantize(self.float_model, ranges, base, self.target)
            sens = layer_sensitivity(self.float_model, qdq, self._sens_x)
            self._float_layers[base] = most_sensitive(sens, self.mixed_fraction)
        return self._float_layers[base]

    def build(self, config: QuantConfig) -> onnx.ModelProto:
        ranges = self.calibrator.ranges(config.calibration, config.clipping)
        return quantize(self.float_model, ranges, config, self.target, self.float_layers(config))

    def evaluate(self, config: QuantConfig) -> float:
        """Validation top-1 (percent) of the INT8 model, run in the target's runtime; cached per configuration."""
        if config not in self.results:
            self.evaluations += 1
            self.results[config] = top1_onnx(self.build(config), self.validation, self.preprocess, target=self.target,
                                             precision=self.precision)
        return self.results[config]

    def evaluate_many(self, configs: Sequence[QuantConfig], executor: Executor) -> list[float]:
        """``evaluate`` for a round of configurations, the new ones run as tasks of ``executor``.

        Statistics are collected here in the driver first, so every task (wherever it runs) derives its ranges
        from the same tables; the problem is then handed to the workers once for the round.
        """
        todo = list(dict.fromkeys(c for c in configs if c not in self.results))
        if todo:
            for config in todo:
                self.calibrator.table(config.calibration)
            shared = executor.put(self)
            names = [f"quantize candidate {c.key()}" for c in todo]
            for config, acc in zip(todo, executor.map(_evaluate_task, todo, shared, names)):
                self.results[config] = acc
            self.evaluations += len(todo)
        return [self.results[c] for c in configs]


def _evaluate_task(problem: QuantProblem, config: QuantConfig) -> float:
    """The executor task: validation top-1 of one configuration, with the task's thread budget."""
    return top1_onnx(problem.build(config), problem.validation, problem.preprocess, target=problem.target,
                     precision=problem.precision, threads=task_threads())


def top1_onnx(model: onnx.ModelProto | str, split: Split, preprocess: Preprocess, batch: int = 250,
              target: str = "ort-cpu", precision: str = "f32", threads: int = 0) -> float:
    """Top-1 (percent) of an ONNX model on ``split``, run by OpenVINO (with ``precision``) for the openvino-cpu
    target and by ONNX Runtime otherwise (a TensorRT engine is built elsewhere, on a GPU). ``threads``: 0 lets the
    runtime choose."""
    if target == "openvino-cpu":
        from compressor.runtime import openvino

        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        return top1(openvino.predict(src, split.images, precision, threads, batch=batch, preprocess=preprocess),
                    split.labels)
    return top1(ort_predict(ort_session(model, threads), split, preprocess, batch), split.labels)
