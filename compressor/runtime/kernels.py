"""Fused INT8 kernels from Python: load the CMake-built torch ops and run a quantized CNN through them.

The ops (``torch.ops.compressor.int8_conv2d`` / ``int8_dwconv2d``, source in ``kernels/``) take int8 NHWC
activations and per-output-channel requantization scales, and fuse bias, residual add, ReLU/ReLU6 and the
requantization to int8 (round half to even, saturate to [-128, 127]) into the convolution. ``Int8Model`` follows
the TensorRT explicit-quantization recipe (symmetric per-channel weights, per-tensor activations, convolution
outputs requantized to the scale of the next convolution's input, residual adds fused into the producing
convolution; see NVIDIA's "Working with Quantized Types" guide) and keeps everything else in float.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.modules import Add, ChannelPadShortcut
from compressor.graph.trace import trace

LIB_NAME = "libcompressor_torch_ops.so"
REPO_ROOT = Path(__file__).resolve().parents[2]  # compressor/runtime/kernels.py -> the repository
BUILD_COMMAND = "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2"
_loaded: Path | None = None


def library_candidates() -> list[Path]:
    """Where the ops library is looked for: $COMPRESSOR_KERNELS_LIB, then build/ under the repo and the cwd."""
    env = os.environ.get("COMPRESSOR_KERNELS_LIB")
    if env:
        return [Path(env)]
    return [REPO_ROOT / "build" / LIB_NAME, Path.cwd() / "build" / LIB_NAME]


def load_ops() -> Path:
    """Load the torch ops library once; raises CompressorError naming the build command when it is missing."""
    global _loaded
    if _loaded is not None:
        return _loaded
    candidates = library_candidates()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CompressorError(
            f"INT8 kernel library not built (looked for {', '.join(map(str, candidates))}); build it from the "
            f"repository root with `{BUILD_COMMAND}` (or kernels/build.sh), or point COMPRESSOR_KERNELS_LIB at "
            f"{LIB_NAME}"
        )
    try:
        torch.ops.load_library(str(found))
    except OSError as exc:
        raise CompressorError(
            f"cannot load {found}: {exc}; rebuild it against this torch ({torch.__version__}) with `{BUILD_COMMAND}`"
        ) from None
    _loaded = found
    return found


def quantize_nhwc(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Float NCHW → int8 NHWC with a per-tensor symmetric scale (round half to even, saturate)."""
    q = torch.round(x / scale).clamp_(-128, 127).to(torch.int8)
    return q.permute(0, 2, 3, 1).contiguous()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 weights in [-127, 127], as [Cout, kh, kw, Cin/groups], and their scales."""
    amax = weight.detach().abs().flatten(1).amax(1).float()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(weight.detach().float() / scale.view(-1, 1, 1, 1)).clamp_(-127, 127).to(torch.int8)
    return q.permute(0, 2, 3, 1).contiguous(), scale


@torch.no_grad()
def calibrate_input_scales(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Max-calibrated per-tensor input scale (max |x| / 127) of every Conv2d, keyed by module path."""
    amax: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):

            def hook(_m, args, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().max()))

            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: (v / 127.0 if v > 0 else 1.0) for name, v in amax.items()}


@dataclass
class QTensor:
    """An int8 NHWC activation and its per-tensor scale."""

    data: torch.Tensor
    scale: float

    def dequantize(self) -> torch.Tensor:
        return (self.data.float() * self.scale).permute(0, 3, 1, 2)


def _as_float(v: object) -> object:
    return v.dequantize() if isinstance(v, QTensor) else v


def _as_q(v: object, scale: float) -> QTensor:
    if isinstance(v, QTensor) and v.scale == scale:
        return v
    return QTensor(quantize_nhwc(_as_float(v), scale), scale)


class QConv(nn.Module):
    """One convolution lowered to the fused op: int8 weights, folded requantization scale, epilogue settings."""

    def __init__(self, conv: nn.Conv2d, in_scale: float, activation: str, out_scale: float | None):
        super().__init__()
        weight, w_scale = quantize_weight(conv.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", (w_scale * in_scale).float())
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.clone())
        self.depthwise = conv.groups > 1
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.in_scale, self.activation, self.out_scale = in_scale, activation, out_scale

    def forward(self, x: QTensor, residual: object) -> QTensor | torch.Tensor:
        res, res_scale = None, 1.0
        if isinstance(residual, QTensor):
            res, res_scale = residual.data, residual.scale
        elif residual is not None:
            res = residual.permute(0, 2, 3, 1).contiguous()
        op = torch.ops.compressor.int8_dwconv2d if self.depthwise else torch.ops.compressor.int8_conv2d
        y = op(x.data, self.weight, self.scale, self.bias, res, res_scale, self.stride, self.padding, self.activation, self.out_scale)
        return QTensor(y, self.out_scale) if self.out_scale is not None else y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kind = "depthwise" if self.depthwise else "dense"
        return f"{kind}, act={self.activation}, in_scale={self.in_scale:.4g}, out_scale={self.out_scale}"


