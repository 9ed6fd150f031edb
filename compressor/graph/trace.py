"""The one torch.fx tracer every analysis uses (channel coupling, BatchNorm folding, LRP, INT8 lowering).

``Add`` and ``ChannelPadShortcut`` stay leaf nodes, so residual joins and option-A shortcuts appear as single
nodes that rules can recognise instead of the arithmetic inside them.

Symbolic tracing cannot follow Python control flow that reads a tensor's shape (``if x.shape[2] == 64:``), which
public model code does to choose a stem by input size. When it fails and the caller knows the input shape, the
model is traced again while it runs on a real input of that shape (as Torch-Pruning and torch.export trace):
every traced value is computed alongside its graph node, so shape queries answer with numbers and the forward
takes the branch that input takes. The batch size stays symbolic (``x.size(0)`` is still a graph node), so the
graph runs on any batch; height, width and channels are those of ``input_shape``, which is what every analysis
here is for. Control flow on tensor *values* cannot be traced at all and stays a one-line error.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.modules import Add, ChannelPadShortcut


class LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (Add, ChannelPadShortcut)) or super().is_leaf_module(m, module_qualified_name)


class _ShapeProxy(fx.Proxy):
    """A proxy that knows its real value: ``shape``, ``ndim``, ``dim()`` and ``size(d)`` are numbers (the batch
    dimension of input-derived tensors stays a graph node)."""

    def __getattr__(self, name: str) -> Any:
        tracer: ShapeTracer = self.tracer
        if name == "shape":
            return tracer.shape_of(self)
        if name in ("ndim", "dtype", "device", "is_cuda"):
            return getattr(tracer.values[self.node], name)
        return super().__getattr__(name)


class ShapeTracer(LeafTracer):
    """Trace ``model`` while running it on a zero input of shape (2, *input_shape) in eval mode, without grad.

    Running leaves cannot change the model: leaf modules run in eval mode, and parameters and buffers the forward
    reads directly are cloned first, so an in-place update (a functional batch norm in training mode) hits a copy.
    """

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.example = torch.zeros(2, *input_shape)
        self.values: dict[fx.Node, Any] = {}
        self._from_input: set[fx.Node] = set()
        self._running = False  # computing a value: module calls and attribute reads run as plain Python

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        return forward(*args, **kwargs) if self._running else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        return attr_val if self._running else super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def shape_of(self, proxy: fx.Proxy) -> tuple:
        value = self.values[proxy.node]
        if proxy.node not in self._from_input or value.dim() == 0:
            return tuple(value.shape)
        return (self.create_proxy("call_method", "size", (proxy, 0), {}), *value.shape[1:])

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        if kind == "call_method" and target in ("size", "dim") and isinstance(args[0], _ShapeProxy):
            if target == "dim":
                return self.values[args[0].node].dim()
            dims = [*args[1:], *kwargs.values()]
            if not dims:
                return self.shape_of(args[0])
            dim = dims[0] % self.values[args[0].node].dim()
            if dim != 0 or args[0].node not in self._from_input:
                return self.values[args[0].node].shape[dim]
            args = (args[0], 0)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind != "output":
            self._evaluate(proxy.node)
        return proxy

    def _evaluate(self, node: fx.Node) -> None:
        inputs = node.all_input_nodes
        if node.op == "placeholder":  # the first input is the example; later ones keep their defaults
            first = not any(n.op == "placeholder" for n in self.values)
            self.values[node] = self.example if first else (node.args[0] if node.args else None)
            if first:
                self._from_input.add(node)
            return
        if any(n in self._from_input for n in inputs):
            self._from_input.add(node)
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self._value)
        self._running = True
        try:
            with torch.no_grad():
                self.values[node] = self._run(node, args, kwargs)
        finally:
            self._running = False

    def _value(self, node: fx.Node) -> Any:
        if node not in self.values and node.op == "get_attr":  # tensors fx turned into attributes itself
            self._evaluate(node)
        return self.values[node]

    def _run(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(self.root)
            return value.detach().clone() if isinstance(value, torch.Tensor) else value
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        module = self.root.get_submodule(node.target)
        modes = {m: m.training for m in module.modules()}
        module.eval()
        try:
            return module(*args, **kwargs)
        finally:
            for m, mode in modes.items():
                m.training = mode

def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def trace(model: nn.Module, purpose: str = "analyse", input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Trace ``model``; an untraceable forward is a CompressorError saying what could not be done (``purpose``).

    With ``input_shape`` (C, H, W), a forward that symbolic tracing cannot follow is traced again on a real input
    of that shape (see the module docstring); the graph then holds the branches that shape takes.
    """
    try:
        return fx.GraphModule(model, LeafTracer().trace(model))
    except Exception as exc:
        symbolic = exc
    if input_shape is not None:
        try:
            graph = ShapeTracer(tuple(input_shape)).trace(model)
        except Exception as exc:
            raise CompressorError(
                f"cannot {purpose} {type(model).__name__}: torch.fx could not trace its forward, even on a real "
                f"input of shape {tuple(input_shape)} ({_first_line(exc)}); make the forward traceable (no control "
                "flow on tensor values)"
            ) from exc
        for node in reversed(graph.nodes):  # batch sizes read by `x.shape` but never used
            if node.op == "call_method" and node.target == "size" and not node.users:
                graph.erase_node(node)
        return fx.GraphModule(model, graph)
    raise CompressorError(
        f"cannot {purpose} {type(model).__name__}: torch.fx could not trace its forward ({_first_line(symbolic)}); "
        "make the forward traceable (no control flow on tensor values)"
    ) from symbolic
