"""Measurements every stage record carries: top-1, agreement with the teacher, parameters and MACs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.core.data import Preprocess, Split


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward on one input (torch's FLOP counter, FLOPs / 2: conv and matmul)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def predict(model: nn.Module, split: Split, preprocess: Preprocess, batch_size: int = 500) -> np.ndarray:
    """Logits for every image of a split, in eval mode."""
    was_training = model.training
    model.eval()
    outs = [model(preprocess(split.images[i : i + batch_size])) for i in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(outs).numpy()


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100.0)


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Percent of images where two models predict the same class."""
    return float((logits.argmax(1) == reference.argmax(1)).mean() * 100.0)
