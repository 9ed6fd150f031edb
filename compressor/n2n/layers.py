"""N2N's plain data: a ``LayerTable`` describes a model's layers as policy states, a ``Candidate`` names one
student (units removed, width scales), and :func:`build_student` makes it from the parent (Ashok et al., ICLR 2018)."""

from __future__ import annotations

import copy
import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compressor.errors import CompressorError
from compressor.graph.modules import Add
from compressor.graph.trace import trace

LAYER_TYPES = ("conv", "dwconv", "linear")
STATE_DIM = len(LAYER_TYPES) + 6
PAPER_SCALES = (0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The reference code's scale set; the repeated 0.5 makes a fresh policy sample it with probability 5/11."""
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Tanh)


# ----------------------------------------------------------------------------------------------- layer states


@dataclass(frozen=True)
class Layer:
    """One policy time step: a Conv2d or Linear with the paper's state attributes.

    ``unit`` is the removal unit the layer belongs to (None: the layer is fixed in stage 1); ``decides`` marks
    the unit's first layer, whose keep/remove action removes the whole unit.
    """

    name: str
    type: str
    kernel: int
    stride: int
    out_channels: int
    padding: int
    skip_start: bool = False
    skip_end: bool = False
    unit: str | None = None
    decides: bool = False

    def state(self) -> list[float]:
        """[type one-hot, kernel, stride, #outputs, padding, skip-start, skip-end], each scaled to about [0, 1].

        The scaling uses fixed constants (not per-model maxima) so a policy trained on one teacher reads another
        teacher's layers on the same scale (policy transfer).
        """
        onehot = [float(self.type == t) for t in LAYER_TYPES]
        return onehot + [
            self.kernel / 7.0, self.stride / 2.0, math.log2(self.out_channels + 1) / 10.0, self.padding / 3.0,
            float(self.skip_start), float(self.skip_end),
        ]


@dataclass
class LayerTable:
    """The layers of a model in forward order, plus the module paths each removal unit replaces and, for
    residual blocks, the shortcut module that replaces the block (None: an identity)."""

    layers: list[Layer]
    units: dict[str, tuple[str, ...]]
    skips: dict[str, str | None] = field(default_factory=dict)

    def states(self) -> torch.Tensor:
        return torch.tensor([layer.state() for layer in self.layers], dtype=torch.float32).reshape(-1, STATE_DIM)

    def decision_mask(self) -> torch.Tensor:
        return torch.tensor([layer.decides for layer in self.layers], dtype=torch.bool)

    def fixed_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.unit is None]


_ADDS = (operator.add, operator.iadd, torch.add, "add")
_ACTIVATION_CALLS = (F.relu, torch.relu, F.relu6, "relu")


