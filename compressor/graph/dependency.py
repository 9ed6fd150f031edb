"""Channel coupling: which output channels of which layers must be removed together, and their removal.

This module is the one owner of the structural-pruning invariant (the design follows the dependency-graph idea
of Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023): every other part of the project asks a
:class:`DependencyGraph` which channels are coupled instead of re-deriving it.

The model is traced with torch.fx (``Add`` and ``ChannelPadShortcut`` of :mod:`compressor.core.zoo` stay leaf
modules) and every channel of every traced tensor becomes a *slot* ``(node, channel)``. A union-find joins slots
that must disappear together:

* a Conv2d with ``groups == 1`` starts new channels (its output channels are *sources*) and consumes its input
  channels; a depthwise Conv2d (``groups == in == out``) passes channel c through and is pruned along;
* BatchNorm, element-wise activations with f(0) = 0, pooling, Identity and Dropout keep channels;
* an addition (``Add`` module, ``a + b``, ``torch.add``) unites the slots of its inputs and its output;
* ``ChannelPadShortcut`` maps input channel c to output channel c + left; its padding channels are always zero;
* ``torch.cat`` on dim 1 offsets channels; flattening (N, C, H, W) to (N, C·H·W) maps channel c to its H·W
  features; Linear consumes them.

Slots that reach the graph input or output, or pass through anything not listed, make their whole group
unprunable. Because removed channels are exactly zero in a masked model (conv filter, bias and BN affine
zeroed), :meth:`DependencyGraph.mask` and :meth:`DependencyGraph.prune` compute the same function.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compressor.errors import CompressorError
from compressor.graph.modules import Add, ChannelPadShortcut
from compressor.graph.trace import trace

Member = tuple[str, int]
"""(module path, channel index) of one channel of one module."""

# Modules (and functions) that keep channel c in place and map an all-zero channel to an all-zero channel.
_KEEP_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Tanh, nn.ELU,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_KEEP_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.silu, F.gelu, F.hardswish, torch.tanh, F.dropout,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_KEEP_METHODS = {"relu", "relu_", "contiguous", "clone", "tanh"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_FLATTEN_METHODS = {"flatten", "view", "reshape", "squeeze"}


@dataclass(frozen=True)
class Group:
    """Channels that can only be removed together (one slot class of the union-find).

    ``sources``: output channels of Conv2d (groups = 1) that create the channel; ``batchnorms`` and
    ``depthwise``: channels pruned along; ``consumers``: input channels of convs / input features of Linears that
    read it; ``pads``: output positions of ChannelPadShortcut padding in the group; ``residual``: the group
    passes through an addition or a padding shortcut (it is a residual-stream channel, not an inner one).
    """

    index: int
    sources: tuple[Member, ...]
    batchnorms: tuple[Member, ...]
    depthwise: tuple[Member, ...]
    consumers: tuple[Member, ...]
    pads: tuple[Member, ...]
    residual: bool

    @property
    def size(self) -> int:
        """Filters removed with this group (source conv output channels)."""
        return len(self.sources)

    @property
    def layer_key(self) -> tuple[str, ...]:
        """The source convs, sorted: groups sharing a key form one 'layer' for per-layer ranking."""
        return tuple(sorted({name for name, _ in self.sources}))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class DependencyGraph:
    """Coupled channel groups of ``model`` (traced on one ``input_shape`` input, e.g. (3, 32, 32)).

    ``groups()`` lists the prunable groups; ``prune(groups)`` removes them physically and ``mask(groups)``
    zeroes them. Both change the model in place; build a new graph after ``prune`` (channel indices shift).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.model = model
        self.input_shape = tuple(input_shape)
        gm = trace(model, "analyse the channels of", self.input_shape)
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(1, *self.input_shape))
        except Exception as exc:
            raise CompressorError(
                f"cannot run {type(model).__name__} on an input of shape {self.input_shape}: "
                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            ) from exc
        finally:
            for m, mode in modes.items():
                m.training = mode
        self._modules = dict(model.named_modules())
        self._uf = _UnionFind()
        self._base: dict[fx.Node, int] = {}
        self._width: dict[fx.Node, int] = {}
        self._blocked: set[int] = set()
        self._residual: set[int] = set()
        self._members: dict[str, list[tuple[int, Member]]] = defaultdict(list)
        self._stale = False
        calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self._shared = {t for t, c in calls.items() if c > 1 and _has_channel_state(self._modules[t])}
        for node in gm.graph.nodes:
            self._allocate(node)
        for node in gm.graph.nodes:
            self._visit(node)
        self._groups = self._collect()

    # --- building -------------------------------------------------------------------------------------------

    def _allocate(self, node: fx.Node) -> None:
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        if shape is not None and len(shape) >= 2:
            self._width[node] = int(shape[1])
            self._base[node] = self._uf.add(int(shape[1]))

    def _slot(self, node: fx.Node, c: int) -> int:
        return self._base[node] + c

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a in self._base else None)
        return found

    def _block(self, *nodes: fx.Node) -> None:
        for n in nodes:
            if n in self._base:
                self._blocked.update(range(self._base[n], self._base[n] + self._width[n]))

    def _unknown(self, node: fx.Node) -> None:
        self._block(node, *self._tensor_args(node))

    def _keep(self, src: fx.Node, dst: fx.Node) -> bool:
        """Channel c of ``src`` is channel c of ``dst``; False if widths differ."""
        if src not in self._base or dst not in self._base or self._width[src] != self._width[dst]:
            return False
        for c in range(self._width[dst]):
            self._uf.union(self._slot(src, c), self._slot(dst, c))
        return True

    def _record(self, kind: str, node: fx.Node, name: str, index: int | None = None) -> None:
        for c in range(self._width[node]):
            self._members[kind].append((self._slot(node, c), (name, c if index is None else index + c)))

    def _visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "output"):
            self._block(node, *self._tensor_args(node))
            return
        if node not in self._base:
            # Shape queries (x.size(0), x.shape, x.dim()) read no channel values.
            query = (node.op == "call_method" and node.target in ("size", "dim")) or node.target is getattr
            if self._tensor_args(node) and not query:
                self._unknown(node)
            return
        if node.op == "call_module":
            self._visit_module(node, self._modules[node.target])
        elif node.op == "call_function":
            self._visit_function(node)
        elif node.op == "call_method":
            self._visit_method(node)
        else:
            self._unknown(node)

    def _visit_module(self, node: fx.Node, m: nn.Module) -> None:
        args = self._tensor_args(node)
        name = node.target
        if name in self._shared:
            self._unknown(node)
        elif type(m) is nn.Conv2d and len(args) == 1:
            (x,) = args
            if m.groups == 1:
                self._record("consumers", x, name)
                self._record("sources", node, name)
            elif m.groups == m.in_channels == m.out_channels and self._keep(x, node):
                self._record("depthwise", node, name)
            else:
                self._unknown(node)
        elif type(m) in (nn.BatchNorm2d, nn.BatchNorm1d) and len(args) == 1 and self._keep(args[0], node):
            self._record("batchnorms", node, name)
        elif type(m) is nn.Linear and len(args) == 1 and len(args[0].meta["tensor_meta"].shape) == 2:
            self._record("consumers", args[0], name)
            self._block(node)
        elif isinstance(m, _KEEP_MODULES) and len(args) == 1 and self._keep(args[0], node):
            pass
        elif type(m) is nn.Flatten and len(args) == 1 and self._flatten(args[0], node):
            pass
        elif type(m) is Add and len(args) == len(node.args) == 2:
            self._join(node, args)
        elif type(m) is ChannelPadShortcut and len(args) == 1:
            self._pad(node, m, args[0])
        else:
            self._unknown(node)

    def _visit_function(self, node: fx.Node) -> None:
        args = self._tensor_args(node)
        fn = node.target
        if fn in _ADD_FUNCTIONS and len(args) == 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            self._join(node, args)
        elif fn in _KEEP_FUNCTIONS and len(args) == 1 and node.args[0] is args[0] and self._keep(args[0], node):
            pass
        elif fn is torch.flatten and len(args) == 1 and self._flatten(args[0], node):
            pass
        elif fn is torch.cat and _cat_dim(node) == 1 and all(a in self._base for a in node.args[0]):
            offset = 0
            for part in node.args[0]:
                for c in range(self._width[part]):
                    self._uf.union(self._slot(part, c), self._slot(node, offset + c))
                offset += self._width[part]
        else:
            self._unknown(node)

    def _visit_method(self, node: fx.Node) -> None:
        args = self._tensor_args(node)
        src = node.args[0] if node.args else None
        if len(args) != 1 or src is not args[0]:
            self._unknown(node)
        elif node.target in _KEEP_METHODS and self._keep(src, node):
            pass
        elif node.target in _FLATTEN_METHODS and self._flatten(src, node):
            pass
        elif node.target == "mean" and _spatial_mean(node) and self._keep(src, node):
            pass
        else:
            self._unknown(node)

    def _flatten(self, src: fx.Node, dst: fx.Node) -> bool:
        """(N, C, *S) → (N, C·|S|): channel c becomes features c·|S| … (c+1)·|S| − 1 (a VGG head); False otherwise."""
        s, d = src.meta["tensor_meta"].shape, dst.meta["tensor_meta"].shape
        per = int(torch.Size(s[2:]).numel()) if len(s) >= 2 else 0
        if len(d) != 2 or len(s) < 2 or d[1] != s[1] * per or src not in self._base or dst not in self._base:
            return False
        for c in range(s[1]):
            for k in range(per):
                self._uf.union(self._slot(src, c), self._slot(dst, c * per + k))
        return True

    def _join(self, node: fx.Node, args: list[fx.Node]) -> None:
        shapes = {tuple(a.meta["tensor_meta"].shape[1:]) for a in args}
        if len(shapes) != 1 or shapes != {tuple(node.meta["tensor_meta"].shape[1:])}:
            self._unknown(node)  # broadcasting mixes channels with something else
            return
        for a in args:
            self._keep(a, node)
        self._residual.update(range(self._base[node], self._base[node] + self._width[node]))

    def _pad(self, node: fx.Node, m: ChannelPadShortcut, x: fx.Node) -> None:
        if m.left + self._width[x] + m.right != self._width[node]:
            self._unknown(node)
            return
        for c in range(self._width[x]):
            self._uf.union(self._slot(x, c), self._slot(node, m.left + c))
        pads = [*range(m.left), *range(m.left + self._width[x], self._width[node])]
        for p in pads:
            self._members["pads"].append((self._slot(node, p), (node.target, p)))
        self._residual.update(range(self._base[node], self._base[node] + self._width[node]))

    def _collect(self) -> list[Group]:
        roots: dict[int, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
        for kind, items in self._members.items():
            for slot, member in items:
                roots[self._uf.find(slot)][kind].append(member)
        blocked = {self._uf.find(s) for s in self._blocked}
        residual = {self._uf.find(s) for s in self._residual}
        order = {name: i for i, name in enumerate(self._modules)}
        found = []
        for root, kinds in roots.items():
            if root in blocked or not kinds["sources"]:
                continue
            found.append((root, kinds))
        found.sort(key=lambda rk: min((order[n], c) for n, c in rk[1]["sources"]))
        return [
            Group(
                i, *(tuple(sorted(set(k[kind]), key=lambda m: (order[m[0]], m[1])))
                     for kind in ("sources", "batchnorms", "depthwise", "consumers", "pads")),
                residual=root in residual,
            )
            for i, (root, k) in enumerate(found)
        ]

    # --- queries and edits ----------------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        """Every prunable group, ordered by the first source conv (module order) and channel."""
        self._check_fresh()
        return list(self._groups)

    def _check_fresh(self) -> None:
        if self._stale:
            raise CompressorError("this DependencyGraph is stale: its model was pruned; build a new graph")

    @torch.no_grad()
    def mask(self, groups: Iterable[Group]) -> None:
        """Zero the groups' channels (conv filters and biases, BN affine, depthwise filters) in place."""
        self._check_fresh()
        for g in groups:
            for name, c in (*g.sources, *g.depthwise):
                conv = self._modules[name]
                conv.weight[c] = 0
                if conv.bias is not None:
                    conv.bias[c] = 0
            for name, c in g.batchnorms:
                bn = self._modules[name]
                if bn.weight is not None:
                    bn.weight[c] = 0
                    bn.bias[c] = 0
                else:  # no affine: the output can only be zeroed through the statistics
                    bn.running_mean[c] = 0
                    bn.running_var[c] = float("inf")

    @torch.no_grad()
    def prune(self, groups: Iterable[Group], model: nn.Module | None = None) -> nn.Module:
        """Remove the groups' channels physically, in place, and return the model.

        ``model`` defaults to the traced model; a structurally identical copy (``copy.deepcopy``) may be given
        instead, which is how callers try a candidate without touching the original. After pruning the traced
        model this graph is stale.
        """
        self._check_fresh()
        target = self.model if model is None else model
        removed: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        for g in groups:
            for kind in ("sources", "batchnorms", "depthwise", "consumers", "pads"):
                for name, c in getattr(g, kind):
                    removed[name][kind].add(c)
        modules = dict(target.named_modules())
        for name, kinds in removed.items():
            _shrink(name, modules[name], kinds)
        if model is None:
            self._stale = True
        return target


def _has_channel_state(m: nn.Module) -> bool:
    return isinstance(m, ChannelPadShortcut) or any(True for _ in m.parameters(recurse=False)) or any(
        True for _ in m.buffers(recurse=False)
    )




def _cat_dim(node: fx.Node) -> int | None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ndim = len(node.meta["tensor_meta"].shape)
    return dim % ndim if isinstance(dim, int) else None


def _spatial_mean(node: fx.Node) -> bool:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    ndim = len(node.args[0].meta["tensor_meta"].shape)
    return isinstance(dim, (tuple, list)) and ndim == 4 and {d % ndim for d in dim} == {2, 3}


def _keep_index(n: int, drop: set[int], name: str, what: str) -> torch.Tensor:
    keep = [i for i in range(n) if i not in drop]
    if not keep:
        raise CompressorError(f"pruning would remove every {what} of {name}; keep at least one channel per layer")
    return torch.tensor(keep, dtype=torch.long)


def _param(t: torch.Tensor, index: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(t.detach().index_select(dim, index).clone(), requires_grad=t.requires_grad)


def _shrink(name: str, m: nn.Module, kinds: dict[str, set[int]]) -> None:
    if isinstance(m, nn.Conv2d) and "depthwise" in kinds:
        keep = _keep_index(m.out_channels, kinds["depthwise"], name, "channel")
        m.weight = _param(m.weight, keep, 0)
        if m.bias is not None:
            m.bias = _param(m.bias, keep, 0)
        m.in_channels = m.out_channels = m.groups = len(keep)
    elif isinstance(m, nn.Conv2d):
        if kinds.get("sources"):
            keep = _keep_index(m.out_channels, kinds["sources"], name, "output channel")
            m.weight = _param(m.weight, keep, 0)
            if m.bias is not None:
                m.bias = _param(m.bias, keep, 0)
            m.out_channels = len(keep)
        if kinds.get("consumers"):
            keep = _keep_index(m.in_channels, kinds["consumers"], name, "input channel")
            m.weight = _param(m.weight, keep, 1)
            m.in_channels = len(keep)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        keep = _keep_index(m.num_features, kinds["batchnorms"], name, "channel")
        if m.weight is not None:
            m.weight, m.bias = _param(m.weight, keep, 0), _param(m.bias, keep, 0)
        if m.running_mean is not None:
            m.running_mean = m.running_mean.index_select(0, keep).clone()
            m.running_var = m.running_var.index_select(0, keep).clone()
        m.num_features = len(keep)
    elif isinstance(m, nn.Linear):
        keep = _keep_index(m.in_features, kinds["consumers"], name, "input feature")
        m.weight = _param(m.weight, keep, 1)
        m.in_features = len(keep)
    elif isinstance(m, ChannelPadShortcut):
        # Removing an input channel needs no edit (the tensor simply arrives narrower); removed padding
        # positions shrink the pad on their side. Kept input channels stay contiguous between the pads.
        pads = kinds.get("pads", set())
        left = sum(1 for p in pads if p < m.left)
        m.left, m.right = m.left - left, m.right - (len(pads) - left)
    else:
        raise CompressorError(f"cannot prune {name} ({type(m).__name__}): not a supported layer type")
