"""A latency model of a deployment target: measured per-layer latencies, summed to predict a whole model.

Lookup tables as in NetAdapt (Yang et al., ECCV 2018) and HALP (Shen et al., "Structural Pruning via
Latency-Saliency Knapsack", NeurIPS 2022). Every distinct layer shape (:class:`LayerShape`: kind, input and output
channels, kernel, stride, input size, groups, fused activation) is built alone in the precision it will be deployed
in and timed on the target (:mod:`compressor.runtime.latency_targets`), once per machine, runtime version and
thread count. The table lives in ``$COMPRESSOR_CACHE/latency/`` (default ``~/.cache/compressor``), is written
atomically after every entry and so survives an interrupted profile, which continues where it stopped.

A whole model whose n layers run is predicted as ``empty + scale · Σ (layer − empty) + n · overhead``. ``empty``
is the cost of one inference call on a graph that does nothing (every single-layer measurement pays it once, the
model pays it once; on openvino-cpu, whose layers are timed by their kernels, it is about 0 and the call's cost
falls to the calibration). The unpruned model of each architecture is measured whole once (:meth:`LatencyModel.calibrate`).
When it runs slower than the sum, the difference is work the runtime does around every layer that a layer timed
alone does not show, and is spread over the layers that run as ``overhead`` (``scale`` 1): a model with fewer
layers (an N2N student) pays less of it. When it runs faster, the runtime fuses across layers (requantization and
residual additions into convolutions, no layer-boundary traffic) and the table over-counts every layer: ``scale``
is the measured share of the sum (``overhead`` 0). A negative overhead there would predict near-zero or negative
latencies for models with fewer layers.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from tqdm.auto import tqdm

from compressor.core.files import write_atomic
from compressor.errors import CompressorError
from compressor.graph.modules import Add, ChannelPadShortcut
from compressor.graph.trace import trace
from compressor.runtime.latency_targets import EMPTY, PRECISIONS, LatencyTarget, LayerShape, fingerprint_key, make_target

Ref = tuple[str, str]
"""(member kind of a DependencyGraph group, module name) whose removed members shrink a channel count."""

_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.BatchNorm2d, Add)


def cache_dir() -> Path:
    from compressor.core.data import _cache_dir

    return _cache_dir() / "latency"


@dataclass(frozen=True)
class Layer:
    """A layer of a described model: its shape and where its channel counts come from when channels are removed.

    ``cin_refs`` / ``cout_refs``: the group members that shrink the input / output channel count, one channel per
    removed member of that kind in that module (see :func:`shape_after`)."""

    name: str
    shape: LayerShape
    cin_refs: tuple[Ref, ...]
    cout_refs: tuple[Ref, ...]


def _act(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The activation a runtime fuses into this node: through a BatchNorm, the ReLU / ReLU6 that alone reads it."""
    for _ in range(2):
        if len(node.users) != 1:
            return ""
        (node,) = node.users
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.BatchNorm2d):
                continue
            return _ACT_MODULES.get(type(m), "")
        if node.op == "call_function":
            return _ACT_FUNCTIONS.get(node.target, "")
        return _ACT_METHODS.get(node.target, "") if node.op == "call_method" else ""
    return ""


def _witness(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Ref, ...]:
    """The module whose channels a tensor carries: walk back through activations, identities and the first
    operand of additions to the BatchNorm, conv or shortcut that wrote them."""
    while True:
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.BatchNorm2d):
                return (("batchnorms", node.target),)
            if isinstance(m, nn.Conv2d):
                kind = "depthwise" if m.groups > 1 and m.groups == m.in_channels == m.out_channels else "sources"
                return ((kind, node.target),)
            if isinstance(m, ChannelPadShortcut):
                return (*_witness(node.args[0], modules), ("pads", node.target))
            if not isinstance(m, _PASS_MODULES):
                return ()
        elif node.op == "call_function" and node.target not in (*_ACT_FUNCTIONS, operator.add, torch.add):
            return ()
        elif node.op == "call_method" and node.target not in _ACT_METHODS:
            return ()
        elif node.op not in ("call_module", "call_function", "call_method"):
            return ()
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if not args:
            return ()
        node = args[0]


_DESCRIBED: dict[tuple, list[Layer]] = {}


