"""LRP canonizer for the joins and functional calls of user models: rewrite them into modules the rules know.

LRP attaches its rules to modules, so a residual written ``out + x``, a ``torch.cat`` join or ``F.relu6`` would
otherwise be left to the plain gradient: at a sum the gradient hands the whole relevance to *each* input, so a
network with one plain ``a + b`` explains twice its output. zennit solves this with canonizers (Anders et al.,
arXiv 2106.13200: ``SequentialMergeBatchNorm``, and a ``Sum`` module for residual additions); this is the
same idea for any traced graph. :func:`canonize_joins` traces the model (the one tracer,
:mod:`compressor.graph.trace`) and returns a GraphModule in which

* two-tensor additions of equal shape (``a + b``, ``torch.add``, ``a += b``, ``a.add(b)``) are ``Add`` modules
  (the proportional z rule), ``torch.cat`` is a ``Concat`` module and ``x * g`` with a broadcast or
  sigmoid-made gate g is a ``Gate`` module (signal-take-all: the relevance goes to x, as LRP treats
  multiplicative gates, Arras et al., "Explaining Recurrent Neural Network Predictions in Sentiment Analysis",
  WASSA 2017);
* functional activations and average pools (``F.relu6``, ``torch.sigmoid``, ``F.avg_pool2d``, …) are their
  ``nn`` modules, so they get the same rules as the module forms.

The rewrite is of a copy (relevance runs on a deep copy), so there is nothing to undo. Functional calls left
that neither route values (views, slicing, padding, max pooling, ReLU) nor have a rule are named in one warning,
as :class:`compressor.pruning.lrp.TypeComposite` does for modules without a rule.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compressor.graph.modules import Add, Concat, Gate
from compressor.graph.trace import trace

# Functions and tensor methods whose plain gradient already redistributes relevance exactly: they select, route,
# reshape or average values (each output's relevance lands on the inputs it came from, in shares summing to it),
# or, like ReLU, zero exactly the outputs that receive no relevance. Shape queries carry no relevance at all.
_CONSERVATIVE_FUNCTIONS = {
    operator.getitem, getattr, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
    torch.transpose, F.pad, F.dropout, F.dropout2d, F.interpolate, F.max_pool2d, F.adaptive_max_pool2d, F.relu,
    torch.relu, torch.chunk, torch.split, torch.mean,
}
_CONSERVATIVE_METHODS = {
    "size", "dim", "view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous",
    "clone", "chunk", "split", "expand", "expand_as", "view_as", "reshape_as", "relu", "mean", "float", "to",
    "type_as", "detach",
}
_SIGMOIDS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid"}


def _activation(cls: type, *args: object, inplace: bool = False, **kwargs: object) -> nn.Module:
    return cls(*args, **kwargs)  # in-place is irrelevant on the copy LRP runs on


def _module_factories() -> dict[object, Callable[..., nn.Module]]:
    """Functional call → module with the same computation (its non-tensor arguments passed on)."""
    activations = {
        F.relu6: nn.ReLU6, F.hardtanh: nn.Hardtanh, F.leaky_relu: nn.LeakyReLU, F.elu: nn.ELU, F.silu: nn.SiLU,
        F.gelu: nn.GELU, F.hardswish: nn.Hardswish, F.hardsigmoid: nn.Hardsigmoid, F.mish: nn.Mish,
        torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, F.tanh: nn.Tanh,
        "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    }
    factories: dict[object, Callable[..., nn.Module]] = {fn: partial(_activation, cls) for fn, cls in activations.items()}
    factories.update({F.avg_pool2d: nn.AvgPool2d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d})
    return factories


class _RecordValues(ShapeProp):
    """ShapeProp that also keeps non-tensor results (``x.size(3)``) as ``meta['value']``, for module arguments."""

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if not isinstance(result, torch.Tensor):
            n.meta["value"] = result
        return result


def _constant(arg: object) -> object:
    """A module constructor argument: a traced shape computation is replaced by its value on the example."""
    if isinstance(arg, fx.Node):
        if "value" not in arg.meta or isinstance(arg.meta["value"], torch.Tensor):
            raise TypeError(f"{arg.name} is not a constant")
        return arg.meta["value"]
    return arg


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _key(node: fx.Node) -> object:
    """The function or method name a node calls (None for modules, inputs and attributes)."""
    return node.target if node.op in ("call_function", "call_method") else None


def _join(node: fx.Node, gates: set[fx.Node]) -> nn.Module | None:
    """The join module replacing ``node`` (a sum, concatenation or gate of traced tensors), or None.

    ``gates``: nodes made by a sigmoid, which name the gate of a product of two equally shaped tensors."""
    key = _key(node)
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    shapes = [_shape(a) for a in tensors]
    if key in (operator.add, operator.iadd, torch.add, "add") and len(node.args) == 2 and not node.kwargs:
        if len(tensors) == 2 and None not in shapes and shapes[0] == shapes[1] == _shape(node):
            return Add()
    elif key is torch.cat and isinstance(node.args[0], (list, tuple)) and all(isinstance(a, fx.Node) for a in node.args[0]):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return Concat(dim) if isinstance(dim, int) else None
    elif key in (operator.mul, operator.imul, torch.mul, "mul") and len(tensors) == 2 and len(node.args) == 2:
        if None in shapes or _shape(node) not in shapes:
            return None
        sizes = [torch.Size(s).numel() for s in shapes]
        if sizes[0] != sizes[1]:
            return Gate(sizes.index(min(sizes)))
        made_by_sigmoid = [a in gates for a in tensors]
        if made_by_sigmoid.count(True) == 1:
            return Gate(made_by_sigmoid.index(True))
    return None


def canonize_joins(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``model`` with its functional joins and calls rewritten into modules (see the module docstring).

    Returns ``model`` itself when there is nothing to rewrite, else a GraphModule sharing its submodules (so
    module paths, and the relevance captured under them, are unchanged). ``model`` should be a copy in eval mode.
    """
    gm = trace(model, "compute LRP relevance of", input_shape)
    _RecordValues(gm).propagate(torch.zeros(1, *input_shape))
    factories = _module_factories()
    gates = {n for n in gm.graph.nodes if _key(n) in _SIGMOIDS or n.op == "call_module"
             and isinstance(gm.get_submodule(n.target), (nn.Sigmoid, nn.Hardsigmoid))}
    rewrites, unknown = 0, []
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        key = _key(node)
        module = _join(node, gates)
        tensor_args = [a for a in node.all_input_nodes if _shape(a) is not None]
        if module is not None:
            args = tuple(node.args[0]) if isinstance(module, Concat) else tuple(node.args[:2])
        elif key in factories and node.args and _shape(node.args[0]) is not None:
            try:
                module = factories[key](*map(_constant, node.args[1:]), **{k: _constant(v) for k, v in node.kwargs.items()})
            except TypeError:
                module = None
            args = (node.args[0],)
        if module is None:
            conservative = key in _CONSERVATIVE_FUNCTIONS if node.op == "call_function" else key in _CONSERVATIVE_METHODS
            if not conservative and tensor_args:
                unknown.append(f"{node.name} ({getattr(key, '__name__', key)})")
            continue
        name = f"lrp_{node.name}"
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(name, args)
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        rewrites += 1
    if unknown:
        warnings.warn(f"LRP: no rule for functional call(s) {', '.join(unknown)}; relevance flows through the plain "
                      "gradient there and may not be conserved (make them modules and register a rule)", stacklevel=2)
    if not rewrites:
        return model
    gm.graph.lint()
    gm.recompile()
    return gm
