"""N2N learning: layer removal and shrinkage chosen by reinforcement learning.

Follows Ashok, Rhinehart, Beainy and Kitani, "N2N Learning: Network to Network Compression via Policy Gradient
Reinforcement Learning" (ICLR 2018, arXiv 1709.06030). The teacher is compressed in two stages, each a
REINFORCE search over a policy that reads one state vector per layer:

1. *Removal*: a bidirectional LSTM marks every layer keep or remove. Only layers whose removal can be
   repaired are ever removed: a residual block is replaced by its own skip path (``nn.Identity`` or the
   option-A ``ChannelPadShortcut``), and in a plain ``nn.Sequential`` a shape-preserving convolution is
   removed together with its BatchNorm and activation. Every other layer is fixed.
2. *Shrinkage*: an autoregressive LSTM picks an output-width scale per remaining layer. Channels are kept by
   importance (``compressor.pruning.criteria``) and coupled channels move together (``compressor.graph.dependency``).

Each sampled student inherits the teacher's weights, is distilled briefly and is scored on the validation split
with R = C(2 − C)·A_s/A_t, C = 1 − P_s/P_t. The stages are joined by plain data: a ``LayerTable`` describes a
model, a ``Candidate`` names one student, a ``Measurement`` is what training it produced, and an executor maps
the (expensive, cached) measurement over candidates so that it can later run in parallel.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.core.data import Preprocess, Split
from compressor.core.metrics import count_macs, count_params, predict
from compressor.core.serialize import atomic_torch_save
from compressor.core.train import FinetuneConfig, check_bn_modes, check_precision, distill
from compressor.errors import CompressorError
from compressor.graph.modules import Add

if TYPE_CHECKING:
    from compressor.passes.base import Context

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
    """The layers of a model in forward order, plus the module paths each removal unit replaces."""

    layers: list[Layer]
    units: dict[str, tuple[str, ...]]

    def states(self) -> torch.Tensor:
        return torch.tensor([layer.state() for layer in self.layers], dtype=torch.float32).reshape(-1, STATE_DIM)

    def decision_mask(self) -> torch.Tensor:
        return torch.tensor([layer.decides for layer in self.layers], dtype=torch.bool)

    def fixed_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.unit is None]


def _skip_path(module: nn.Module) -> nn.Module | None:
    """A residual block is a module owning an ``Add`` join; removing it leaves its ``shortcut`` (or identity)."""
    if not isinstance(getattr(module, "add", None), Add):
        return None
    shortcut = getattr(module, "shortcut", None)
    return shortcut if isinstance(shortcut, nn.Module) else nn.Identity()


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


def describe_layers(model: nn.Module, fixed: Sequence[str] = ()) -> LayerTable:
    """The model's Conv2d/Linear layers in registration (forward) order, with removal units found.

    ``fixed`` names modules (or module prefixes) that must never be removed: a unit touching one is dropped.
    """
    def touches_fixed(path: str) -> bool:
        return any(_within(f, path) or _within(path, f) for f in fixed)

    blocks: list[str] = []
    for name, m in model.named_modules():
        if name and _skip_path(m) is not None and not any(_within(name, b) for b in blocks):
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
    return LayerTable(layers, {u: units[u] for u in members})


def remove_units(model: nn.Module, table: LayerTable, remove: Sequence[str]) -> nn.Module:
    """A copy of ``model`` with each named unit replaced by its skip path (or identities in a plain chain)."""
    child = copy.deepcopy(model)
    for unit in remove:
        if unit not in table.units:
            raise CompressorError(f"n2n: {unit} is not a removable unit of this model")
        for path in table.units[unit]:
            skip = _skip_path(child.get_submodule(path))
            child.set_submodule(path, skip if skip is not None else nn.Identity())
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


def stable_seed(*parts: object) -> int:
    """A seed from any printable values, identical across processes (unlike ``hash``)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


