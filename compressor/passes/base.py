"""The one protocol every pass implements, the context it receives, and the registry ``compressor passes`` lists.

A pass is a small class: a typed ``Config`` dataclass (filled from the recipe, printed by ``compressor passes``)
and ``run(model, ctx) -> PassResult``. The pipeline, not the pass, measures the stage record's common metrics
(test top-1, teacher agreement, params, MACs, time); a pass adds its own details (schedules, search history).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import nn

from compressor.core.data import Preprocess, Split, Splits
from compressor.core.metrics import predict, top1


@dataclass
class Context:
    """What a pass may use: data splits, the frozen teacher, preprocessing, output folder, seed."""

    splits: Splits
    teacher: nn.Module
    preprocess: Preprocess
    input_shape: tuple[int, int, int]
    out_dir: Path
    seed: int = 0
    progress: bool = True
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


@dataclass
class PassResult:
    """A pass's output: the new model plus pass-specific details for the stage record (JSON-serialisable)."""

    model: nn.Module
    details: dict[str, Any] = field(default_factory=dict)


class Pass(Protocol):
    """A model transformation. ``name`` is the recipe key; ``Config`` a dataclass of its parameters."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def run(self, model: nn.Module, ctx: Context) -> PassResult: ...


PASSES: dict[str, type] = {}


def register_pass(cls: type) -> type:
    """Class decorator: make a pass available to recipes, ``compressor run`` and ``compressor passes``."""
    PASSES[cls.name] = cls
    return cls


def config_fields(config_cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of a pass config, for ``compressor passes`` and recipe validation."""
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        out.append((f.name, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)), default))
    return out
