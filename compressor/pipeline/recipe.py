"""The YAML recipe: model, data, ordered passes, exports, bench settings, budgets, seed and executor.

Every section is a dataclass checked by :func:`compressor.core.config.from_dict`, so an unknown key, a value of
the wrong type or out of range fails with its full key path (``passes[1].prune.step``) before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressor.core.config import from_dict, param
from compressor.core.executors import ExecutorConfig
from compressor.errors import CompressorError

EXPORTS = ("onnx", "onnx_int8", "tensorrt")


@dataclass
class ModelSection:
    name: str | None = None  # zoo name, package.module:callable or file.py:callable
    weights: str | None = None
    input_shape: list[int] = param(default_factory=lambda: [3, 32, 32], ge=1)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = param(default_factory=lambda: [0.229, 0.224, 0.225], gt=0)
    allow_pickle: bool = False

    def check(self) -> str | None:
        if len(self.input_shape) != 3:
            return "model.input_shape must be [channels, height, width]"
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.input_shape[0]:
                return f"model.{key} needs {self.input_shape[0]} values, one per input channel"
        return None


@dataclass
class DataSection:
    path: str | None = None
    validation: int = param(1000, ge=1)
    calibration: int = param(1000, ge=1)
    reference_per_class: int = param(10, ge=1)


@dataclass
class BenchSection:
    enabled: bool = True
    batches: list[int] = param(default_factory=lambda: [1, 64], ge=1)
    warmup: float = param(0.2, ge=0)  # seconds
    duration: float = param(1.0, gt=0)  # seconds per measurement
    threads: int = param(2, ge=1)


@dataclass
class BudgetSection:
    """CI gate limits; None means unchecked."""

    max_accuracy_drop: float | None = param(None, ge=0)  # percentage points of test top-1 vs the teacher
    min_speedup: float | None = param(None, gt=0)  # teacher ORT-CPU p50 latency at batch 1 / final's
    max_size_mb: float | None = param(None, gt=0)  # final deployed ONNX file


@dataclass
class PassSpec:
    name: str
    config: Any


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    passes: list[PassSpec] = field(default_factory=list)
    export: list[str] = param(default_factory=lambda: ["onnx"], choices=EXPORTS)
    bench: BenchSection = field(default_factory=BenchSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    seed: int = param(0, ge=0)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where candidates run; never changes results


def parse_passes(items: Any) -> list[PassSpec]:
    from compressor.passes import PASSES

    if items is None:
        return []
    if not isinstance(items, list):
        raise CompressorError("recipe: passes must be a list of {pass_name: {params}} entries")
    specs: list[PassSpec] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise CompressorError(f"recipe: passes[{i}] must be one mapping {{pass_name: {{params}}}}")
        ((name, params),) = item.items()
        if name not in PASSES:
            raise CompressorError(f"recipe: passes[{i}] names unknown pass {name!r} (available: {', '.join(sorted(PASSES))})")
        frozen_by = next((s.name for s in specs if PASSES[s.name].produces_artifact), None)
        if frozen_by and PASSES[name].changes_network:
            raise CompressorError(
                f"recipe: passes[{i}] {name} changes the network after {frozen_by}, whose artifact would then be of "
                f"another model; move {name} before {frozen_by}")
        specs.append(PassSpec(name, from_dict(PASSES[name].Config, params, f"passes[{i}].{name}")))
    return specs


def parse_recipe(data: Any) -> Recipe:
    if not isinstance(data, dict):
        raise CompressorError("recipe: the file must hold a mapping at the top level")
    data = dict(data)
    passes = parse_passes(data.pop("passes", None))
    recipe = from_dict(Recipe, data)
    recipe.passes = passes
    return recipe


def read_recipe_file(path: str | Path) -> dict:
    """The raw mapping of a YAML recipe file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CompressorError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CompressorError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CompressorError(f"recipe {path} must hold a mapping at the top level")
    return data


def to_dict(recipe: Recipe) -> dict:
    """Plain mapping of a recipe (for the report and stage fingerprints)."""
    out = dataclasses.asdict(dataclasses.replace(recipe, passes=[]))
    out["passes"] = [{p.name: dataclasses.asdict(p.config)} for p in recipe.passes]
    return out
