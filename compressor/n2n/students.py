"""N2N students: each candidate is built from the parent, distilled briefly from the teacher and scored on the
validation split (``StudentEvaluator``); an executor (:mod:`compressor.core.executors`) trains a round's
candidates, in this process or in workers that receive the evaluator once and a candidate per task."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from compressor.core.data import Preprocess, Split
from compressor.core.metrics import count_macs, count_params, predict, top1
from compressor.core.train import FinetuneConfig, distill
from compressor.errors import CompressorError
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
    candidate measures the same wherever and whenever it runs; accuracy is top-1 on ``validation`` (never the
    test set). The evaluator is plain data, so an executor can hand it to worker processes once per search.
    """

    def __init__(self, parent: nn.Module, table: LayerTable, teacher: nn.Module, train: Split, preprocess: Preprocess,
                 validation: Split, input_shape: tuple[int, ...], finetune: FinetuneConfig,
                 seed: int = 0, fixed: Sequence[str] = ()):
        self.fixed = tuple(fixed)
        self.parent, self.table, self.teacher, self.train, self.preprocess = parent, table, teacher, train, preprocess
        self.validation, self.input_shape, self.finetune, self.seed = validation, input_shape, finetune, seed
        self.teacher_logits: np.ndarray | None = None  # set by prepare() when students do not augment
        with torch.no_grad():
            self._out_shape = tuple(parent.eval()(torch.zeros(2, *input_shape)).shape)

    def prepare(self) -> StudentEvaluator:
        """Compute what every student shares (the teacher's logits on the unaugmented subset) once, before the
        evaluator is handed to workers."""
        if not self.finetune.augment and self.teacher_logits is None:
            self.teacher_logits = predict(self.teacher, self.train, self.preprocess)
        return self

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
        cached = None if self.finetune.augment else torch.from_numpy(self.prepare().teacher_logits)
        losses = distill(student, self.teacher, self.train, self.preprocess, self.finetune,
                         seed=stable_seed(self.seed, candidate.key()), progress=False, cached_logits=cached)
        note = "" if np.isfinite(losses).all() else "training diverged (non-finite loss); lower student_lr"
        accuracy = top1(predict(student, self.validation, self.preprocess), self.validation.labels)
        return Measurement(True, accuracy, params, macs, time.perf_counter() - start, note)


def train_student(evaluator: StudentEvaluator, candidate: Candidate) -> Measurement:
    """The executor task: one candidate measured by the (shared) evaluator."""
    return evaluator(candidate)