class StudentEvaluator:
    """Builds, distils and scores one candidate: the unit of work an executor runs.

    The student trains on ``train`` by KD for ``finetune.steps`` steps, seeded from the candidate itself, so a
    candidate measures the same wherever and whenever it runs; accuracy comes from ``score`` (the validation
    split, never the test set).
    """

    def __init__(self, parent: nn.Module, table: LayerTable, teacher: nn.Module, train: Split, preprocess: Preprocess,
                 score: Callable[[nn.Module], float], input_shape: tuple[int, ...], finetune: FinetuneConfig,
                 seed: int = 0, fixed: Sequence[str] = ()):
        self.fixed = tuple(fixed)
        self.parent, self.table, self.teacher, self.train, self.preprocess = parent, table, teacher, train, preprocess
        self.score, self.input_shape, self.finetune, self.seed = score, input_shape, finetune, seed
        self._teacher_logits: torch.Tensor | None = None  # computed on first use, when students do not augment
        with torch.no_grad():
            self._out_shape = tuple(parent.eval()(torch.zeros(2, *input_shape)).shape)

    def __call__(self, candidate: Candidate) -> Measurement:
        start = time.perf_counter()
        try:
            student = build_student(self.parent, self.table, candidate, self.input_shape, self.fixed)
            with torch.no_grad():
                out = student(torch.zeros(2, *self.input_shape))
            if tuple(out.shape) != self._out_shape:
                raise ValueError(f"output shape {tuple(out.shape)} != {self._out_shape}")
        except (RuntimeError, ValueError, CompressorError) as exc:
            return Measurement(False, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}"[:300])
        params, macs = count_params(student), count_macs(student, self.input_shape)
        if not self.finetune.augment and self._teacher_logits is None:
            self._teacher_logits = torch.from_numpy(predict(self.teacher, self.train, self.preprocess))
        losses = distill(student, self.teacher, self.train, self.preprocess, self.finetune,
                         seed=stable_seed(self.seed, candidate.key()), progress=False,
                         cached_logits=None if self.finetune.augment else self._teacher_logits)
        note = "" if np.isfinite(losses).all() else "training diverged (non-finite loss); lower student_lr"
        return Measurement(True, self.score(student), params, macs, time.perf_counter() - start, note)


class Executor(Protocol):
    """Maps the measurement over candidates; results come back in candidate order."""

    def map(self, fn: Callable[[Candidate], Measurement], candidates: Sequence[Candidate]) -> list[Measurement]: ...


class SerialExecutor:
    """Runs candidates one after another in this process (the default)."""

    def map(self, fn: Callable[[Candidate], Measurement], candidates: Sequence[Candidate]) -> list[Measurement]:
        return [fn(c) for c in candidates]


# ------------------------------------------------------------------------------------------------------ reward


def compression_reward(acc_student: float, acc_teacher: float, size_student: float, size_teacher: float) -> float:
    """N2N reward R = C(2 − C)·A_s/A_t with C = 1 − size_s/size_t (0 for no compression, 1 at C = 1, A_s = A_t)."""
    c = 1.0 - size_student / size_teacher
    return c * (2.0 - c) * acc_student / acc_teacher


def constraint_penalty(reward: float, epoch: float, horizon: float = 15.0) -> float:
    """The paper's soft penalty for a violated hard limit: (ε − 1) + ε·R with ε = clip(1 − epoch/horizon, 0, 1)⁴.

    The base is clipped before the fourth power so ε stays 0 after the horizon (the literal (1 − e/15)⁴ would
    grow again past epoch 15); early in the search violators keep most of their reward, later they get −1.
    """
    eps = min(max(1.0 - epoch / horizon, 0.0), 1.0) ** 4
    return (eps - 1.0) + eps * reward


@dataclass(frozen=True)
class RewardFunction:
    """Turns a measurement into a reward: −1 if invalid, the N2N reward otherwise, penalised outside hard limits.

    max_* are the paper's limits. min_* are floors, our addition: the reward C(2 − C)·A_s/A_t keeps paying for
    compression past the point where a student still recovers after fine-tuning (on ResNet-56 it chose 2.8–3.3×
    students that lost ~3 pt), so a floor holds the search inside a size band; violators get the same penalty.
    """

    teacher_accuracy: float
    teacher_params: int
    teacher_macs: int
    size_measure: str = "params"
    max_params: int | None = None
    max_macs: int | None = None
    penalty_epochs: float = 15.0
    min_params: int | None = None
    min_macs: int | None = None

    def within_limits(self, m: Measurement) -> bool:
        return ((self.max_params is None or m.params <= self.max_params)
                and (self.max_macs is None or m.macs <= self.max_macs)
                and (self.min_params is None or m.params >= self.min_params)
                and (self.min_macs is None or m.macs >= self.min_macs))

    def __call__(self, m: Measurement, epoch: float) -> float:
        if not m.valid:
            return -1.0
        if self.size_measure == "macs":
            r = compression_reward(m.accuracy, self.teacher_accuracy, m.macs, self.teacher_macs)
        else:
            r = compression_reward(m.accuracy, self.teacher_accuracy, m.params, self.teacher_params)
        return r if self.within_limits(m) else constraint_penalty(r, epoch, self.penalty_epochs)


