"""The one protocol every pass implements, the typed result it returns, and the registry ``compressor passes``
lists.

A pass is a small class: a ``Config`` dataclass (fields declared with :func:`compressor.core.config.param`, so the
recipe parser validates them and ``compressor passes`` prints their allowed values) and ``run(model, ctx) ->
PassResult``. The pipeline, not the pass, measures the stage record's common metrics (test top-1, teacher
agreement, params, MACs, latency); a pass adds its own ``metrics`` (schedules, search history), its ``plots``,
and an ``artifact`` when it produced a deployable file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn

from compressor.core.config import describe
from compressor.core.context import Context

__all__ = ["PASSES", "Artifact", "Context", "Pass", "PassResult", "config_fields", "register_pass"]


@dataclass(frozen=True)
class Artifact:
    """A deployable file a pass wrote. ``deploy`` is False when the pass measured it slower than the float model
    on its target and fallback to float is on; the pipeline then deploys the float export instead."""

    path: Path
    precision: str  # "int8" | "fp32"
    target: str  # "ort-cpu" | "openvino-cpu" | "tensorrt"
    deploy: bool = True

    def as_dict(self) -> dict:
        return {"path": str(self.path), "precision": self.precision, "target": self.target, "deploy": self.deploy}


@dataclass
class PassResult:
    """A pass's output: the new model, the artifact it wrote (if any), its plots and its own metrics (JSON-able)."""

    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    artifact: Artifact | None = None


class Pass(Protocol):
    """A model transformation. ``name`` is the recipe key; ``Config`` a dataclass of its parameters.

    ``changes_network``: the pass rewrites the network (a recipe may not run it after a pass that produces an
    artifact, which would then be of another model). ``produces_artifact``: the pass writes a deployable file.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    changes_network: ClassVar[bool]
    produces_artifact: ClassVar[bool]

    def __init__(self, config: Any) -> None: ...

    def run(self, model: nn.Module, ctx: Context) -> PassResult: ...


PASSES: dict[str, type] = {}


def register_pass(cls: type) -> type:
    """Class decorator: make a pass available to recipes, ``compressor run`` and ``compressor passes``."""
    PASSES[cls.name] = cls
    return cls


def config_fields(config_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, allowed values) of a pass config, for ``compressor passes``."""
    return describe(config_cls)
