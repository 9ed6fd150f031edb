"""The ``quantize`` pass: Quantune-style searched post-training INT8 (Lee et al., arXiv 2202.05048)."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from compressor.core.config import validate
from compressor.passes.base import Artifact, Context, PassResult, register_pass
from compressor.quant.quantune import QuantizeConfig, Quantune
from compressor.runtime.latency import measure_isolated


@register_pass
class Quantize:
    """Searched INT8 PTQ for ONNX Runtime CPU (``ort-cpu``), OpenVINO CPU (``openvino-cpu``) or TensorRT-compliant
    QDQ (``tensorrt``); the model passes through unchanged and the INT8 QDQ ONNX is the stage's artifact
    (:class:`compressor.quant.quantune.Quantune`)."""

    name: ClassVar[str] = "quantize"
    Config: ClassVar[type] = QuantizeConfig
    changes_network: ClassVar[bool] = False
    produces_artifact: ClassVar[bool] = True
    # Each model is timed in its own process; tests replace this to inject latencies. Called as
    # measure_isolated is: (models, images, batch, threads, progress=..., [rounds=...,] [backend/precision])
    # -> {name: Latency}; ``rounds`` is passed when a close pair is timed again.
    measure_latency = staticmethod(measure_isolated)

    def __init__(self, config: QuantizeConfig | None = None) -> None:
        self.config = validate(config or QuantizeConfig(), "quantize")

    def run(self, model: nn.Module, ctx: Context) -> PassResult:
        out = Quantune(self.config, self.measure_latency).run(model, ctx)
        artifact = Artifact(out.int8_path, "int8", self.config.target, deploy=out.deploy)
        return PassResult(model, metrics=out.record, plots={"search": out.plot}, artifact=artifact)
