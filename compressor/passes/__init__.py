"""Passes: each module registers one pass class in PASSES when imported."""

from compressor.passes import fold, n2n, prune, quantize  # noqa: F401  (imported for registration)
from compressor.passes.base import PASSES, Context, Pass, PassResult, config_fields, register_pass

__all__ = ["PASSES", "Context", "Pass", "PassResult", "config_fields", "register_pass"]