def _signature(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    """What :func:`describe` depends on: every module's type, parameter shapes, convolution geometry and shortcut
    padding."""
    def geometry(m: nn.Module) -> tuple | None:
        if isinstance(m, ChannelPadShortcut):
            return (m.stride, m.left, m.right)
        if isinstance(m, nn.Conv2d):
            return (m.stride, m.padding, m.dilation, m.groups)
        return None

    return (type(model).__qualname__, tuple(input_shape), tuple(
        (name, type(m).__name__, tuple(tuple(p.shape) for p in m.parameters(recurse=False)), geometry(m))
        for name, m in model.named_modules()))


def describe(model: nn.Module, input_shape: tuple[int, ...]) -> list[Layer]:
    """The layers of ``model`` the latency model times, in execution order (BatchNorm and activations are fused
    into the layer before them; reshapes are free; anything else is left to the calibration). Cached per
    architecture: a search predicts the same model many times."""
    key = _signature(model, input_shape)
    if key not in _DESCRIBED:
        if len(_DESCRIBED) > 256:
            _DESCRIBED.clear()
        _DESCRIBED[key] = _describe(model, input_shape)
    return _DESCRIBED[key]


def _describe(model: nn.Module, input_shape: tuple[int, ...]) -> list[Layer]:
    gm = trace(model, "describe the layers of")
    modules = dict(gm.named_modules())
    with torch.no_grad():
        was = {m: m.training for m in model.modules()}
        gm.eval()
        try:
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
        finally:
            for m, t in was.items():
                m.training = t
    out: list[Layer] = []
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue
        first = next((a for a in node.args if isinstance(a, fx.Node)), None)
        ishape = tuple(first.meta["tensor_meta"].shape) if first is not None and "tensor_meta" in first.meta else ()
        m = modules.get(node.target) if node.op == "call_module" else None
        is_add = isinstance(m, Add) or (node.op == "call_function" and node.target in (operator.add, torch.add)
                                        and sum(isinstance(a, fx.Node) for a in node.args) == 2)
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            pad = m.padding[0] if isinstance(m.padding, tuple) else m.kernel_size[0] // 2 if m.padding == "same" else 0
            shape = LayerShape("conv", m.in_channels, m.out_channels, ishape[2], ishape[3], m.kernel_size[0],
                               m.stride[0], pad, m.groups, _act(node, modules))
            refs = (((("depthwise", node.target),),) * 2 if depthwise
                    else ((("consumers", node.target),), (("sources", node.target),)))
            out.append(Layer(node.target, shape, *refs))
        elif is_add and len(ishape) == 4:
            refs = _witness(first, modules)
            out.append(Layer(str(node.target) if m is not None else node.name,
                             LayerShape("add", ishape[1], ishape[1], ishape[2], ishape[3], act=_act(node, modules)),
                             refs, refs))
        elif isinstance(m, ChannelPadShortcut) and len(ishape) == 4:
            refs = _witness(first, modules)
            out.append(Layer(node.target, LayerShape("shortcut", ishape[1], meta.shape[1], ishape[2], ishape[3],
                                                     stride=m.stride), refs, (*refs, ("pads", node.target))))
        elif (isinstance(m, (nn.AdaptiveAvgPool2d,)) and tuple(meta.shape[2:]) == (1, 1)) or (
                node.op == "call_function" and node.target is F.adaptive_avg_pool2d):
            refs = _witness(first, modules)
            out.append(Layer(str(node.target) if m is not None else node.name,
                             LayerShape("pool", ishape[1], ishape[1], ishape[2], ishape[3]), refs, refs))
        elif isinstance(m, nn.Linear):
            out.append(Layer(node.target, LayerShape("linear", m.in_features, m.out_features),
                             (("consumers", node.target),), ()))
    return out


def removed_members(groups: Iterable) -> Counter:
    """How many members of each (kind, module) a set of DependencyGraph groups removes."""
    counts: Counter = Counter()
    for g in groups:
        for kind in ("sources", "batchnorms", "depthwise", "consumers", "pads"):
            for name, _ in getattr(g, kind):
                counts[(kind, name)] += 1
    return counts


def shape_after(layer: Layer, removed: Counter) -> LayerShape:
    """The layer's shape once the counted members are gone (spatial sizes never change with channels)."""
    s = layer.shape
    dcin = max((removed[r] for r in layer.cin_refs if r[0] != "pads"), default=0)
    dcout = max((removed[r] for r in layer.cout_refs if r[0] != "pads"), default=0)
    dcout += sum(removed[r] for r in layer.cout_refs if r[0] == "pads")
    cin, cout = s.cin - dcin, s.cout - dcout
    groups = cin if s.groups > 1 and s.groups == s.cin == s.cout else s.groups
    return replace(s, cin=cin, cout=cout, groups=groups)


class LatencyTable:
    """Measured latencies (ms, median) of layer shapes on one target, keyed by precision, batch and shape, stored
    in one JSON file per target fingerprint; ``measure`` fills missing entries and saves after each one."""

    VERSION = 1

    def __init__(self, target: LatencyTarget, path: str | Path | None = None):
        self.target = target
        self.fingerprint = target.fingerprint()
        self.path = Path(path) if path else cache_dir() / f"{target.name}-{fingerprint_key(self.fingerprint)}.json"
        self.entries: dict[str, float] = {}
        self.offsets: dict[str, float] = {}
        self._merge(self._read())

    @staticmethod
    def key(shape: LayerShape, precision: str, batch: int) -> str:
        return f"{precision}|b{batch}|{shape.key()}"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if data.get("version") != self.VERSION or data.get("fingerprint") != self.fingerprint:
            return {}
        return data

    def _merge(self, data: dict) -> None:
        self.entries.update(data.get("entries", {}))
        self.offsets.update(data.get("offsets", {}))

    def save(self) -> None:
        """Merge with what another process may have written meanwhile, then replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        disk = self._read()
        entries, offsets = {**disk.get("entries", {}), **self.entries}, {**disk.get("offsets", {}), **self.offsets}
        self.entries, self.offsets = entries, offsets
        write_atomic(self.path, json.dumps({"version": self.VERSION, "fingerprint": self.fingerprint,
                                            "entries": dict(sorted(entries.items())), "offsets": offsets}, indent=0))

    def get(self, shape: LayerShape, precision: str, batch: int) -> float | None:
        return self.entries.get(self.key(shape, precision, batch))

    def missing(self, shapes: Iterable[LayerShape], precision: str, batches: Iterable[int]) -> list[LayerShape]:
        batches = list(batches)
        return sorted({s for s in shapes if any(self.get(s, precision, b) is None for b in batches)})

    def measure(self, shapes: Iterable[LayerShape], precision: str, batches: Iterable[int],
                progress: bool = False) -> int:
        """Time every shape not yet in the table (each in the target's isolation); returns how many were timed."""
        if precision not in PRECISIONS:
            raise CompressorError(f"latency model: precision {precision!r}; choose {' | '.join(PRECISIONS)}")
        batches = sorted(set(batches))
        todo = self.missing([EMPTY, *shapes], precision, batches)
        bar = tqdm(todo, desc=f"profile {self.target.name} {precision}", disable=not progress or not todo,
                   leave=False)
        for shape in bar:
            timed = self.target.time_layer(shape, precision, batches)
            for b in batches:
                self.entries[self.key(shape, precision, b)] = timed[b]
            self.save()
        return len(todo)


@dataclass
class LatencyModel:
    """Predicts a model's latency at ``batch`` in ``precision`` on the table's target (see the module docstring)."""

    table: LatencyTable
    precision: str = "int8"
    batch: int = 64
    progress: bool = False
    overhead: float = 0.0
    """ms per layer that a whole model pays beyond its layers' own costs (module docstring)."""
    scale: float = 1.0

    def runs(self, shape: LayerShape) -> bool:
        """Whether the layer runs as a layer of its own on the target (an Add that OpenVINO fuses does not)."""
        deployed = getattr(self.table.target, "deployed_shape", None)
        return deployed is None or deployed(shape, self.precision) != EMPTY

    def layer_ms(self, shapes: list[LayerShape]) -> list[float]:
        """Each shape's own cost (its measurement less the empty call, never below 0; 0 for a layer that does not
        run), timing missing ones."""
        runs = [self.runs(s) for s in shapes]
        self.table.measure([s for s, r in zip(shapes, runs) if r], self.precision, [self.batch], self.progress)
        empty = self.table.get(EMPTY, self.precision, self.batch)
        return [max(0.0, self.table.get(s, self.precision, self.batch) - empty) if r else 0.0
                for s, r in zip(shapes, runs)]

    def cost(self, shapes: list[LayerShape]) -> float:
        """The summed own costs of ``shapes`` (ms)."""
        cache: dict[LayerShape, float] = {}
        unique = sorted(set(shapes))
        cache.update(zip(unique, self.layer_ms(unique)))
        return sum(cache[s] for s in shapes)

    def predict_shapes(self, shapes: list[LayerShape]) -> float:
        """Whole-model latency of a model made of ``shapes`` (ms): empty call + scaled own costs + overheads."""
        self.table.measure([], self.precision, [self.batch], self.progress)
        return (self.table.get(EMPTY, self.precision, self.batch) + self.scale * self.cost(shapes)
                + self.overhead * self.count(shapes))

    def count(self, shapes: list[LayerShape]) -> int:
        """How many of ``shapes`` run as layers of their own: what pays ``overhead``."""
        return sum(map(self.runs, shapes))

    def predict(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        return self.predict_shapes([layer.shape for layer in describe(model, input_shape)])

    def measure_model(self, model: nn.Module, input_shape: tuple[int, ...], precision: str | None = None) -> float:
        """The whole model timed on the target in ``precision`` (default this model's), in ms at ``batch``."""
        (timed,) = self.table.target.time_models([(model, precision or self.precision)], tuple(input_shape),
                                                 [self.batch])
        return timed[self.batch]

    def against_fp32(self, models: tuple[nn.Module, nn.Module], input_shape: tuple[int, ...],
                     rounds: int = 3) -> tuple[float, float]:
        """``models[0]`` timed whole in FP32 and ``models[1]`` in this precision, alternating over ``rounds``
        windows: a speed-up over FP32 measured at one time, which the machine's load between the table's timings
        and now cannot skew. Returns both latencies (ms)."""
        fp32, own = self.table.target.time_models([(models[0], "fp32"), (models[1], self.precision)],
                                                  tuple(input_shape), [self.batch], rounds)
        return fp32[self.batch], own[self.batch]

    def fp32_gain(self, model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
        """``against_fp32((model, model))``, measured once per machine, target and architecture and kept in the
        table like the offsets: a decision taken from it (the prune budget, N2N's baseline) is then the same in
        every run on this machine, so the same recipe and seed give the same model."""
        key = f"{self.precision}|b{self.batch}|{_digest(model, input_shape)}"
        if f"fp32|{key}" not in self.table.offsets:
            fp32, own = self.against_fp32((model, model), input_shape)
            self.table.offsets[f"fp32|{key}"], self.table.offsets[f"own|{key}"] = fp32, own
            self.table.save()
        return self.table.offsets[f"fp32|{key}"], self.table.offsets[f"own|{key}"]

    def calibrate(self, model: nn.Module, input_shape: tuple[int, ...]) -> float:
        """Measure ``model`` whole and set ``overhead`` or ``scale`` (module docstring) so that its prediction equals
        the measurement. The difference from the table's sum is cached in the table per architecture, so a second
        pass over the same model measures nothing. Returns the measurement."""
        shapes = [layer.shape for layer in describe(model, input_shape)]
        own = self.cost(shapes)
        self.table.measure([], self.precision, [self.batch], self.progress)
        empty = self.table.get(EMPTY, self.precision, self.batch)
        key = f"{self.precision}|b{self.batch}|{_digest(model, input_shape)}"
        if key not in self.table.offsets:
            self.table.offsets[key] = self.measure_model(model, input_shape) - (empty + own)
            self.table.save()
        difference = self.table.offsets[key]
        if difference >= 0 or own <= 0:
            self.overhead, self.scale = difference / max(self.count(shapes), 1), 1.0
        else:
            self.overhead, self.scale = 0.0, max(own + difference, 0.0) / own
        return empty + self.scale * own + self.overhead * self.count(shapes)


def _digest(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The architecture as the latency model sees it: its layer shapes."""
    shapes = [layer.shape.key() for layer in describe(model, input_shape)]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def latency_model(target: str | LatencyTarget, precision: str = "int8", batch: int = 64, threads: int = 2,
                  progress: bool = False, precision_hint: str = "f32") -> LatencyModel:
    """The latency model of a named (or given) target, on the cached table of this machine. ``precision_hint``:
    OpenVINO's hint for the float parts (openvino-cpu only)."""
    t = make_target(target, threads, precision_hint) if isinstance(target, str) else target
    return LatencyModel(LatencyTable(t), precision, batch, progress)


def speedup(before_ms: float, after_ms: float) -> float:
    return before_ms / after_ms if after_ms > 0 else math.inf
