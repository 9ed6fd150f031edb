"""Layers kept in float: the user's ignore list and the accuracy-goal loop.

``keep_float`` takes module-name patterns (``fnmatch``: ``layer3.*``, ``*.conv2``, ``linear``); the ONNX exporter
names each node after the module that produced it (``/layer1/layer1.0/conv1/Conv`` comes from module
``layer1.0.conv1``), which is how a pattern finds its nodes. A pattern may also match ONNX node names directly.

The accuracy-goal loop follows the peers' accuracy-aware PTQ (NNCF's ``quantize_with_accuracy_control``, Intel
Neural Compressor's fallback tuning): when the best configuration misses the validation goal, quantized layers go
back to float one at a time, most sensitive first (SQNR lost per layer, :mod:`compressor.quant.sensitivity`),
each step measured on the validation split, until the goal holds or the layer budget is spent.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx
from tqdm import tqdm

from compressor.errors import CompressorError
from compressor.quant.space import QuantConfig


def module_name(node_name: str) -> str:
    """The torch module a node came from, from the TorchScript exporter's scope path; the node name itself when it
    has none. Nested scopes repeat the parent's prefix (``/layer1/layer1.0/conv1/Conv``) or add one level."""
    if not node_name.startswith("/"):
        return node_name
    name = ""
    for part in node_name.strip("/").split("/")[:-1]:
        name = part if not name or part.startswith(name + ".") else f"{name}.{part}"
    return name


def match_layers(model: onnx.ModelProto, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the nodes whose module name or node name matches any pattern. A pattern that matches nothing is a
    user mistake and raises, naming a few real module names."""
    nodes = [n.name for n in model.graph.node if n.name]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in nodes if fnmatch.fnmatchcase(module_name(n), pattern) or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            examples = ", ".join(list(dict.fromkeys(module_name(n) for n in nodes if module_name(n)))[:4])
            raise CompressorError(f"quantize.keep_float: {pattern!r} matches no layer; modules are named like "
                                  f"{examples}")
        out += [n for n in hits if n not in out]
    return out


@dataclass
class Fallback:
    """What the accuracy-goal loop did: the goal, the layers sent back to float in order, the validation top-1
    after each step, and whether the goal now holds."""

    goal: float
    start: float
    nodes: list[str] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    met: bool = False

    @property
    def val_top1(self) -> float:
        return self.steps[-1] if self.steps else self.start

    def as_dict(self) -> dict:
        return {"goal_val_top1": round(self.goal, 3), "start_val_top1": self.start, "met": self.met,
                "layers": [module_name(n) for n in self.nodes], "nodes": self.nodes, "val_top1_per_step": self.steps}


def accuracy_fallback(problem, config: QuantConfig, goal: float, max_layers: int,  # noqa: ANN001
                      progress: bool = False) -> Fallback:
    """Send the most sensitive quantized layers of ``config`` back to float until validation top-1 ≥ ``goal``."""
    result = Fallback(goal, problem.evaluate(config))
    result.met = result.start >= goal
    already = set(problem.float_layers(config))
    ranked = [n for n, _ in sorted(problem.sensitivity(config).items(), key=lambda kv: -kv[1]) if n not in already]
    bar = tqdm(total=min(max_layers, len(ranked)), desc="accuracy goal", unit="layer", disable=not progress,
               leave=False)
    for node in ranked[:max_layers]:
        if result.met:
            break
        result.nodes.append(node)
        result.steps.append(problem.evaluate(config, tuple(result.nodes)))
        result.met = result.val_top1 >= goal
        bar.update()
    bar.close()
    return result
