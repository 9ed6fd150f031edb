"""The ``prune`` pass: explanation-based structured pruning (Yeom et al., *Pruning by Explaining*)."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from compressor.core.config import validate
from compressor.passes.base import Context, PassResult, register_pass
from compressor.pruning.prune import PruneConfig, Pruner


@register_pass
class Prune:
    """Remove whole conv filters ranked by LRP relevance (or a baseline criterion), respecting channel coupling;
    the algorithm is :class:`compressor.pruning.prune.Pruner`."""

    name: ClassVar[str] = "prune"
    Config: ClassVar[type] = PruneConfig
    changes_network: ClassVar[bool] = True
    produces_artifact: ClassVar[bool] = False

    def __init__(self, config: PruneConfig | None = None) -> None:
        self.config = validate(config or PruneConfig(), "prune")

    def run(self, model: nn.Module, ctx: Context) -> PassResult:
        pruned, record = Pruner(self.config).run(model, ctx)
        return PassResult(pruned, metrics=record)
