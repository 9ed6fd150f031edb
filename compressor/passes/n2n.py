"""The ``n2n`` pass: RL-guided layer removal and shrinkage (Ashok et al., ICLR 2018) as a pipeline stage."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from compressor.n2n.search import N2NConfig, N2NSearch
from compressor.passes.base import Context, PassResult, register_pass


@register_pass
class N2NPass:
    """Search a smaller student of the incoming model with two REINFORCE stages, then fine-tune it.

    Stage 1 removes residual blocks (each replaced by its own shortcut) or shape-preserving convs of plain
    chains; stage 2 shrinks the remaining layers' widths, keeping channels by L1 importance. Students distil from
    ``ctx.teacher`` and are scored on the validation split. Search state, the trained policies and a reward plot
    go to ``<out>/n2n/``; a re-run continues an interrupted search. ``details`` holds the teacher reference,
    budget, per-iteration history and the chosen architecture.
    """

    name: ClassVar[str] = "n2n"
    Config: ClassVar[type] = N2NConfig

    def __init__(self, config: N2NConfig | None = None) -> None:
        self.config = config or N2NConfig()

    def run(self, model: nn.Module, ctx: Context) -> PassResult:
        result = N2NSearch(model, ctx, self.config, out_dir=ctx.out_dir / "n2n").run()
        details = dict(result.details)
        details["reward_plot"] = str(ctx.out_dir / "n2n" / details["files"]["reward_plot"])
        return PassResult(result.model, details)
