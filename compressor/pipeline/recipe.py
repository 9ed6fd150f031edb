"""The YAML recipe: model, data, ordered passes, exports, bench settings, budgets and seed.

Every section is a dataclass; :func:`from_dict` fills them with type checks so that an unknown key or a value of
the wrong type fails with its full key path (``passes[1].prune.step``) before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressor.errors import CompressorError

EXPORTS = ("onnx", "onnx_int8", "tensorrt")


@dataclass
class ModelSection:
    name: str | None = None  # zoo name, package.module:callable or file.py:callable
    weights: str | None = None
    input_shape: list[int] = field(default_factory=lambda: [3, 32, 32])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    allow_pickle: bool = False


@dataclass
class DataSection:
    path: str | None = None
    validation: int = 1000
    calibration: int = 1000
    reference_per_class: int = 10


@dataclass
class BenchSection:
    enabled: bool = True
    batches: list[int] = field(default_factory=lambda: [1, 64])
    warmup: float = 0.2  # seconds
    duration: float = 1.0  # seconds per measurement
    threads: int = 2


@dataclass
class BudgetSection:
    """CI gate limits; None means unchecked."""

    max_accuracy_drop: float | None = None  # percentage points of test top-1 vs the teacher
    min_speedup: float | None = None  # teacher ORT-CPU p50 latency at batch 1 / final's
    max_size_mb: float | None = None  # final deployed ONNX file


@dataclass
class PassSpec:
    name: str
    config: Any


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    passes: list[PassSpec] = field(default_factory=list)
    export: list[str] = field(default_factory=lambda: ["onnx"])
    bench: BenchSection = field(default_factory=BenchSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    seed: int = 0


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` (dataclass, list, Optional, scalars); returns the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(value, arg, path)
            except CompressorError as exc:
                errors.append(str(exc))
        raise CompressorError(errors[0] if len(errors) == 1 else f"recipe: {path} has the wrong type ({value!r})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise CompressorError(f"recipe: {path} must be a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise CompressorError(f"recipe: {path} must be {_type_name(tp)}, got bool {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise CompressorError(f"recipe: {path} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types with the key path."""
    where = path or "the recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompressorError(f"recipe: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise CompressorError(f"recipe: unknown key {key!r} (allowed: {', '.join(sorted(names))})")
    kwargs = {k: convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_passes(items: Any) -> list[PassSpec]:
    from compressor.passes import PASSES

    if items is None:
        return []
    if not isinstance(items, list):
        raise CompressorError("recipe: passes must be a list of {pass_name: {params}} entries")
    specs = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise CompressorError(f"recipe: passes[{i}] must be one mapping {{pass_name: {{params}}}}")
        ((name, params),) = item.items()
        if name not in PASSES:
            raise CompressorError(f"recipe: passes[{i}] names unknown pass {name!r} (available: {', '.join(sorted(PASSES))})")
        config = from_dict(PASSES[name].Config, params, f"passes[{i}].{name}")
        PASSES[name](config)  # a pass checks its values when built: fail here, before any work is done
        specs.append(PassSpec(name, config))
    return specs


def parse_recipe(data: Any) -> Recipe:
    if not isinstance(data, dict):
        raise CompressorError("recipe: the file must hold a mapping at the top level")
    data = dict(data)
    passes = parse_passes(data.pop("passes", None))
    recipe = from_dict(Recipe, data)
    recipe.passes = passes
    for i, e in enumerate(recipe.export):
        if e not in EXPORTS:
            raise CompressorError(f"recipe: export[{i}] is {e!r}; choose from {', '.join(EXPORTS)}")
    if len(recipe.model.input_shape) != 3:
        raise CompressorError("recipe: model.input_shape must be [channels, height, width]")
    channels = recipe.model.input_shape[0]
    for key in ("mean", "std"):
        if len(getattr(recipe.model, key)) != channels:
            raise CompressorError(f"recipe: model.{key} needs {channels} values, one per input channel")
    if any(s <= 0 for s in recipe.model.std):
        raise CompressorError("recipe: model.std values must be positive")
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
