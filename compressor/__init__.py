"""compressor: compress a trained CNN with explainable pruning, RL layer removal, ConvBN fusion and tuned INT8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def compress(recipe: str | Path | dict[str, Any], out_dir: str | Path, *, resume: bool = False,
             force: bool = False, progress: bool = True, **overrides: Any):
    """Run a recipe (YAML path or mapping) into ``out_dir`` and return the Report.

    A non-empty ``out_dir`` needs ``resume`` (reuse the stages of the run there that verify against its
    manifest) or ``force`` (delete compressor's files there first); see docs/usage.md.

    ``overrides`` replace top-level recipe sections key by key, e.g. ``data={"path": "cifar.tar.gz"}``.
    Raises ``GateFailed`` (after writing artifacts and report) when a budget is missed.
    """
    from compressor.pipeline.recipe import parse_recipe, read_recipe_file
    from compressor.pipeline.runner import Pipeline

    data = dict(recipe) if isinstance(recipe, dict) else read_recipe_file(recipe)
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return Pipeline(parse_recipe(data), out_dir, resume=resume, progress=progress, force=force).run()
