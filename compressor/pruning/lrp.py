"""Layer-wise Relevance Propagation (LRP) for the conv nets of this project, as Pruning by Explaining needs it.

Follows Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
Propagation" (PLoS ONE 2015), Montavon et al., "Layer-Wise Relevance Propagation: An Overview" (2019), and the
rule choice of Yeom et al., "Pruning by Explaining" (Pattern Recognition 2021, arXiv 1912.08881), ResNet path:

* BatchNorm is merged into the preceding convolution first (canonization, :class:`MergeBatchNorm`);
* z⁺ (α1β0, bias ignored) for hidden convolutions, depthwise ones included;
* ε (1e-6) for Linear layers;
* zB / ZBox with the true normalised input box (``Preprocess.bounds()``) for the first convolution;
* a proportional, ε-stabilised split at residual additions and average pooling;
* signal-take-all at multiplicative gates (``x · σ(…)``, squeeze-and-excitation): x keeps the relevance;
* activations, unmerged BatchNorms, identities and flattening pass relevance unchanged; max pooling,
  concatenation and the option-A shortcut use the plain gradient (routing to where each value came from).

Plain ``a + b``, ``torch.cat``, ``x * g`` and functional activations of user models are first rewritten into
those modules by :func:`compressor.pruning.canonizers.canonize_joins`.

The mechanism is written in the style of zennit (Anders et al., arXiv 2106.13200), which cannot be imported
here (it pulls in torchvision, whose wheels do not match the CPU torch build): one generic hook wraps a module's
output in an autograd function whose backward applies the module's :class:`Rule`; each rule is a small
declarative list of :class:`Term` s; canonizers are reversible context managers. The relevance arriving at
every Conv2d output is captured per sample and channel, which is what the pruning criterion scores.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from compressor.graph.fusion import folded_weight_bias, plan_folding
from compressor.graph.modules import Add, ChannelPadShortcut, Concat, Gate
from compressor.graph.trace import trace
from compressor.pruning.canonizers import canonize_joins

Tensor = torch.Tensor


def _identity(x: Tensor) -> Tensor:
    return x


def _keep_param(name: str, p: Tensor) -> Tensor:
    return p


def _positive(x: Tensor) -> Tensor:
    return x.clamp(min=0)


def _negative(x: Tensor) -> Tensor:
    return x.clamp(max=0)


def _positive_param(name: str, p: Tensor) -> Tensor:
    return p.clamp(min=0)


def _negative_param(name: str, p: Tensor) -> Tensor:
    return p.clamp(max=0)


@dataclass(frozen=True)
class Term:
    """One contribution z_k = sign · f(inputs(x); params(θ)) to a layer's pre-activation.

    ``inputs`` maps each input tensor, ``params`` each parameter by name; ``sign`` is +1 or −1.
    """

    inputs: Callable[[Tensor], Tensor] = _identity
    params: Callable[[str, Tensor], Tensor] = _keep_param
    sign: float = 1.0


@dataclass(frozen=True)
class Rule:
    """A generic LRP rule: R_in = Σ_k sign_k · x_k ⊙ ∂z_k/∂x_k · R_out / stab(Σ_k sign_k z_k).

    ``terms`` describe the modified forward passes, ``epsilon`` stabilises the denominator
    (z + ε·sign(z)), ``bias`` keeps the layer's bias in the first term's forward pass.
    """

    terms: tuple[Term, ...] = (Term(),)
    epsilon: float = 1e-6
    bias: bool = True

    def relevance(self, module: nn.Module, inputs: Sequence[Tensor], r_out: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            outs, leaves = [], []
            for k, term in enumerate(self.terms):
                xs = tuple(term.inputs(x.detach()).requires_grad_() for x in inputs)
                params = {n: term.params(n, p.detach()) for n, p in module.named_parameters(recurse=False)}
                if "bias" in params and params["bias"] is not None and not (self.bias and k == 0):
                    params["bias"] = torch.zeros_like(params["bias"])
                outs.append(_forward(module, params, xs))
                leaves.append(xs)
            z = sum(term.sign * out for term, out in zip(self.terms, outs))
            scaled = r_out / (z + self.epsilon * torch.where(z >= 0, 1.0, -1.0))
            r_in = [torch.zeros_like(x) for x in inputs]
            for term, out, xs in zip(self.terms, outs, leaves):
                grads = torch.autograd.grad(out, xs, scaled, allow_unused=True)
                for i, (x, g) in enumerate(zip(xs, grads)):
                    if g is not None:
                        r_in[i] = r_in[i] + term.sign * x.detach() * g
        return tuple(r_in)


class PassThrough(Rule):
    """Relevance passes unchanged (reshaped to the input): activations, identities, flatten."""

    def relevance(self, module: nn.Module, inputs: Sequence[Tensor], r_out: Tensor) -> tuple[Tensor, ...]:
        return (r_out.reshape(inputs[0].shape),)


class SignalTakeAll(Rule):
    """Multiplicative gate z = x · g: all relevance to the signal x, none to the gate g (the gate only scales
    x, as in LRP for LSTM gates, Arras et al. 2017). The module's ``gate`` attribute says which input is g."""

    def relevance(self, module: nn.Module, inputs: Sequence[Tensor], r_out: Tensor) -> tuple[Tensor, ...]:
        gate = module.gate
        return tuple(torch.zeros_like(x) if i == gate else r_out.reshape(x.shape) for i, x in enumerate(inputs))