# ---------------------------------------------------------------------------------------------------- policies


class RemovalPolicy(nn.Module):
    """Stage 1: a 2-layer bidirectional LSTM over the layer states, then keep/remove logits per layer.

    Action 1 means keep. Layers outside the decision mask are always kept and add nothing to the log-probability.
    """

    def __init__(self, hidden: int = 30, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(STATE_DIM, hidden, num_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (B, L, STATE_DIM) → logits (B, L, 2)."""
        return self.head(self.lstm(states)[0])

    @torch.no_grad()
    def sample(self, states: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` action sequences (n, L) of 0 (remove) / 1 (keep)."""
        probs = torch.softmax(self(states.expand(n, -1, -1)), -1)
        actions = torch.multinomial(probs.reshape(-1, 2), 1, generator=generator).reshape(n, -1)
        return torch.where(mask, actions, torch.ones_like(actions))

    def log_prob(self, states: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum of log π(a_t) over the decision layers, per sequence: (n,)."""
        logp = torch.log_softmax(self(states.expand(len(actions), -1, -1)), -1)
        picked = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(-1)


class ShrinkPolicy(nn.Module):
    """Stage 2: an autoregressive 2-layer LSTMCell picking a width-scale index per layer.

    Each step reads the layer's state and the scale chosen for the previous layer (the paper feeds the scaled
    state back); outside the mask the scale is forced to 1.0 and adds nothing to the log-probability.
    """

    def __init__(self, scales: Sequence[float] = PAPER_SCALES, hidden: int = 30, num_layers: int = 2):
        super().__init__()
        if 1.0 not in scales:
            raise CompressorError("n2n: the scale set must contain 1.0 (the width of layers that are not shrunk)")
        self.register_buffer("scales", torch.tensor([float(s) for s in scales]))
        sizes = [STATE_DIM + 1] + [hidden] * num_layers
        self.cells = nn.ModuleList(nn.LSTMCell(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(hidden, len(scales))

    def _unroll(self, states: torch.Tensor, mask: torch.Tensor, n: int, actions: torch.Tensor | None,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        keep_index = int((self.scales == 1.0).nonzero()[-1])
        h = [torch.zeros(n, c.hidden_size) for c in self.cells]
        c = [torch.zeros(n, c.hidden_size) for c in self.cells]
        prev = torch.ones(n, 1)
        chosen, total = [], torch.zeros(n)
        for t in range(states.shape[0]):
            x = torch.cat([states[t].expand(n, -1), prev], 1)
            for i, cell in enumerate(self.cells):
                h[i], c[i] = cell(x, (h[i], c[i]))
                x = h[i]
            logp = torch.log_softmax(self.head(x), -1)
            if actions is None:
                a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, t]
            a = a if mask[t] else torch.full_like(a, keep_index)
            if mask[t]:
                total = total + logp.gather(1, a.unsqueeze(1)).squeeze(1)
            chosen.append(a)
            prev = self.scales[a].unsqueeze(1)
        return torch.stack(chosen, 1), total

    @torch.no_grad()
    def sample(self, states: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences (n, L) of scale indices."""
        return self._unroll(states, mask, n, None, generator)[0]

    def log_prob(self, states: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self._unroll(states, mask, len(actions), actions, None)[1]


# ------------------------------------------------------------------------------------------------------ search


@dataclass
class N2NConfig:
    """Parameters of the two-stage search and of the final fine-tune.

    Search budget = (removal_iterations + shrink_iterations) × rollouts students, each distilled for
    student_steps steps of student_batch_size images drawn from subset_size fine-tune images (a repeated
    candidate is measured once). removal_lr / shrink_lr: Adam rates of the two policies (reference code: 0.003
    and 0.1); hidden: LSTM width (30); scales: stage-2 width choices (default: the reference set, repeats kept);
    baseline_decay: moving average of iteration-mean rewards used as baseline. kd_loss "mse" is the paper's
    logit MSE (ce_weight 0: no hard labels in the search); with frozen BN it needs a small rate (student_lr and
    final_lr 0.001: at 0.01 a ResNet-56 student with removed blocks diverged within five steps). bn / final_bn:
    BatchNorm during the students' and the final fine-tune, "frozen" (running statistics) or "train" (batch
    statistics, which re-fits the statistics a removed block leaves stale and takes rates around 0.01).
    precision: "fp32" or "bf16" for every student and the final fine-tune (see compressor.core.train).
    student_augment: false trains the students on the unaugmented subset, so the teacher's logits for it are
    computed once and reused by every student instead of a teacher forward pass per step (our speed-up, not
    the paper's; the final fine-tune still augments).
    size_measure: "params" (paper) or "macs" for C; max_params / max_macs: hard limits enforced by the annealed
    penalty over penalty_epochs iterations; min_params / min_macs: floors under the same penalty (our addition, to
    search a size band instead of the reward's preferred ~3×, see RewardFunction). fixed: module names never
    removed or shrunk. final_*: the best student's fine-tune (KD + CE on the whole fine-tune split).
    policy_init: a saved ``n2n_policy.pt`` to warm-start from (policy transfer). resume: continue a checkpointed
    search with the same settings (iteration counts may grow).
    """

    removal_iterations: int = 10
    shrink_iterations: int = 10
    rollouts: int = 5
    removal_lr: float = 0.003
    shrink_lr: float = 0.1
    hidden: int = 30
    scales: tuple[float, ...] = PAPER_SCALES
    baseline_decay: float = 0.8
    student_steps: int = 100
    student_batch_size: int = 64
    student_lr: float = 0.001
    student_augment: bool = True
    subset_size: int = 10000
    kd_loss: str = "mse"
    ce_weight: float = 0.0
    size_measure: str = "params"
    max_params: int | None = None
    max_macs: int | None = None
    min_params: int | None = None
    min_macs: int | None = None
    penalty_epochs: float = 15.0
    fixed: tuple[str, ...] = ()
    final_steps: int = 2000
    final_lr: float = 0.001
    final_batch_size: int = 128
    final_kd_loss: str = "mse"
    final_ce_weight: float = 1.0
    bn: str = "frozen"
    final_bn: str = "frozen"
    precision: str = "fp32"
    tune_mode: bool = True
    policy_init: str = ""
    resume: bool = True

    def __post_init__(self) -> None:
        self.scales, self.fixed = tuple(float(s) for s in self.scales), tuple(self.fixed)
        if self.size_measure not in ("params", "macs"):
            raise CompressorError(f"n2n: size_measure must be 'params' or 'macs', not {self.size_measure!r}")
        if self.kd_loss not in ("mse", "kl") or self.final_kd_loss not in ("mse", "kl"):
            raise CompressorError("n2n: kd_loss and final_kd_loss must be 'mse' (the paper's logit MSE) or 'kl'")
        if self.rollouts < 1:
            raise CompressorError("n2n: rollouts must be at least 1")
        for lo, hi, what in ((self.min_params, self.max_params, "params"), (self.min_macs, self.max_macs, "macs")):
            if lo is not None and hi is not None and lo > hi:
                raise CompressorError(f"n2n: min_{what} ({lo}) is above max_{what} ({hi}); no student can satisfy "
                                      f"both, lower min_{what} or raise max_{what}")
        check_bn_modes("n2n", bn=self.bn, final_bn=self.final_bn)
        check_precision("n2n", self.precision)

    def search_fingerprint(self, *extra: object) -> str:
        """Everything that changes the search trajectory except the iteration counts (which may be extended)."""
        skip = {"removal_iterations", "shrink_iterations", "final_steps", "final_lr", "final_batch_size",
                "final_kd_loss", "final_ce_weight", "final_bn", "tune_mode", "resume"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return hashlib.sha256(repr((sorted(d.items()), extra)).encode()).hexdigest()[:16]


@dataclass
class StageState:
    """Progress of one REINFORCE stage: plain data, checkpointed after every iteration."""

    iteration: int = 0
    baseline: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class SearchResult:
    """The chosen student (fine-tuned), its candidate and the JSON-serialisable record of the search."""

    model: nn.Module
    candidate: Candidate
    details: dict[str, Any]


class N2NSearch:
    """Two-stage N2N search on ``parent`` with knowledge distilled from ``ctx.teacher``.

    Rewards are relative to ``parent`` (its validation accuracy and size). Each rollout's actions are weighted
    by its own advantage R_i − b (the paper's REINFORCE estimator); the reference code (``rl.py``) instead gave
    every rollout of an epoch the batch-mean advantage. One Adam step per iteration over the rollouts' mean loss
    (the reference stepped once per rollout). The baseline b starts at 0 (as in the reference), becomes the first
    iteration's mean reward and then follows an exponential moving average of iteration means (decay
    ``baseline_decay``; the reference used the plain running mean). Penalty epochs count iterations per stage.
    The search state (policies, optimizers, baselines, history, measured candidates, sampling RNG) is saved to
    ``out_dir/n2n_search.pt`` after every iteration, and a re-run with the same settings continues from it.
    """

    CHECKPOINT = "n2n_search.pt"
    POLICY = "n2n_policy.pt"
    PLOT = "n2n_rewards.png"

    def __init__(self, parent: nn.Module, ctx: Context, config: N2NConfig, executor: Executor | None = None,
                 out_dir: str | Path | None = None):
        self.parent, self.ctx, self.config = parent.eval(), ctx, config
        self.executor = executor or SerialExecutor()
        self.out_dir = Path(out_dir if out_dir is not None else ctx.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.input_shape = tuple(ctx.input_shape)
        self.table = describe_layers(parent, config.fixed)
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            self.removal = RemovalPolicy(config.hidden)
            self.shrink = ShrinkPolicy(config.scales, config.hidden)
        if config.policy_init:
            self.load_policy(config.policy_init)
        self.removal_opt = torch.optim.Adam(self.removal.parameters(), lr=config.removal_lr)
        self.shrink_opt = torch.optim.Adam(self.shrink.parameters(), lr=config.shrink_lr)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.stages = {"removal": StageState(), "shrink": StageState()}
        self.measurements: dict[str, Measurement] = {}
        self.evaluations, self.resumed = 0, False
        self.fingerprint = config.search_fingerprint(
            ctx.seed, [astuple(layer) for layer in self.table.layers], count_params(parent))
        subset = np.random.default_rng(ctx.seed).permutation(len(ctx.splits.finetune))[: config.subset_size]
        finetune = FinetuneConfig(steps=config.student_steps, batch_size=config.student_batch_size, lr=config.student_lr,
                                  kd_loss=config.kd_loss, ce_weight=config.ce_weight, tune_mode=False, bn=config.bn,
                                  precision=config.precision, augment=config.student_augment)
        self.evaluator = StudentEvaluator(parent, self.table, ctx.teacher, ctx.splits.finetune.subset(np.sort(subset)),
                                          ctx.preprocess, ctx.validation_top1, self.input_shape, finetune, ctx.seed,
                                          config.fixed)
        self.reward = RewardFunction(
            ctx.validation_top1(parent), count_params(parent), count_macs(parent, self.input_shape),
            size_measure=config.size_measure, max_params=config.max_params, max_macs=config.max_macs,
            penalty_epochs=config.penalty_epochs, min_params=config.min_params, min_macs=config.min_macs)

    # ------------------------------------------------------------------------------------- persistence

    def load_policy(self, path: str | Path) -> None:
        """Warm-start both policies from a saved policy file (possibly from another teacher)."""
        try:
            saved = torch.load(path, weights_only=True)
            self.removal.load_state_dict(saved["removal"])
            self.shrink.load_state_dict(saved["shrink"])
        except (OSError, KeyError, RuntimeError) as exc:
            raise CompressorError(f"n2n: cannot warm-start from policy file {path}: {exc}".splitlines()[0]) from None

    def save_policy(self, path: str | Path) -> Path:
        atomic_torch_save({"removal": self.removal.state_dict(), "shrink": self.shrink.state_dict()}, Path(path))
        return Path(path)

    def _checkpoint(self) -> None:
        atomic_torch_save({
            "fingerprint": self.fingerprint,
            "removal": self.removal.state_dict(), "shrink": self.shrink.state_dict(),
            "removal_opt": self.removal_opt.state_dict(), "shrink_opt": self.shrink_opt.state_dict(),
            "stages": {k: asdict(s) for k, s in self.stages.items()},
            "generator": self.generator.get_state(),
            "measurements": {k: asdict(m) for k, m in self.measurements.items()},
        }, self.out_dir / self.CHECKPOINT)

    def _restore(self) -> bool:
        path = self.out_dir / self.CHECKPOINT
        if not (self.config.resume and path.exists()):
            return False
        state = torch.load(path, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            return False
        self.removal.load_state_dict(state["removal"])
        self.shrink.load_state_dict(state["shrink"])
        self.removal_opt.load_state_dict(state["removal_opt"])
        self.shrink_opt.load_state_dict(state["shrink_opt"])
        self.stages = {k: StageState(**s) for k, s in state["stages"].items()}
        self.generator.set_state(state["generator"])
        self.measurements = {k: Measurement(**m) for k, m in state["measurements"].items()}
        return True

    # ------------------------------------------------------------------------------------------ search

    def _measure(self, candidates: list[Candidate]) -> list[Measurement]:
        todo = list({c.key(): c for c in candidates if c.key() not in self.measurements}.values())
        for c, m in zip(todo, self.executor.map(self.evaluator, todo)):
            self.measurements[c.key()] = m
        self.evaluations += len(todo)
        return [self.measurements[c.key()] for c in candidates]

    def _stage(self, name: str, iterations: int, policy: nn.Module, optimizer: torch.optim.Optimizer,
               states: torch.Tensor, mask: torch.Tensor, to_candidate: Callable[[torch.Tensor], Candidate]) -> None:
        state = self.stages[name]
        if state.iteration >= iterations or not bool(mask.any()):
            return
        bar = tqdm(range(state.iteration, iterations), desc=f"n2n {name}", disable=not self.ctx.progress, leave=False)
        for it in bar:
            actions = policy.sample(states, mask, self.config.rollouts, self.generator)
            candidates = [to_candidate(a) for a in actions]
            measured = self._measure(candidates)
            rewards = [self.reward(m, it) for m in measured]
            advantages = torch.tensor(rewards) - state.baseline
            loss = -(advantages * policy.log_prob(states, mask, actions)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state.history.append({
                "stage": name, "iteration": it, "baseline": state.baseline, "rewards": rewards,
                "mean_reward": float(np.mean(rewards)), "loss": float(loss.detach()),
                "candidates": [c.as_dict() for c in candidates], "actions": actions.tolist(),
                "accuracy": [m.accuracy for m in measured], "params": [m.params for m in measured],
                "macs": [m.macs for m in measured],
            })
            mean = float(np.mean(rewards))
            d = self.config.baseline_decay
            state.baseline = mean if it == 0 else d * state.baseline + (1.0 - d) * mean
            state.iteration = it + 1
            self._checkpoint()
            bar.set_postfix(mean=f"{mean:.3f}", best=f"{max(rewards):.3f}")

    def _best(self, stages: Sequence[str]) -> tuple[Candidate, Measurement, float] | None:
        """Highest reward as it stands after the penalty horizon (limit violators score −1); first seen wins ties."""
        best = None
        for s in stages:
            for entry in self.stages[s].history:
                for cd in entry["candidates"]:
                    cand = Candidate.from_dict(cd)
                    m = self.measurements[cand.key()]
                    r = self.reward(m, math.inf)
                    if best is None or r > best[2]:
                        best = (cand, m, r)
        return best

    def _removal_candidate(self, actions: torch.Tensor) -> Candidate:
        return Candidate.make([layer.unit for layer, a in zip(self.table.layers, actions.tolist())
                               if layer.decides and a == 0])

    def search(self) -> tuple[Candidate, Measurement | None]:
        """Run (or continue) both stages; returns the best candidate and its search measurement."""
        cfg = self.config
        self.resumed = self._restore()
        if self.stages["shrink"].iteration and self.stages["removal"].iteration < cfg.removal_iterations:
            raise CompressorError("n2n: the checkpointed search already started shrinkage, so removal_iterations "
                                  "cannot grow; keep its value or set resume: false to start over")
        self._stage("removal", cfg.removal_iterations, self.removal, self.removal_opt,
                    self.table.states(), self.table.decision_mask(), self._removal_candidate)
        stage1 = self._best(["removal"])
        base = stage1[0] if stage1 is not None else Candidate()
        child = remove_units(self.parent, self.table, base.remove)
        remaining = describe_layers(child).layers
        fixed = set(cfg.fixed)
        shrinkable = torch.tensor([layer.type != "linear" and not any(_within(layer.name, f) for f in fixed)
                                   for layer in remaining], dtype=torch.bool)
        child_states = LayerTable(remaining, {}).states()

        def shrink_candidate(actions: torch.Tensor) -> Candidate:
            scales = {layer.name: float(self.shrink.scales[a]) for layer, a, ok in
                      zip(remaining, actions.tolist(), shrinkable.tolist()) if ok}
            return Candidate.make(base.remove, scales)

        self._stage("shrink", cfg.shrink_iterations, self.shrink, self.shrink_opt, child_states, shrinkable,
                    shrink_candidate)
        best = self._best(["removal", "shrink"])
        return (best[0], best[1]) if best is not None else (Candidate(), None)

    def history(self) -> list[dict]:
        return self.stages["removal"].history + self.stages["shrink"].history

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        hist = self.history()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.arange(1, len(hist) + 1)
        ax.plot(x, [h["mean_reward"] for h in hist], marker="o", label="mean reward")
        ax.plot(x, [max(h["rewards"]) for h in hist], marker=".", linestyle="--", label="best of iteration")
        split = len(self.stages["removal"].history)
        if 0 < split < len(hist):
            ax.axvline(split + 0.5, color="grey", linewidth=0.8)
        ax.set_xlabel("iteration (removal, then shrinkage)")
        ax.set_ylabel("reward")
        ax.set_title("N2N search")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def run(self) -> SearchResult:
        """Search, then fine-tune the best student longer with KD + CE on the whole fine-tune split."""
        cfg, ctx = self.config, self.ctx
        start = time.perf_counter()
        candidate, measured = self.search()
        search_seconds = time.perf_counter() - start
        within = measured is None or self.reward.within_limits(measured)
        if not within:
            warnings.warn(f"n2n: no student of the search met the size limits; handing on the best violator "
                          f"({measured.params:,} params, {measured.macs:,} MACs). Run more iterations or widen "
                          f"the limits", stacklevel=2)
        self.save_policy(self.out_dir / self.POLICY)
        self.plot(self.out_dir / self.PLOT)
        student = build_student(self.parent, self.table, candidate, self.input_shape, cfg.fixed)
        final = FinetuneConfig(steps=cfg.final_steps, batch_size=cfg.final_batch_size, lr=cfg.final_lr,
                               kd_loss=cfg.final_kd_loss, ce_weight=cfg.final_ce_weight, tune_mode=cfg.tune_mode,
                               bn=cfg.final_bn, precision=cfg.precision)
        distill(student, ctx.teacher, ctx.splits.finetune, ctx.preprocess, final, seed=ctx.seed,
                progress=ctx.progress, desc="n2n fine-tune best")
        details = {
            "teacher": {"validation_top1": self.reward.teacher_accuracy, "params": self.reward.teacher_params,
                        "macs": self.reward.teacher_macs},
            "budget": {
                "removal_iterations": cfg.removal_iterations, "shrink_iterations": cfg.shrink_iterations,
                "rollouts": cfg.rollouts, "student_steps": cfg.student_steps,
                "student_batch_size": cfg.student_batch_size, "subset_size": len(self.evaluator.train),
                "candidates_trained_this_run": self.evaluations, "candidates_measured": len(self.measurements),
                "search_seconds_this_run": search_seconds, "resumed": self.resumed,
            },
            "best": {
                "candidate": candidate.as_dict(),
                "search_validation_top1": measured.accuracy if measured else None,
                "reward": self.reward(measured, math.inf) if measured else None,
                "params": count_params(student), "macs": count_macs(student, self.input_shape),
                "removed_blocks": len(candidate.remove),
                "within_limits": within,
            },
            "final_validation_top1": ctx.validation_top1(student),
            "history": [{k: v for k, v in h.items() if k != "actions"} for h in self.history()],
            "files": {"checkpoint": self.CHECKPOINT, "policy": self.POLICY, "reward_plot": self.PLOT},
        }
        return SearchResult(student, candidate, details)
