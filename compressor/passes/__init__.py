"""Passes: each module registers one pass class in PASSES on import."""

import importlib

from .base import PASSES, Context, Pass, PassResult, config_fields, register_pass

for _name in ("fold", "prune", "quantize", "n2n"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a pass whose module is not present in this build
        if _exc.name != f"{__name__}.{_name}":
            raise

__all__ = ["PASSES", "Context", "Pass", "PassResult", "config_fields", "register_pass"]
