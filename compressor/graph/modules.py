"""Modules for the joins a CNN graph has that torch.nn lacks, so that analyses can attach to them.

A residual addition is an ``Add`` module (LRP splits relevance proportionally at it, the dependency graph couples
its inputs' channels) and the option-A shortcut is a ``ChannelPadShortcut`` (the dependency graph rewrites its
padding when channels are removed). The one tracer keeps both as leaves. ``Concat`` and ``Gate`` are what LRP's
join canonizer (:mod:`compressor.pruning.canonizers`) rewrites ``torch.cat`` and ``x * g`` into; the tracer
looks through them like any module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Add(nn.Module):
    """Element-wise sum of two tensors (a residual join), a module so rules and hooks can attach to it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: subsample space by ``stride`` and zero-pad channels, ``left`` before and ``right`` after.

    Pruning may make the padding asymmetric; the kept input channels always stay contiguous between the pads.
    """

    def __init__(self, stride: int, left: int, right: int):
        super().__init__()
        self.stride, self.left, self.right = stride, left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.left, self.right))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, left={self.left}, right={self.right}"


class Concat(nn.Module):
    """Concatenation of tensors along ``dim`` (a dense or inception join), a module so rules can attach to it."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Gate(nn.Module):
    """Multiplicative gating ``x · g`` (squeeze-and-excitation, attention masks); input ``gate`` (0 or 1) is g."""

    def __init__(self, gate: int = 1):
        super().__init__()
        self.gate = gate

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def extra_repr(self) -> str:
        return f"gate={self.gate}"