def Epsilon(epsilon: float = 1e-6) -> Rule:  # noqa: N802 - rules read like classes, as in the LRP literature
    """ε rule (Bach et al. 2015): z_ij = x_i w_ij, bias kept, denominator stabilised by ε."""
    return Rule((Term(),), epsilon=epsilon, bias=True)


def ZPlus(epsilon: float = 1e-9) -> Rule:  # noqa: N802
    """z⁺ = α1β0 rule (Bach et al. 2015; Montavon et al. 2017): only positive contributions x⁺w⁺ + x⁻w⁻, no bias."""
    return Rule(
        (Term(_positive, _positive_param), Term(_negative, _negative_param)), epsilon=epsilon, bias=False
    )


def ZBox(low: Tensor, high: Tensor, epsilon: float = 1e-9) -> Rule:  # noqa: N802
    """zB rule (Montavon et al., Pattern Recognition 2017) for inputs bounded per channel by ``low``/``high``.

    z_ij = x_i w_ij − l_i w⁺_ij − h_i w⁻_ij; bias ignored. ``low``/``high``: per-channel tensors of shape (C,).
    """

    def bound(value: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda x: value.to(x).view(1, -1, *([1] * (x.dim() - 2))).expand_as(x)

    return Rule(
        (Term(), Term(bound(low), _positive_param, -1.0), Term(bound(high), _negative_param, -1.0)),
        epsilon=epsilon, bias=False,
    )


def Proportional(epsilon: float = 1e-6) -> Rule:  # noqa: N802
    """z rule for parameter-free sums (residual add, average pooling): split R in proportion to the inputs."""
    return Rule((Term(),), epsilon=epsilon, bias=False)


def _forward(module: nn.Module, params: dict[str, Tensor], xs: tuple[Tensor, ...]) -> Tensor:
    """The module's computation with substituted parameters, without firing its hooks."""
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(xs[0], params["weight"], params.get("bias"))
    if isinstance(module, nn.Linear):
        return F.linear(xs[0], params["weight"], params.get("bias"))
    return module.forward(*xs)


class _RuleFunction(torch.autograd.Function):
    """Identity in the forward pass; the backward replaces the module's gradient by its rule's relevance."""

    @staticmethod
    def forward(ctx, hook: _Hook, output: Tensor, *inputs: Tensor) -> Tensor:  # noqa: ANN001
        ctx.hook = hook
        ctx.save_for_backward(*inputs)
        return output.clone()

    @staticmethod
    def backward(ctx, r_out: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        hook: _Hook = ctx.hook
        hook.seen(r_out)
        r_in = hook.rule.relevance(hook.module, ctx.saved_tensors, r_out)
        return (None, None, *r_in)


@dataclass
class _Hook:
    module: nn.Module
    rule: Rule
    store: Callable[[Tensor], None] | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if not all(isinstance(a, Tensor) for a in args):
            raise TypeError(f"LRP rules need tensor-only inputs, {type(module).__name__} got {args!r}")
        return _RuleFunction.apply(self, output.detach(), *args)

    def seen(self, r_out: Tensor) -> None:
        if self.store is not None:
            self.store(r_out)


class MergeBatchNorm(contextlib.AbstractContextManager):
    """Canonizer: fold each conv → BN pair into the conv and make the BN an identity; undone on exit.

    Uses the project's single folding rule (:func:`compressor.graph.fusion.folded_weight_bias`, You et al. 2024);
    the BN keeps its place but computes x (γ=1, β=0, μ=0, σ²=1, ε=0), as zennit's MergeBatchNorm does.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...] | None = None):
        self.model, self.input_shape = model, input_shape
        self._saved: list[tuple[nn.Module, dict[str, Tensor | None], nn.Module, dict[str, object]]] = []

    @torch.no_grad()
    def __enter__(self) -> MergeBatchNorm:
        for pair in plan_folding(self.model, self.input_shape).pairs:
            conv, bn = self.model.get_submodule(pair.producer), self.model.get_submodule(pair.bn)
            if not isinstance(conv, nn.Conv2d) or bn.training:
                continue
            conv_state = {"weight": conv.weight.data.clone(), "bias": None if conv.bias is None else conv.bias}
            bn_state = {k: getattr(bn, k).data.clone() if isinstance(getattr(bn, k), Tensor) else getattr(bn, k)
                        for k in ("weight", "bias", "running_mean", "running_var", "eps")}
            weight, bias = folded_weight_bias(conv, bn, dtype=torch.float64)
            conv.weight.data = weight.to(conv.weight.dtype)
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            if bn.weight is not None:
                bn.weight.data.fill_(1.0)
                bn.bias.data.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.eps = 0.0
            self._saved.append((conv, conv_state, bn, bn_state))
        return self

    @torch.no_grad()
    def __exit__(self, *exc: object) -> None:
        for conv, conv_state, bn, bn_state in reversed(self._saved):
            conv.weight.data = conv_state["weight"]
            conv.bias = conv_state["bias"]
            for k, v in bn_state.items():
                if isinstance(v, Tensor):
                    getattr(bn, k).data.copy_(v)
                else:
                    setattr(bn, k, v)
        self._saved.clear()


_PASS_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Sigmoid,
    nn.Hardsigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d,
)
# Modules whose plain gradient already redistributes relevance conservatively (selection, slicing, padding,
# concatenation), and containers, which compute nothing themselves (an empty Sequential is an identity).
_GRADIENT_TYPES: tuple[type, ...] = (
    ChannelPadShortcut, Concat, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Sequential, nn.ModuleList, nn.ModuleDict,
)

RuleFactory = Callable[[], Rule]


class TypeComposite:
    """Module type → rule, first match wins, plus a rule for the convolution that reads the input (zennit's
    composites in miniature). ``register`` adds a mapping ahead of the built-in ones, so a user's own module
    types get their rule without editing this file. Leaf modules that match nothing keep the plain gradient, with
    a warning, since relevance is then not guaranteed to be conserved through them.
    """

    def __init__(self, mapping: Sequence[tuple[tuple[type, ...], RuleFactory]], first_conv: RuleFactory | None = None):
        self.mapping = list(mapping)
        self.first_conv = first_conv

    def register(self, types: type | tuple[type, ...], factory: RuleFactory) -> TypeComposite:
        self.mapping.insert(0, (types if isinstance(types, tuple) else (types,), factory))
        return self

    def rules(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, Rule]:
        first = _first_conv(model, input_shape) if self.first_conv is not None else None
        rules: dict[str, Rule] = {}
        unruled = []
        for name, m in model.named_modules():
            if name == first:
                rules[name] = self.first_conv()
                continue
            factory = next((f for types, f in self.mapping if isinstance(m, types)), None)
            if factory is not None:
                rule = factory()  # None: the plain gradient on purpose (e.g. residual="gradient")
                if rule is not None:
                    rules[name] = rule
            elif not any(True for _ in m.children()) and not isinstance(m, _GRADIENT_TYPES):
                unruled.append(f"{name} ({type(m).__name__})")
        if unruled:
            warnings.warn(f"LRP: no rule for {', '.join(unruled)}; relevance flows through the plain gradient there "
                          "and may not be conserved (register a rule with TypeComposite.register)", stacklevel=2)
        return rules


def yeom_composite(low: Tensor, high: Tensor, epsilon: float = 1e-6, residual: str = "proportional") -> TypeComposite:
    """The rules of Yeom et al.'s ResNet code: ZBox on the first conv, z⁺ on other convs, ε on Linear,
    proportional split on additions and average pooling, pass-through on activations/BN/flatten; gates
    (:class:`SignalTakeAll`) for the canonizer's ``Gate`` modules.

    ``residual='gradient'`` leaves additions to the plain gradient instead (each branch receives the whole
    relevance, not conservative), which is what a zennit composite does with an unregistered sum.
    """
    if residual not in ("proportional", "gradient"):
        raise ValueError(f"residual must be 'proportional' or 'gradient', got {residual!r}")
    mapping: list[tuple[tuple[type, ...], RuleFactory]] = [
        ((nn.Conv2d,), ZPlus),
        ((nn.Linear,), lambda: Epsilon(epsilon)),
        ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), lambda: Proportional(epsilon)),
        ((Gate,), SignalTakeAll),
        (_PASS_TYPES, PassThrough),
    ]
    if residual == "proportional":
        mapping.insert(0, ((Add,), lambda: Proportional(epsilon)))
    else:
        mapping.insert(0, ((Add,), lambda: None))
    return TypeComposite(mapping, first_conv=lambda: ZBox(low, high))


def _first_conv(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str | None:
    """The Conv2d that reads the network input (the zB rule needs the input box)."""
    gm = trace(model, "compute LRP relevance of", input_shape)
    inputs = {n for n in gm.graph.nodes if n.op == "placeholder"}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
            if any(a in inputs for a in node.all_input_nodes):
                return node.target
    return None


@dataclass
class ConvRelevance:
    """Relevance captured at one Conv2d output for N samples: per channel, summed over positions.

    ``signed``: Σ_hw R (N, C); ``absolute``: Σ_hw |R| (N, C).
    """

    signed: list[Tensor] = field(default_factory=list)
    absolute: list[Tensor] = field(default_factory=list)

    def add(self, r: Tensor) -> None:
        self.signed.append(r.detach().sum(dim=(2, 3)))
        self.absolute.append(r.detach().abs().sum(dim=(2, 3)))

    def score(self, abs_mode: str = "elementwise") -> Tensor:
        """Per-filter score summed over samples: 'none' Σ R, 'elementwise' Σ|R|, 'per_sample' Σ_n |Σ_hw R|."""
        if abs_mode == "none":
            return torch.cat(self.signed).sum(0)
        if abs_mode == "elementwise":
            return torch.cat(self.absolute).sum(0)
        if abs_mode == "per_sample":
            return torch.cat(self.signed).abs().sum(0)
        raise ValueError(f"abs must be 'none', 'elementwise' or 'per_sample', got {abs_mode!r}")


@contextlib.contextmanager
def attach(model: nn.Module, rules: dict[str, Rule], capture: Sequence[str] = ()) -> Iterator[dict[str, ConvRelevance]]:
    """Register the rules' hooks on ``model`` (in place) and capture the relevance at the ``capture`` modules'
    outputs; hooks are removed on exit. Yields module path → :class:`ConvRelevance`.
    """
    captured = {name: ConvRelevance() for name in capture}
    handles = []
    try:
        for name, rule in rules.items():
            module = model.get_submodule(name)
            store = captured[name].add if name in captured else None
            handles.append(module.register_forward_hook(_Hook(module, rule, store)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def relevance_at_convs(
    model: nn.Module, x: Tensor, labels: Tensor, low: Tensor, high: Tensor, batch_size: int = 64,
    return_input: bool = False, residual: str = "proportional", composite: TypeComposite | None = None,
) -> dict[str, ConvRelevance] | tuple[dict[str, ConvRelevance], Tensor]:
    """LRP from the one-hot true label (value 1) down to the input; relevance at every Conv2d output.

    Works on a deep copy with functional joins canonized (:func:`compressor.pruning.canonizers.canonize_joins`),
    BatchNorm merged (:class:`MergeBatchNorm`) and the rules of :func:`yeom_composite` (``residual`` selects its
    rule for additions) unless another ``composite`` is given.
    ``low``/``high``: the normalised input box (``Preprocess.bounds()``).
    With ``return_input`` the input relevance (N, C, H, W) is returned too (for conservation checks). Convs the
    forward does not call (a branch not taken) get no entry.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    shape = tuple(x.shape[1:])
    model = canonize_joins(model, shape)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    inputs = []
    rules = (composite or yeom_composite(low, high, residual=residual)).rules(model, shape)
    with MergeBatchNorm(model, shape), attach(model, rules, capture=convs) as captured:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().clone().requires_grad_()
            out = model(xb)
            onehot = F.one_hot(labels[i : i + batch_size], out.shape[1]).to(out.dtype)
            (r_in,) = torch.autograd.grad(out, xb, onehot)
            inputs.append(r_in.detach())
    captured = {name: rel for name, rel in captured.items() if rel.signed}  # convs the forward never calls
    return (captured, torch.cat(inputs)) if return_input else captured


def filter_scores(captured: dict[str, ConvRelevance], abs_mode: str = "elementwise") -> dict[str, Tensor]:
    """Per-conv filter scores from captured relevance (see :meth:`ConvRelevance.score`)."""
    return {name: rel.score(abs_mode) for name, rel in captured.items()}
