"""N2N's reward R = C(2 − C)·A_s/A_t with C = 1 − size_s/size_t, and the annealed constraint penalty of the
paper's appendix for students outside the size limits. Size is parameters (the paper), MACs, or the latency the
target's latency model predicts (:mod:`compressor.runtime.latency_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from compressor.n2n.layers import Measurement

if TYPE_CHECKING:
    pass

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
    compression past the point where a student still recovers after fine-tuning (docs/lab-notes/n2n.md), so a
    floor holds the search inside a size band; violators get the same penalty.

    size_measure "latency": C = 1 − latency_s/latency_t, both predicted in the deployed precision. min_speedup
    (the limit) and max_speedup (the floor) bound ``baseline_ms / latency_s``, where ``baseline_ms`` is the parent's
    FP32 latency on the target in the prediction's units: the speed-up over what runs today.
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
    teacher_latency_ms: float = 0.0
    baseline_ms: float = 0.0
    min_speedup: float | None = None
    max_speedup: float | None = None

    def within_limits(self, m: Measurement) -> bool:
        speedup = self.baseline_ms / m.latency_ms if m.latency_ms > 0 else float("inf")
        return ((self.max_params is None or m.params <= self.max_params)
                and (self.max_macs is None or m.macs <= self.max_macs)
                and (self.min_params is None or m.params >= self.min_params)
                and (self.min_macs is None or m.macs >= self.min_macs)
                and (self.min_speedup is None or speedup >= self.min_speedup)
                and (self.max_speedup is None or speedup <= self.max_speedup))

    def __call__(self, m: Measurement, epoch: float) -> float:
        if not m.valid:
            return -1.0
        if self.size_measure == "macs":
            r = compression_reward(m.accuracy, self.teacher_accuracy, m.macs, self.teacher_macs)
        elif self.size_measure == "latency":
            r = compression_reward(m.accuracy, self.teacher_accuracy, m.latency_ms, self.teacher_latency_ms)
        else:
            r = compression_reward(m.accuracy, self.teacher_accuracy, m.params, self.teacher_params)
        return r if self.within_limits(m) else constraint_penalty(r, epoch, self.penalty_epochs)
