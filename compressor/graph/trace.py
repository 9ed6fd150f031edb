"""The one torch.fx tracer every analysis uses (channel coupling, BatchNorm folding, LRP, INT8 lowering).

``Add`` and ``ChannelPadShortcut`` stay leaf nodes, so residual joins and option-A shortcuts appear as single
nodes that rules can recognise instead of the arithmetic inside them.
"""

from __future__ import annotations

from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.modules import Add, ChannelPadShortcut


class LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (Add, ChannelPadShortcut)) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, purpose: str = "analyse") -> fx.GraphModule:
    """Trace ``model``; an untraceable forward is a CompressorError saying what could not be done (``purpose``)."""
    try:
        graph = LeafTracer().trace(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompressorError(
            f"cannot {purpose} {type(model).__name__}: torch.fx could not trace its forward "
            f"({type(exc).__name__}: {first}); make the forward traceable (no control flow on tensor values)"
        ) from exc
    return fx.GraphModule(model, graph)
