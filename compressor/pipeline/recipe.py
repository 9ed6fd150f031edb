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

EXPORTS = ("onnx", "onnx_int8", "openvino", "tensorrt")
TARGETS = ("ort-cpu", "openvino-cpu")  # CPU runtimes the report times every stage on
OPENVINO_PRECISIONS = ("f32", "bf16", "default")


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
                return (f"model.{key} needs {self.input_shape[0]} values, one per input channel of model.input_shape; "
                        f"set it in the recipe or with --{key}")
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
    rounds: int = param(5, ge=1)  # the headline's paired rounds: the teacher and the deployed artifact alternating


@dataclass
class OpenVINOSection:
    """How OpenVINO runs this recipe's models (report columns, the openvino-cpu quantize target, the IR export).

    precision: the CPU plugin's precision hint for the float parts of a model: f32, bf16, or default (the plugin
    chooses: bf16 on CPUs with native bfloat16). Accuracy under the hint is measured on the test split."""

    precision: str = param("f32", choices=OPENVINO_PRECISIONS)


@dataclass
class BudgetSection:
    """CI gate limits; None means unchecked."""

    max_accuracy_drop: float | None = param(None, ge=0)  # percentage points of test top-1 vs the teacher
    min_speedup: float | None = param(None, gt=0)  # the headline's paired batch-1 speed-up over the teacher
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
    targets: list[str] = param(default_factory=lambda: ["ort-cpu"], choices=TARGETS)  # the first one is gated
    openvino: OpenVINOSection = field(default_factory=OpenVINOSection)
    bench: BenchSection = field(default_factory=BenchSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    seed: int = param(0, ge=0)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where candidates run; only its threads change results

    def check(self) -> str | None:
        if not self.targets or len(set(self.targets)) != len(self.targets):
            return f"targets must name each runtime once, at least one ({' | '.join(TARGETS)}), got {self.targets}"
        return None


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


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, at: yaml.Mark, first: yaml.Mark):
        where = [f"line {m.line + 1}" + (f" column {m.column + 1}" if at.line == first.line else "") for m in (at, first)]
        super().__init__(f"duplicate key {key!r} on {where[0]} (first on {where[1]})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last one,
    so a second ``model:`` section would silently drop the first (its weights, say)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise DuplicateKey(key, key_node.start_mark, first[key])
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (raises :class:`DuplicateKey`, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_recipe_file(path: str | Path, what: str = "recipe") -> dict:
    """The raw mapping of a YAML recipe (or pass-parameter) file, with one-line errors for a missing, unreadable
    or malformed file and for a key given twice."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CompressorError(f"{what} {path} is a folder; give the YAML file")
        if not path.is_file():
            raise CompressorError(f"{what} {path} does not exist")
        data = load_yaml(path.read_text()) or {}
    except DuplicateKey as exc:
        raise CompressorError(f"{what} {path}: {exc}; keep one of them") from None
    except yaml.YAMLError as exc:
        raise CompressorError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise CompressorError(f"{what} {path} is not a text (YAML) file") from None
    except OSError as exc:
        raise CompressorError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise CompressorError(f"{what} {path} must hold a mapping at the top level")
    return data


def to_dict(recipe: Recipe) -> dict:
    """Plain mapping of a recipe (for the report and stage fingerprints)."""
    out = dataclasses.asdict(dataclasses.replace(recipe, passes=[]))
    out["passes"] = [{p.name: dataclasses.asdict(p.config)} for p in recipe.passes]
    return out
