"""Searched post-training INT8 quantization (Quantune, Lee et al., arXiv 2202.05048) emitting ONNX QDQ models.

Stages joined by plain data: ``space`` (configurations and target restrictions) → ``calibrate`` (one statistics
table per calibration size, ranges derived per clipping) → ``qdq`` (QDQ emission for ``ort-cpu`` or ``tensorrt``)
→ ``problem`` (build + validate one configuration) → ``tuner`` (XGBoost / random / grid / GA search).
``qdq_rules.check_tensorrt`` checks TensorRT's QDQ requirements; ``latency`` measures INT8 against FP32.
"""

from compressor.quant.calibrate import Calibrator, StatsTable
from compressor.quant.latency import Latency, measure_interleaved, measure_isolated, speed_check
from compressor.quant.problem import QuantProblem
from compressor.quant.qdq import quantize
from compressor.quant.qdq_rules import check_tensorrt
from compressor.quant.space import QuantConfig, config_space
from compressor.quant.tuner import Budget, GeneticSearch, GridSearch, RandomSearch, XGBoostTuner, load_db, search

__all__ = [
    "Budget", "Calibrator", "GeneticSearch", "GridSearch", "Latency", "QuantConfig", "QuantProblem", "RandomSearch",
    "StatsTable", "XGBoostTuner", "check_tensorrt", "config_space", "load_db", "measure_interleaved",
    "measure_isolated", "quantize", "search", "speed_check",
]
