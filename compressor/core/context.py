"""What every pass receives besides the model: data splits, the frozen teacher, preprocessing, the input shape,
the output folder, the seed, whether to show progress, how OpenVINO runs the models and the executor that runs
independent evaluations."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from compressor.core.data import Preprocess, Split, Splits
from compressor.core.executors import Executor, SerialExecutor
from compressor.core.metrics import predict, top1


@dataclass
class Context:
    splits: Splits
    teacher: nn.Module
    preprocess: Preprocess
    input_shape: tuple[int, int, int]
    out_dir: Path
    seed: int = 0
    progress: bool = True
    openvino_precision: str = "f32"  # OpenVINO's precision hint (recipe ``openvino.precision``)
    executor: Executor = field(default_factory=SerialExecutor, repr=False)
    _teacher_logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def validation_top1(self, model: nn.Module) -> float:
        """Top-1 on the validation split: the only accuracy a search may optimise."""
        return top1(predict(model, self.splits.validation, self.preprocess), self.splits.validation.labels)

    def teacher_logits(self, split_name: str) -> np.ndarray:
        """Teacher logits per split, computed once."""
        if split_name not in self._teacher_logits:
            split: Split = getattr(self.splits, split_name)
            self._teacher_logits[split_name] = predict(self.teacher, split, self.preprocess)
        return self._teacher_logits[split_name]