def _lowerable(conv: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return False
    return conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels


class Int8Model(nn.Module):
    """A float CNN run through the fused INT8 ops; call it on float NCHW input, it returns float logits.

    Built by ``build_int8_model``. Convolutions listed in the activation scales become fused int8 ops (followed by
    a residual ``Add`` and a ReLU/ReLU6 when the graph allows); every other node runs in float on dequantized
    values, so unsupported layers degrade to float instead of failing.
    """

    def __init__(
        self, model: nn.Module, graph: fx.Graph, qconvs: dict[str, QConv], groups: dict[fx.Node, tuple], input_shape: tuple[int, ...]
    ):
        super().__init__()
        self.float_model = model
        self.qconvs = nn.ModuleDict({k.replace(".", "__"): v for k, v in qconvs.items()})
        self.graph, self.groups, self.input_shape = graph, groups, input_shape
        self._absorbed = {n for conv, add, _act in groups.values() for n in (conv, add) if n is not None}
        self._absorbed -= set(groups)

    def _module(self, target: str) -> nn.Module:
        return self.float_model.get_submodule(target)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[fx.Node, object] = {}
        for node in self.graph.nodes:
            if node in self._absorbed:
                continue
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: _as_float(env[n]))
            elif node in self.groups:
                conv, add, _act = self.groups[node]
                qconv = self.qconvs[conv.target.replace(".", "__")]
                residual = None
                if add is not None:
                    residual = env[next(a for a in add.args if a is not conv)]
                env[node] = qconv(_as_q(env[conv.args[0]], qconv.in_scale), residual)
            else:
                env[node] = self._run_float(node, env)
        raise CompressorError("traced graph has no output node")

    def _run_float(self, node: fx.Node, env: dict[fx.Node, object]) -> object:
        if node.op == "call_module":
            mod = self._module(node.target)
            value = env[node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
            if isinstance(mod, ChannelPadShortcut) and isinstance(value, QTensor):
                # Exact on int8 NHWC: subsample space, zero-pad channels, same scale.
                data = value.data[:, :: mod.stride, :: mod.stride, :]
                return QTensor(F.pad(data, (mod.left, mod.right)).contiguous(), value.scale)
        args = fx.node.map_arg(node.args, lambda n: _as_float(env[n]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _as_float(env[n]))
        if node.op == "call_module":
            return self._module(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return functools.reduce(getattr, node.target.split("."), self.float_model)
        raise CompressorError(f"Int8Model cannot run node {node.name} ({node.op})")


def build_int8_model(model: nn.Module, act_scales: dict[str, float], input_shape: tuple[int, ...] = (3, 32, 32)) -> Int8Model:
    """Lower a BN-folded float model to an Int8Model, given each convolution's input scale (module path → scale).

    Convolutions without a scale, or of an unsupported kind (dilation, grouped but not depthwise), stay float.
    """
    load_ops()
    model = model.eval()
    modules = dict(model.named_modules())
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values()):
        raise CompressorError("Int8Model needs BatchNorm folded into the convolutions first (fold_batchnorm)")
    graph = trace(model, "lower to INT8 kernels", input_shape).graph
    for node in list(graph.nodes):
        # Identities (folded BatchNorms, identity shortcuts) would hide conv→add→ReLU chains from fusion.
        if node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)

    def is_module(node: fx.Node, kinds: tuple[type, ...]) -> bool:
        return node.op == "call_module" and isinstance(modules[node.target], kinds)

    def single_user(node: fx.Node) -> fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    convs = [
        n
        for n in graph.nodes
        if is_module(n, (nn.Conv2d,)) and _lowerable(modules[n.target]) and n.target in act_scales and len(n.args) == 1 and not n.kwargs
    ]
    qconv_nodes = set(convs)
    groups: dict[fx.Node, tuple] = {}
    claimed: set[fx.Node] = set()
    for conv in convs:
        last, add, act = conv, None, "none"
        user = single_user(conv)
        if user is not None and user not in claimed and is_module(user, (Add,)) and len(user.args) == 2 and user.args.count(conv) == 1:
            add = last = user
            user = single_user(user)
        if user is not None and user not in claimed and is_module(user, (nn.ReLU, nn.ReLU6)):
            act = "relu6" if isinstance(modules[user.target], nn.ReLU6) else "relu"
            last = user
        claimed.update({add, last} - {None})
        groups[last] = (conv, add, act)

    qconvs: dict[str, QConv] = {}
    for last, (conv, _add, act) in groups.items():
        consumers = [u for u in last.users if u in qconv_nodes]
        out_scale = act_scales[consumers[0].target] if consumers else None
        qconvs[conv.target] = QConv(modules[conv.target], act_scales[conv.target], act, out_scale)
    return Int8Model(model, graph, qconvs, groups, input_shape)


def make_torch_int8_runner(int8_model: Int8Model, batch: int, device: str) -> Callable[[], float | None]:
    """A zero-arg function running one synchronous inference on a fixed random batch.

    Returns the elapsed milliseconds measured with CUDA events on a GPU, None on CPU (time it yourself).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompressorError("torch-int8 on cuda needs a CUDA build of torch and a visible NVIDIA GPU")
    model = int8_model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *int8_model.input_shape), generator=gen).to(dev)

    if dev.type != "cuda":

        def run_cpu() -> None:
            model(x)

        return run_cpu

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_cuda() -> float:
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return run_cuda
