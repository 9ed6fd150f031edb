"""The one fine-tuning loop every pass uses: knowledge distillation from the teacher plus cross-entropy.

Two BatchNorm modes. ``bn: frozen`` (default) keeps BN on its running statistics while the rest trains, which
is what lets the loop run in Tune mode (You et al., ICLR 2024): each conv→BN pair becomes one convolution whose
weights are folded differentiably on every forward, saving the activation memory of the separate BN. It suits
short fine-tunes but needs a small rate: a frozen BN divides by running σ, so a channel with a tiny variance
turns a normal SGD step into a huge one, and rates only a few times the default diverge (docs/passes.md).
``bn: train`` normalises with batch statistics (and updates the running ones), the usual way to retrain a pruned
network for many epochs at rates around 0.01–0.05; Tune mode does not apply there (it is defined for Eval).

Two precisions. ``fp32`` (default) everywhere. ``bf16`` runs the student's and the teacher's forward passes under
``torch.autocast`` (convolutions and the linear layer in bfloat16, weights, optimizer and losses in float32), with
channels-last tensors for models whose widths are multiples of 8, which oneDNN runs on AVX-512 BF16 / AMX units
(speed-ups in docs/performance.md).
It is refused on CPUs without native bfloat16, where it would be emulated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compressor.core.config import param, validate
from compressor.core.data import Preprocess, Split

BN_MODES = ("frozen", "train")
TRAIN_PRECISIONS = ("fp32", "bf16")


def bf16_supported() -> bool:
    """Does this CPU run bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN reports it?"""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_problem(precision: str) -> str | None:
    """Why ``precision`` cannot run here (bf16 emulated on a CPU without native bfloat16 is slow), else None."""
    if precision == "bf16" and not bf16_supported():
        return "precision bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX), which this one lacks; use fp32"
    return None


@dataclass
class FinetuneConfig:
    """Fine-tuning schedule: ``steps`` SGD steps of ``batch_size`` images (cosine LR from ``lr``).

    ``kd_loss``: "kl" (Hinton, with temperature) or "mse" (logit MSE, as N2N). ``bn``: "frozen" (running
    statistics; Tune mode applies) or "train" (batch statistics). ``precision``: "fp32" or "bf16" (autocast and,
    where widths allow, channels-last; needs native bfloat16). The small default ``lr`` is for frozen BN, which
    diverges at larger rates (docs/passes.md).
    """

    steps: int = param(200, ge=0)
    batch_size: int = param(128, ge=1)
    lr: float = param(0.001, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    kd_loss: str = param("kl", choices=("kl", "mse"))
    kd_weight: float = param(1.0, ge=0)
    ce_weight: float = param(1.0, ge=0)
    temperature: float = param(4.0, gt=0)
    tune_mode: bool = True
    augment: bool = True
    bn: str = param("frozen", choices=BN_MODES)
    precision: str = param("fp32", choices=TRAIN_PRECISIONS)

    def check(self) -> str | None:
        return precision_problem(self.precision)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Standard CIFAR augmentation: 4-pixel zero-pad random crop and horizontal flip."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
    out = np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def _channels_last_pays(model: nn.Module) -> bool:
    """Channels-last bfloat16 only for widths that are all multiples of 8 (the RGB stem's input aside): oneDNN's
    blocked kernels want them, and narrow pruned widths ran slower in channels-last (BENCHMARKS.md, bf16)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(m.out_channels % 8 == 0 and (i == 0 or m.in_channels % 8 == 0)
                               for i, m in enumerate(convs))


@contextmanager
def _precision(precision: str, *models: nn.Module) -> Iterator[list[Callable[[torch.Tensor], torch.Tensor]]]:
    """For ``bf16``: each model whose widths suit it in channels-last memory for the duration (restored after, so
    exported and saved models are unchanged), and per model a function that lays its input out to match; for
    ``fp32`` nothing changes."""
    same: Callable[[torch.Tensor], torch.Tensor] = lambda x: x  # noqa: E731
    moved = [m for m in models if precision == "bf16" and _channels_last_pays(m)]
    for m in moved:
        m.to(memory_format=torch.channels_last)
    try:
        yield [(lambda x: x.contiguous(memory_format=torch.channels_last)) if m in moved else same for m in models]
    finally:
        for m in moved:
            m.to(memory_format=torch.contiguous_format)


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Split,
    preprocess: Preprocess,
    config: FinetuneConfig,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
    cached_logits: torch.Tensor | None = None,
) -> list[float]:
    """Train ``student`` in place on ``data`` for ``config.steps`` steps; returns the loss per step.

    ``cached_logits`` (the teacher's float32 logits for every image of ``data``, e.g. from
    :func:`compressor.core.metrics.predict`) replaces the teacher's forward pass, which is only exact without
    augmentation, so it requires ``config.augment`` to be off.
    """
    validate(config, "fine-tune")
    if config.steps <= 0:
        return []
    if cached_logits is not None and (config.augment or len(cached_logits) != len(data)):
        raise ValueError("cached teacher logits need augment off and one row per image of the data")
    from compressor.graph.fusion import tune_mode

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    losses: list[float] = []
    student.train()
    frozen = config.bn == "frozen"
    if frozen:
        _freeze_bn(student)
    order, pos = rng.permutation(len(data)), 0
    bf16 = config.precision == "bf16"
    models = (student,) if cached_logits is not None else (student, teacher)  # a cached teacher is not run
    shape = tuple(preprocess(data.images[:1]).shape[1:])  # lets Tune mode trace a shape-dependent forward
    with tune_mode(student, config.tune_mode and frozen, shape), _precision(config.precision, *models) as layouts:
        s_layout, t_layout = layouts[0], layouts[-1]
        for _ in tqdm(range(config.steps), desc=desc, disable=not progress, leave=False):
            if pos + config.batch_size > len(order):
                order, pos = rng.permutation(len(data)), 0
            idx = order[pos : pos + config.batch_size]
            pos += config.batch_size
            images = data.images[idx]
            x = preprocess(_augment(images, rng) if config.augment else images)
            y = torch.from_numpy(data.labels[idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if cached_logits is not None:
                    t_logits = cached_logits[torch.from_numpy(idx)]
                else:
                    with torch.no_grad():
                        t_logits = teacher(t_layout(x))
                s_logits = student(s_layout(x))
            t_logits, s_logits = t_logits.float(), s_logits.float()
            if config.kd_loss == "mse":
                kd = F.mse_loss(s_logits, t_logits)
            else:
                t = config.temperature
                kd = F.kl_div(F.log_softmax(s_logits / t, 1), F.softmax(t_logits / t, 1), reduction="batchmean") * t * t
            loss = config.kd_weight * kd + config.ce_weight * F.cross_entropy(s_logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach().item())
    student.eval()
    return losses
