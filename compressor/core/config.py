"""The one config convention: every recipe section and pass config is a dataclass whose fields declare their
allowed values, checked in one place (:func:`from_dict`) with the full key path.

A field is declared with :func:`param` (``ge``/``gt``/``le``/``lt`` bounds, ``choices``); a cross-field rule is
a ``check(self)`` method returning an error message or None. ``compressor passes`` prints the same declarations
(:func:`allowed`), so what the help says is what the validator enforces.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any

from compressor.errors import CompressorError

_MISSING = dataclasses.MISSING


def param(default: Any = _MISSING, *, default_factory: Any = _MISSING, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: tuple[str | bool, ...] | None = None) -> Any:
    """A dataclass field with its allowed values: numeric bounds (applied to every item of a list) or choices."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field in words: ``lrp | l1``, ``≥ 1``, ``(0, 1)``; empty when unconstrained."""
    m = f.metadata
    if m.get("choices"):
        return " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in m["choices"])
    lo = f"> {m['gt']:g}" if m.get("gt") is not None else f"≥ {m['ge']:g}" if m.get("ge") is not None else ""
    hi = f"< {m['lt']:g}" if m.get("lt") is not None else f"≤ {m['le']:g}" if m.get("le") is not None else ""
    return ", ".join(s for s in (lo, hi) if s)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def convert(value: Any, tp: Any, path: str, source: str = "recipe") -> Any:
    """Check ``value`` against annotation ``tp`` (dataclass, list, dict, Optional, scalars); returns the typed
    value. ``source`` opens every error message: the recipe, or the flag or file the values came from."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return convert(value, arg, path, source)
            except CompressorError as exc:
                errors.append(str(exc))
        raise CompressorError(errors[0] if len(errors) == 1 else f"{source}: {path} has the wrong type ({value!r})")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise CompressorError(f"{source}: {path} must be a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [convert(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise CompressorError(f"{source}: {path} must be a mapping, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise CompressorError(f"{source}: {path} must be {_type_name(tp)}, got bool {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise CompressorError(f"{source}: {path} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):
        raise CompressorError(f"{source}: {path} must be a finite number, got {value!r}")
    return value


def _check_value(value: Any, f: dataclasses.Field, path: str, source: str) -> None:
    m = f.metadata
    if value is None or not m:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f, f"{path}[{i}]", source)
        return
    if m.get("choices") and value not in m["choices"]:
        raise CompressorError(f"{source}: {path} is {value!r}; choose {allowed(f)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = ((m.get("ge") is not None and value < m["ge"]) or (m.get("gt") is not None and value <= m["gt"])
               or (m.get("le") is not None and value > m["le"]) or (m.get("lt") is not None and value >= m["lt"]))
        if bad:
            raise CompressorError(f"{source}: {path} is {value!r}; it must be {allowed(f)}")


def validate(obj: Any, path: str = "", source: str = "recipe") -> Any:
    """Check every declared field of dataclass ``obj`` (recursing into nested ones), then its ``check()``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, where, source)
        else:
            _check_value(value, f, where, source)
    check = getattr(obj, "check", None)
    message = check() if callable(check) else None
    if message:
        raise CompressorError(f"{source}: {path + ': ' if path else ''}{message}")
    return obj


def from_dict(cls: type, data: Any, path: str = "", source: str = "recipe") -> Any:
    """Build and validate dataclass ``cls`` from a mapping; unknown keys, wrong types and values out of range fail
    with the key path, after ``source`` (what the values came from)."""
    where = path or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CompressorError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise CompressorError(f"{source}: unknown key {key!r} (allowed: {', '.join(sorted(names))})")
    kwargs = {k: convert(v, hints[k], f"{path}.{k}" if path else k, source) for k, v in data.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs
               and f.default is _MISSING and f.default_factory is _MISSING]
    if missing:
        raise CompressorError(f"{source}: {path + '.' if path else ''}{missing[0]} is missing")
    return validate(cls(**kwargs), path, source)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, allowed values) of each field, for ``compressor passes``."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        tp = f.type if isinstance(f.type, str) else _type_name(f.type)
        out.append((f.name, tp, default, allowed(f)))
    return out
