"""The ``fold_bn`` pass: Deploy-mode BatchNorm folding (You et al., ICLR 2024) as a pipeline stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from compressor.graph.fusion import fold_batchnorm_with_plan
from compressor.passes.base import Context, PassResult, register_pass


@register_pass
class FoldBatchNorm:
    """Fold every BatchNorm that follows a Conv/ConvTranspose/Linear into its weights; the rest stay.

    The result computes what the eval-mode model computes, and its ONNX export has no BatchNormalization
    node for the folded pairs. ``metrics`` lists the folded pair count and each BN left alone with the reason.
    """

    name: ClassVar[str] = "fold_bn"
    changes_network: ClassVar[bool] = True
    produces_artifact: ClassVar[bool] = False

    @dataclass
    class Config:
        """Deploy folding has no parameters: every pair that can be folded exactly is folded."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()

    def run(self, model: nn.Module, ctx: Context) -> PassResult:
        plan = fold_batchnorm_with_plan(model, getattr(ctx, "input_shape", None))
        return PassResult(model, metrics={"folded": len(plan.pairs), "left_unfolded": plan.describe_unfolded()})
