"""AdaRound: learned up-or-down rounding of one layer's weights (Nagel et al., *Up or Down? Adaptive Rounding for
Post-Training Quantization*, ICML 2020).

Each weight is quantized to s·clip(⌊w/s⌋ + h(V), qmin, qmax), where h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1) is the
rectified sigmoid (ζ = 1.1, γ = −0.1) and V starts where h(V) equals the fractional part of w/s, so the soft
weights start at the float weights. V minimises the layer-wise reconstruction loss ‖f_a(W x) − f_a(W̃ x̂)‖²
(eq. 25: x is the layer's input in the float model, x̂ its input in the model whose earlier layers are already
quantized, f_a the activation that follows the layer) plus λ Σ (1 − |2h(V) − 1|^β), the regulariser that drives
every h(V) to 0 or 1. The regulariser is off for a warm-up share of the iterations, then β falls linearly from
20 to 2. The result is the hard rounding ⌊w/s⌋ + [h(V) ≥ 0.5], so each weight lands on its floor or its ceiling:
at most one step from nearest rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundSettings:
    """The paper's hyper-parameters (λ 0.01, β 20 → 2, 20 % warm-up, Adam) with a small default iteration count
    and a larger learning rate, so a layer takes seconds on a CPU; the paper runs 10,000 iterations per layer at
    lr 1e-3. Steps see ``batch`` output positions drawn from ``columns`` sampled per layer."""

    iterations: int = 300
    batch: int = 1024  # sampled output positions per step
    columns: int = 8192  # output positions sampled once per layer from the calibration images
    lr: float = 1e-2
    reg: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def beta_at(step: int, s: AdaRoundSettings) -> float | None:
    """β for ``step``: None during warm-up (no regulariser), then linear from β_start to β_end."""
    start = s.warmup * s.iterations
    if step < start:
        return None
    progress = (step - start) / max(s.iterations - start, 1)
    return s.beta[1] + (s.beta[0] - s.beta[1]) * (1.0 - progress)


def reconstruction_error(layer: Callable, act: Callable, w: torch.Tensor, x_hat: torch.Tensor,
                         target: torch.Tensor, batch: int = 256) -> float:
    """Mean over images of ‖f_a(layer(x̂, w)) − target‖² (summed over channels and positions)."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x_hat), batch):
            total += float((act(layer(x_hat[i : i + batch], w)) - target[i : i + batch]).pow(2).sum())
    return total / len(x_hat)


def adaround(w: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, layer: Callable, act: Callable,
             x_hat: torch.Tensor, target: torch.Tensor, settings: AdaRoundSettings | None = None,
             seed: int = 0) -> torch.Tensor:
    """Integer weights for one layer. ``scale`` broadcasts against ``w`` (per tensor or per output channel);
    ``layer(x, w)`` is the layer with its bias, ``act`` its activation, ``target`` = f_a(W x) on the float input."""
    settings = settings or AdaRoundSettings()
    ratio = w.double() / scale.double()
    base = torch.floor(ratio)
    rest = (ratio - base).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).float().requires_grad_(True)
    base, scale = base.float(), scale.float()
    opt = torch.optim.Adam([v], lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    for step in range(settings.iterations):
        idx = torch.randint(0, len(x_hat), (min(settings.batch, len(x_hat)),), generator=gen)
        h = rectified_sigmoid(v)
        soft = scale * torch.clamp(base + h, qmin, qmax)
        loss = (act(layer(x_hat[idx], soft)) - target[idx]).pow(2).flatten(1).sum(1).mean()
        beta = beta_at(step, settings)
        if beta is not None:
            loss = loss + settings.reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.clamp(base + (rectified_sigmoid(v) >= 0.5).float(), qmin, qmax)
