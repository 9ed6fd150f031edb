"""N2N students: each candidate is built from the parent, distilled briefly from the teacher and scored on the
validation split (``StudentEvaluator``); an executor maps that over a round's candidates."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from compressor.core.data import Preprocess, Split
from compressor.core.metrics import count_macs, count_params, predict
from compressor.core.train import FinetuneConfig, distill
from compressor.errors import CompressorError

if TYPE_CHECKING:
    pass

from compressor.n2n.layers import (
    Candidate,
    LayerTable,
    Measurement,
    build_student,
)


def stable_seed(*parts: object) -> int:
    """A seed from any printable values, identical across processes (unlike ``hash``)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


class StudentEvaluator:
    """Builds, distils and scores one candidate: the unit of work an executor runs.

    The student trains on ``train`` by KD for ``finetune.steps`` steps, seeded from the candidate itself, so a
    candidate measures the same wherever and whenever it runs; accuracy comes from ``score`` (the validation
    split, never the test set) and, when given, its predicted latency from ``latency``.
    """

    def __init__(self, parent: nn.Module, table: LayerTable, teacher: nn.Module, train: Split, preprocess: Preprocess,
                 score: Callable[[nn.Module], float], input_shape: tuple[int, ...], finetune: FinetuneConfig,
                 seed: int = 0, fixed: Sequence[str] = (), latency: Callable[[nn.Module], float] | None = None):
        self.fixed, self.latency = tuple(fixed), latency
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
        latency_ms = self.latency(student) if self.latency is not None else 0.0
        if not self.finetune.augment and self._teacher_logits is None:
            self._teacher_logits = torch.from_numpy(predict(self.teacher, self.train, self.preprocess))
        losses = distill(student, self.teacher, self.train, self.preprocess, self.finetune,
                         seed=stable_seed(self.seed, candidate.key()), progress=False,
                         cached_logits=None if self.finetune.augment else self._teacher_logits)
        note = "" if np.isfinite(losses).all() else "training diverged (non-finite loss); lower student_lr"
        return Measurement(True, self.score(student), params, macs, time.perf_counter() - start, note, latency_ms)


class Executor(Protocol):
    """Maps the measurement over candidates; results come back in candidate order."""

    def map(self, fn: Callable[[Candidate], Measurement], candidates: Sequence[Candidate]) -> list[Measurement]: ...


class SerialExecutor:
    """Runs candidates one after another in this process (the default)."""

    def map(self, fn: Callable[[Candidate], Measurement], candidates: Sequence[Candidate]) -> list[Measurement]:
        return [fn(c) for c in candidates]


# ------------------------------------------------------------------------------------------------------ search
