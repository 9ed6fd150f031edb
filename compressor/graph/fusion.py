"""BatchNorm folding: Deploy mode for export and Tune mode for fine-tuning.

Both follow You et al., "Efficient ConvBN Blocks for Transfer Learning and Beyond" (ICLR 2024, arXiv
2305.11624). With running statistics μ, σ² frozen, a BatchNorm after a convolution (or linear layer) is a
per-output-channel affine map, so the pair equals one convolution with

    s = γ / √(σ² + ε),   W' = W · s,   b' = (b − μ) · s + β.

* **Deploy** (:func:`fold_batchnorm`) computes W', b' once, writes them into the convolution and replaces the
  BatchNorm by ``nn.Identity``: the exported graph has no BatchNormalization node.
* **Tune** (:func:`tune_mode`) keeps W, b, γ, β as the trainable parameters but recomputes W', b' on every
  forward, differentiably, and runs one convolution. Outputs and gradients equal Eval mode (conv → BN with
  frozen statistics) while the convolution's output no longer has to be stored for the BatchNorm's backward.

Which conv → BN pairs may be folded is decided in one place, :func:`plan_folding`, from a torch.fx trace of the
model; the trace is only analysed, the model's own module tree is what gets rewritten.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.trace import trace

# Exact types, not isinstance: a subclass (fake-quant wrapper, parametrized conv) may compute something else in
# its forward, and folding into its weight would then change the model.
_CONVS: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED: tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCERS: tuple[type, ...] = _CONVS + _TRANSPOSED + (nn.Linear,)
_NORMS: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONV_TRANSPOSE_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass(frozen=True)
class ConvBNPair:
    """A producer (conv, transposed conv or linear) whose only consumer is a BatchNorm, by attribute path."""

    producer: str
    bn: str


@dataclass
class FoldPlan:
    """Result of :func:`plan_folding`: the foldable pairs and, for every other BatchNorm, why it is left alone."""

    pairs: list[ConvBNPair] = field(default_factory=list)
    left_unfolded: dict[str, str] = field(default_factory=dict)

    def describe_unfolded(self) -> list[str]:
        return [f"{path}: {reason}" for path, reason in self.left_unfolded.items()]


def _out_channels(producer: nn.Module) -> int:
    return producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels


def plan_folding(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> FoldPlan:
    """Find every producer → BatchNorm pair that can be folded without changing what the model computes.

    A pair qualifies when each module sits at exactly one attribute path and is called exactly once, the BN has
    running statistics, its only input is the producer's output, that output has no other consumer, and the
    channel counts match. Linear → BatchNorm1d assumes (N, C) inputs, the usual classifier-head layout.
    Raises :class:`CompressorError` when the model cannot be traced by torch.fx (``input_shape`` lets the tracer
    follow a forward that branches on the input's shape, see :mod:`compressor.graph.trace`).
    """
    graph = trace(model, "fold BatchNorm in", input_shape).graph
    # A module registered under two names is called through either; rewriting one path would miss the other.
    paths: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(name)
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    plan = FoldPlan()

    for path, bn in modules.items():
        if type(bn) not in _NORMS:
            continue
        if len(paths[id(bn)]) > 1:
            plan.left_unfolded[path] = f"registered at several paths ({', '.join(paths[id(bn)])})"
        elif calls[path] != 1:
            plan.left_unfolded[path] = f"called {calls[path]} times in forward (folding needs exactly one call)"
        elif bn.running_mean is None or bn.running_var is None:
            plan.left_unfolded[path] = "has no running statistics (track_running_stats=False)"

    for node in graph.nodes:
        if node.op != "call_module" or node.target in plan.left_unfolded or type(modules[node.target]) not in _NORMS:
            continue
        bn_path, bn = node.target, modules[node.target]
        src = node.args[0] if node.args else None
        reason = None
        if len(node.args) != 1 or node.kwargs:
            reason = "called with extra arguments"
        elif not (isinstance(src, fx.Node) and src.op == "call_module" and type(modules[src.target]) in _PRODUCERS):
            reason = "its input is not the output of a Conv, ConvTranspose or Linear module"
        else:
            producer = modules[src.target]
            if len(paths[id(producer)]) > 1 or calls[src.target] != 1:
                reason = f"its producer {src.target} is shared (called or registered more than once)"
            elif len(src.users) != 1:
                reason = f"the output of {src.target} has {len(src.users)} consumers"
            elif len(src.args) != 1 or src.kwargs:
                reason = f"{src.target} is called with extra arguments"
            elif _out_channels(producer) != bn.num_features:
                reason = f"{src.target} has {_out_channels(producer)} output channels, the BN {bn.num_features}"
        if reason is None:
            plan.pairs.append(ConvBNPair(src.target, bn_path))
        else:
            plan.left_unfolded[bn_path] = reason
    return plan


def _channel_view(producer: nn.Module, scale: torch.Tensor) -> torch.Tensor:
    """Reshape a per-output-channel vector so it broadcasts over the producer's weight.

    Conv and Linear weights hold output channels on dim 0. Transposed convs hold them on dim 1, per group:
    the weight is (in, out/groups, *k) and output channel g·(out/groups) + j lives in rows of group g, column j.
    """
    weight = producer.weight
    if type(producer) in _TRANSPOSED:
        groups = producer.groups
        per_group = scale.reshape(groups, 1, -1, *([1] * (weight.dim() - 2)))
        return per_group.expand(groups, weight.shape[0] // groups, *per_group.shape[2:]).reshape(
            weight.shape[0], weight.shape[1], *([1] * (weight.dim() - 2))
        )
    return scale.reshape(-1, *([1] * (weight.dim() - 1)))


def folded_weight_bias(
    producer: nn.Module, bn: nn.Module, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """W' and b' of the producer → BN pair (You et al., ICLR 2024), differentiable in W, b, γ, β.

    ``dtype`` computes in another precision (Deploy folds in float64 so the fold adds no rounding of its own).
    """
    dtype = dtype or producer.weight.dtype
    inv_std = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    scale = inv_std if bn.weight is None else bn.weight.to(dtype) * inv_std
    weight = producer.weight.to(dtype) * _channel_view(producer, scale)
    shifted = -bn.running_mean.to(dtype) if producer.bias is None else producer.bias.to(dtype) - bn.running_mean.to(dtype)
    bias = shifted * scale if bn.bias is None else shifted * scale + bn.bias.to(dtype)
    return weight, bias


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, name = _parent(model, path)
    # Assigning to an existing key keeps the child's position, so module order (and printing) is unchanged.
    setattr(parent, name, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Deploy mode (You et al., ICLR 2024): fold every foldable BatchNorm into its producer, in place.

    Each folded BN becomes ``nn.Identity`` and its producer gets W' = W·s and b' = (b − μ)·s + β (a bias is
    created where there was none). The folded model reproduces the model with BN in eval mode; BNs that cannot
    be folded (see :func:`plan_folding`) are left as they are. Returns ``model`` itself.
    """
    fold_batchnorm_with_plan(model, input_shape)
    return model


@torch.no_grad()
def fold_batchnorm_with_plan(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> FoldPlan:
    """:func:`fold_batchnorm`, returning the plan (pairs folded, BNs left and why) for reports."""
    plan = plan_folding(model, input_shape)
    for pair in plan.pairs:
        producer, bn = model.get_submodule(pair.producer), model.get_submodule(pair.bn)
        weight, bias = folded_weight_bias(producer, bn, dtype=torch.float64)
        producer.weight.copy_(weight)
        if producer.bias is None:
            producer.bias = nn.Parameter(bias.to(producer.weight.dtype), requires_grad=producer.weight.requires_grad)
        else:
            producer.bias.copy_(bias)
        _replace(model, pair.bn, nn.Identity())
    return plan


class TuneConvBN(nn.Module):
    """One producer → BN pair in Tune mode (You et al., ICLR 2024): a single convolution with folded weights.

    Holds the original ``conv`` (or linear) and ``bn`` as children, so the trained Parameters are the same
    objects and optimizer state stays valid. When the BN is in training mode (batch statistics), the fold does
    not apply and the pair runs as conv → BN.
    """

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = bn
        # Only this wrapper's flag: train() would recurse and unfreeze the BN.
        self.training = conv.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            return self.bn(self.conv(x))
        weight, bias = folded_weight_bias(self.conv, self.bn)
        conv = self.conv
        if type(conv) in _CONVS:
            return conv._conv_forward(x, weight, bias)
        if type(conv) in _TRANSPOSED:
            return _CONV_TRANSPOSE_FN[len(conv.kernel_size)](
                x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation
            )
        return F.linear(x, weight, bias)


@dataclass
class TuneState:
    """What :func:`enable_tune_mode` changed, so :func:`disable_tune_mode` can put it back."""

    pairs: list[ConvBNPair] = field(default_factory=list)
    originals: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)


def enable_tune_mode(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> TuneState:
    """Switch every eligible pair to :class:`TuneConvBN`; BNs in training mode are left as conv → BN.

    Tune mode is the fine-tuning counterpart of Deploy: it pays off when BN is frozen (eval mode, running
    statistics) while the rest of the model trains. If the model cannot be traced, a warning is issued and the
    model is left in Eval mode, which computes the same thing with more memory.
    """
    try:
        plan = plan_folding(model, input_shape)
    except CompressorError as exc:
        warnings.warn(f"Tune mode disabled: {exc}", stacklevel=2)
        return TuneState()
    state = TuneState()
    for pair in plan.pairs:
        producer, bn = model.get_submodule(pair.producer), model.get_submodule(pair.bn)
        if bn.training:
            continue
        _replace(model, pair.producer, TuneConvBN(producer, bn))
        _replace(model, pair.bn, nn.Identity())
        state.pairs.append(pair)
        state.originals.append((producer, bn))
    return state


def disable_tune_mode(model: nn.Module, state: TuneState) -> nn.Module:
    """Undo :func:`enable_tune_mode`: the original modules return to their original paths."""
    for pair, (producer, bn) in zip(state.pairs, state.originals):
        _replace(model, pair.producer, producer)
        _replace(model, pair.bn, bn)
    state.pairs, state.originals = [], []
    return model


@contextlib.contextmanager
def tune_mode(
    model: nn.Module, enabled: bool = True, input_shape: tuple[int, ...] | None = None
) -> Iterator[TuneState]:
    """Run the body with the model in Tune mode (You et al., ICLR 2024), restoring the module tree on exit.

    Fine-tuning loops in this project call ``model.train()`` and then put every BatchNorm back in eval mode
    (frozen running statistics); that is exactly the setting in which Tune mode computes the same outputs and
    gradients as conv → BN with less activation memory. Eligible pairs: producer → BN where the BN is in eval
    mode with running statistics and the producer's output has a single consumer; a BN switched to training
    mode inside the body falls back to conv → BN. Save checkpoints outside the body: inside it, state_dict keys
    carry the extra ``.conv`` / ``.bn`` level. ``enabled=False`` makes the context a no-op.
    """
    state = enable_tune_mode(model, input_shape) if enabled else TuneState()
    try:
        yield state
    finally:
        disable_tune_mode(model, state)
