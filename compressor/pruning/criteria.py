"""Filter-importance criteria for structured pruning: one small class per criterion, one ``__call__``.

Each criterion maps (model, reference images, preprocessing) to a score per output channel of every Conv2d
(higher = more important). :func:`group_scores` turns them into one score per coupled channel group of a
:class:`~compressor.graph.dependency.DependencyGraph`: the mean over the group's source convs, so a residual-stream
channel that ten convolutions write is judged by its average importance in those layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.core.data import Preprocess, Split
from compressor.graph.dependency import Group
from compressor.pruning import lrp


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@dataclass
class LRPCriterion:
    """Relevance of each filter (Yeom et al., "Pruning by Explaining", Pattern Recognition 2021).

    LRP from the one-hot true label with the rules of :func:`compressor.pruning.lrp.yeom_composite`; score = relevance at
    the filter's output summed over reference samples and positions. ``abs``: 'elementwise' (Σ|R|, the
    paper's ResNet code, default), 'per_sample' (Σ_n|Σ_hw R|, the PXP re-implementation) or 'none' (signed Σ R,
    the paper's VGG code). ``normalize`` divides every layer's scores by the layer total (off by default, as in
    the ResNet code: relevance is conserved across layers, so raw scores are already comparable). ``residual``:
    rule at residual additions, 'proportional' (the paper) or 'gradient' (see :func:`~compressor.pruning.lrp.yeom_composite`).
    """

    abs: str = "elementwise"
    normalize: bool = False
    residual: str = "proportional"
    batch_size: int = 50

    def __call__(self, model: nn.Module, data: Split, preprocess: Preprocess) -> dict[str, torch.Tensor]:
        low, high = preprocess.bounds()
        captured = lrp.relevance_at_convs(
            model, preprocess(data.images), torch.from_numpy(data.labels), low, high, self.batch_size,
            residual=self.residual,
        )
        return lrp.filter_scores(captured, self.abs, self.normalize)


@dataclass
class L1Criterion:
    """L1 norm of each filter's weights (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017)."""

    def __call__(self, model: nn.Module, data: Split | None = None, preprocess: Preprocess | None = None
                 ) -> dict[str, torch.Tensor]:
        return {n: m.weight.detach().abs().flatten(1).sum(1) for n, m in _convs(model).items()}


@dataclass
class TaylorCriterion:
    """First-order Taylor estimate |a · ∂L/∂a| (Molchanov et al., "Pruning Convolutional Neural Networks for
    Resource Efficient Inference", ICLR 2017).

    Per sample and filter the spatial mean of activation × gradient of the cross-entropy with the true label at
    the conv output, absolute value, averaged over the reference set, then L2-normalised per layer (as the
    baseline in Yeom et al.'s code).
    """

    batch_size: int = 50

    def __call__(self, model: nn.Module, data: Split, preprocess: Preprocess) -> dict[str, torch.Tensor]:
        convs = _convs(model)
        acts: dict[str, torch.Tensor] = {}
        sums = {n: torch.zeros(m.out_channels) for n, m in convs.items()}

        def keep(name: str):  # noqa: ANN202
            def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
                out.retain_grad()
                acts[name] = out
            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in convs.items()]
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(data), self.batch_size):
                x = preprocess(data.images[i : i + self.batch_size])
                y = torch.from_numpy(data.labels[i : i + self.batch_size])
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y, reduction="sum").backward()
                for n, a in acts.items():
                    sums[n] += (a.detach() * a.grad).mean(dim=(2, 3)).abs().sum(0)
                acts.clear()
        finally:
            for h in handles:
                h.remove()
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return {n: (s / len(data)) / (s / len(data)).norm().clamp_min(1e-12) for n, s in sums.items()}


@dataclass
class RandomCriterion:
    """Uniform random scores from a seeded generator: the baseline every criterion must beat."""

    seed: int = 0

    def __call__(self, model: nn.Module, data: Split | None = None, preprocess: Preprocess | None = None
                 ) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {n: torch.rand(m.out_channels, generator=gen) for n, m in _convs(model).items()}


CRITERIA = {"lrp": LRPCriterion, "l1": L1Criterion, "taylor": TaylorCriterion, "random": RandomCriterion}


def group_scores(groups: Iterable[Group], conv_scores: dict[str, torch.Tensor]) -> np.ndarray:
    """One score per group: the mean of its source filters' scores."""
    return np.array([float(np.mean([float(conv_scores[n][c]) for n, c in g.sources])) for g in groups])
