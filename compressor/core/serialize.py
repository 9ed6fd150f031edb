"""Safe saving and loading of whole (possibly restructured) models without pickle.

Passes change architectures (fewer channels, removed blocks, folded BatchNorm), so a state_dict alone cannot
rebuild a stage. We store the module tree as JSON — each module's class path, its plain attributes (numbers,
strings, tuples) and its children — next to a tensors-only file loaded with ``weights_only=True``. Loading only
instantiates classes from an allow-list of module prefixes (``torch.nn`` and ``compressor`` by default, plus the
module a user's model came from), so no code from the file runs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import torch
from torch import nn

from compressor.core.files import torch_save_atomic
from compressor.errors import CompressorError

FORMAT = "compressor-model/1"
DEFAULT_ALLOWED = ("torch.nn.", "compressor.")
_SKIP = {"training", "_is_full_backward_hook"}


def _plain(value: object) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return False


def _describe(module: nn.Module) -> dict:
    cls = type(module)
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in _SKIP:
            continue
        if not _plain(value):
            raise CompressorError(
                f"cannot save {cls.__qualname__}.{key} of type {type(value).__name__}: only plain attributes "
                "(numbers, strings, tuples) and submodules can be saved safely"
            )
        attrs[key] = [list(value), type(value).__name__] if isinstance(value, (tuple, list)) else value
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "attrs": attrs,
        "params": {k: list(p.shape) if p is not None else None for k, p in module._parameters.items()},
        "buffers": {k: list(b.shape) if b is not None else None for k, b in module._buffers.items()},
        "persistent_skip": sorted(module._non_persistent_buffers_set),
        "children": {k: _describe(c) if c is not None else None for k, c in module._modules.items()},
    }


def save_model(model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write ``path`` (tensors, weights_only-loadable) atomically, with the tree and ``meta`` embedded."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "tree": json.dumps(_describe(model)),
        "meta": json.dumps(meta or {}),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)
    return path


def model_digest(model: nn.Module) -> str:
    """sha256 of what :func:`save_model` stores of a model: its module tree and every tensor's dtype, shape and
    bytes. Two models with equal digests compute the same function."""
    try:
        tree = json.dumps(_describe(model), sort_keys=True)
    except CompressorError:  # attributes the stage format cannot store: the module printout still names them
        tree = str(model)
    h = hashlib.sha256(tree.encode())
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save under a temporary name, renamed on success (byte-identical for identical objects)."""
    torch_save_atomic(obj, path)


def _resolve(class_path: str, allowed: tuple[str, ...]) -> type:
    if not any(class_path.startswith(p) for p in allowed):
        raise CompressorError(f"model file names class {class_path}, outside the allowed modules {allowed}")
    module_name, _, qualname = class_path.rpartition(".")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CompressorError(f"{class_path} in the model file is not an nn.Module class")
    return obj


def _build(desc: dict, allowed: tuple[str, ...]) -> nn.Module:
    cls = _resolve(desc["class"], allowed)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in desc["attrs"].items():
        if isinstance(value, list) and len(value) == 2 and value[1] in ("tuple", "list"):
            value = tuple(value[0]) if value[1] == "tuple" else list(value[0])
        setattr(module, key, value)
    for key, shape in desc["params"].items():
        module.register_parameter(key, None if shape is None else nn.Parameter(torch.empty(shape)))
    for key, shape in desc["buffers"].items():
        module.register_buffer(key, None if shape is None else torch.empty(shape), key not in desc["persistent_skip"])
    for key, child in desc["children"].items():
        module._modules[key] = None if child is None else _build(child, allowed)
    return module


def load_model(path: str | Path, allowed: tuple[str, ...] = DEFAULT_ALLOWED) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns (model in eval mode, meta)."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CompressorError(f"cannot read model file {path}: {type(exc).__name__}; it is missing or corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressorError(f"{path} is not a compressor model file")
    try:
        model = _build(json.loads(payload["tree"]), allowed)
        model.load_state_dict(payload["state"], assign=True)  # the saved dtypes (e.g. int64 BN counters), not empty()'s float
        meta = json.loads(payload["meta"])
        if not isinstance(meta, dict):
            raise TypeError("its metadata is not a mapping")
    except CompressorError:
        raise
    except Exception as exc:  # a damaged or hand-made file: its tree, tensors or metadata do not fit together
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise CompressorError(f"model file {path} is damaged or was not written by compressor ({type(exc).__name__}"
                              f"{': ' + detail if detail else ''}); write it again") from None
    return model.eval(), meta