def _calls(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Module call → the graph nodes it made (a module called twice has the calls ``path`` and ``path@1``)."""
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        for key in node.meta.get("nn_module_stack") or {}:
            calls.setdefault(key, []).append(node)
    return calls


def _is_add(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), Add)
    return node.op in ("call_function", "call_method") and node.target in _ADDS and len(node.args) == 2


def _is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ACTIVATIONS)
    return node.op in ("call_function", "call_method") and node.target in _ACTIVATION_CALLS


def residual_blocks(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, str | None]:
    """Residual blocks found in the traced graph: block path → its shortcut's module path (None: identity).

    A block is a module called once that reads one tensor x and returns s + r, or an activation of it, where
    r (the residual branch) is computed from x and s is x itself or the output of one child module reading
    only x (a projection or option-A shortcut). Removing the block (Ashok et al.: "replace it by its skip
    path") leaves s. Found from the graph, not from attribute names, so any user model qualifies; with
    ``input_shape`` the two summands must also have one shape (no broadcasting) and shape-dependent forwards
    can be traced.
    """
    gm = trace(model, "find the residual blocks of", input_shape)
    if input_shape is not None:
        ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    calls = _calls(gm)
    blocks: dict[str, str | None] = {}
    for key, nodes in calls.items():
        if "@" in key or f"{key}@1" in calls or not key:
            continue
        inside = set(nodes)
        reads = {a for n in nodes for a in n.all_input_nodes if a not in inside}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        if len(reads) != 1 or len(outputs) != 1:
            continue
        (x,), (y,) = reads, outputs
        join = y.all_input_nodes[0] if _is_activation(gm, y) and len(y.all_input_nodes) == 1 else y
        if join not in inside or not _is_add(gm, join) or len(join.all_input_nodes) != 2:
            continue
        shapes = {tuple(getattr(a.meta.get("tensor_meta"), "shape", ())) for a in join.all_input_nodes}
        if input_shape is not None and len(shapes) != 1:
            continue
        for s, r in (join.all_input_nodes, reversed(join.all_input_nodes)):
            if s is x and r is not x:
                blocks[key] = None
                break
            child = next((k for k in s.meta.get("nn_module_stack") or {} if k.startswith(key + ".")
                          and k.count(".") == key.count(".") + 1), None)
            if child is None or r is x or "@" in child or f"{child}@1" in calls:
                continue
            own = set(calls[child])
            if s in own and all(a is x or a in own for n in own for a in n.all_input_nodes) \
                    and all(u in own or u is join for n in own for u in n.users):
                blocks[key] = child
                break
    return blocks


def _shape_preserving_conv(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.in_channels != m.out_channels:
        return False
    same = tuple((k - 1) // 2 for k in m.kernel_size)
    odd = all(k % 2 == 1 for k in m.kernel_size)
    padded = m.padding == "same" or (odd and tuple(m.padding) == same)
    return padded and set(m.stride) == {1} and set(m.dilation) == {1}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _plain_units(model: nn.Module, blocks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Shape-preserving convs in a Sequential (outside residual blocks), with their following BN and activation."""
    units: dict[str, tuple[str, ...]] = {}
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or any(_within(name, b) for b in blocks):
            continue
        prefix = f"{name}." if name else ""
        children = list(seq.named_children())
        for i, (child_name, m) in enumerate(children):
            if not _shape_preserving_conv(m):
                continue
            paths, j = [child_name], i + 1
            if j < len(children) and isinstance(children[j][1], nn.BatchNorm2d) and children[j][1].num_features == m.out_channels:
                paths.append(children[j][0])
                j += 1
            if j < len(children) and isinstance(children[j][1], _ACTIVATIONS):
                paths.append(children[j][0])
            units[prefix + child_name] = tuple(prefix + p for p in paths)
    return units


def _conv_padding(m: nn.Conv2d) -> int:
    if m.padding == "same":
        return (m.kernel_size[0] - 1) // 2
    return 0 if m.padding == "valid" else int(m.padding[0])


def describe_layers(model: nn.Module, fixed: Sequence[str] = (), input_shape: tuple[int, ...] | None = None) -> LayerTable:
    """The model's Conv2d/Linear layers in registration (forward) order, with removal units found: residual
    blocks (:func:`residual_blocks`, from the traced graph) and shape-preserving convs in a Sequential.

    ``fixed`` names modules (or module prefixes) that must never be removed: a unit touching one is dropped.
    """
    def touches_fixed(path: str) -> bool:
        return any(_within(f, path) or _within(path, f) for f in fixed)

    found = residual_blocks(model, input_shape)
    blocks: list[str] = []
    for name, _ in model.named_modules():
        if name in found and not any(_within(name, b) for b in blocks):
            blocks.append(name)
    units = {b: (b,) for b in blocks}
    units.update(_plain_units(model, blocks))
    units = {u: paths for u, paths in units.items() if not any(touches_fixed(p) for p in paths)}

    layers: list[Layer] = []
    members: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            kind = "dwconv" if m.groups > 1 else "conv"
            attrs = (kind, m.kernel_size[0], m.stride[0], m.out_channels, _conv_padding(m))
        elif isinstance(m, nn.Linear):
            attrs = ("linear", 1, 1, m.out_features, 0)
        else:
            continue
        unit = next((u for u, paths in units.items() if any(_within(name, p) for p in paths)), None)
        if unit is not None:
            members.setdefault(unit, []).append(len(layers))
        layers.append(Layer(name, *attrs, unit=unit))
    for unit, idx in members.items():
        residual = unit in blocks
        for k, i in enumerate(idx):
            layers[i] = replace(layers[i], decides=k == 0, skip_start=residual and k == 0,
                                skip_end=residual and k == len(idx) - 1)
    return LayerTable(layers, {u: units[u] for u in members}, {b: found[b] for b in blocks if b in members})


def remove_units(model: nn.Module, table: LayerTable, remove: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with each named unit replaced by its skip path (or identities in a plain chain)."""
    child = copy.deepcopy(model)
    for unit in remove:
        if unit not in table.units:
            raise CompressorError(f"n2n: {unit} is not a removable unit of this model")
        for path in table.units[unit]:
            skip = table.skips.get(path)
            child.set_submodule(path, child.get_submodule(skip) if skip is not None else nn.Identity())
    return child


# -------------------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One student architecture relative to the parent: removed units and per-layer width scales (1.0 omitted)."""

    remove: tuple[str, ...] = ()
    scales: tuple[tuple[str, float], ...] = ()

    @staticmethod
    def make(remove: Sequence[str] = (), scales: dict[str, float] | None = None) -> Candidate:
        kept = tuple(sorted((n, float(s)) for n, s in (scales or {}).items() if float(s) != 1.0))
        return Candidate(tuple(sorted(remove)), kept)

    def key(self) -> str:
        return json.dumps({"remove": list(self.remove), "scales": [list(s) for s in self.scales]})

    def as_dict(self) -> dict[str, Any]:
        return {"remove": list(self.remove), "scales": {n: s for n, s in self.scales}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Candidate:
        return Candidate.make(d["remove"], d["scales"])


@dataclass
class Measurement:
    """What building, distilling and scoring one candidate produced."""

    valid: bool
    accuracy: float = 0.0
    params: int = 0
    macs: int = 0
    seconds: float = 0.0
    error: str = ""
    latency_ms: float = 0.0  # predicted on the target by the latency model (0 when no latency is asked for)


def shrink_layers(model: nn.Module, scales: dict[str, float], input_shape: tuple[int, ...],
                  fixed: Sequence[str] = ()) -> nn.Module:
    """Shrink ``model`` in place so each named layer keeps about ``scale`` of its output channels (at least one).

    The dependency graph owns the coupling: channels written by several convs (a residual stream, through
    additions and option-A shortcuts) form one "layer" of groups, which takes the mean scale of its source
    convs (missing names count as 1.0) and is left whole if any source is ``fixed``. Within a layer the groups
    with the lowest L1 filter norm go, so weights are inherited by importance, never by truncation.
    """
    from compressor.graph.dependency import DependencyGraph
    from compressor.pruning.criteria import L1Criterion, group_scores

    graph = DependencyGraph(model, input_shape)
    groups = graph.groups()
    scores = group_scores(groups, L1Criterion()(model))
    layers: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(groups):
        layers.setdefault(g.layer_key, []).append(i)
    drop: list[int] = []
    for key, idx in layers.items():
        if any(_within(n, f) for n in key for f in fixed):
            continue
        keep = max(1, round(len(idx) * float(np.mean([scales.get(n, 1.0) for n in key]))))
        drop += sorted(idx, key=lambda i: (scores[i], i))[: len(idx) - keep]
    if drop:
        graph.prune([groups[i] for i in drop])
    return model


def build_student(parent: nn.Module, table: LayerTable, candidate: Candidate, input_shape: tuple[int, ...],
                  fixed: Sequence[str] = ()) -> nn.Module:
    """Teacher weights inherited exactly (removal) or by importance-ranked channel selection (shrinkage)."""
    child = remove_units(parent, table, candidate.remove)
    if candidate.scales:
        shrink_layers(child, dict(candidate.scales), input_shape, fixed)
    return child.eval()
