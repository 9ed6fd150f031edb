"""Safe saving and loading of whole (possibly restructured) models without pickle.

Passes change architectures (fewer channels, removed blocks, folded BatchNorm), so a state_dict alone cannot
rebuild a stage. We store the module tree as JSON — each module's class path, its plain attributes (numbers,
strings, tuples) and its children — next to a tensors-only file loaded with ``weights_only=True``. Loading only
instantiates classes from an allow-list of module prefixes (``torch.nn`` and ``compressor`` by default, plus the
module a user's model came from), so no code from the file runs.

User models hold attributes JSON cannot express: an identity shortcut ``self.shortcut = lambda x: x``, a
function, a dict. A function importable by name is stored as that name (resolved under the same allow-list).
Anything else is taken from a fresh model of the user's own factory (``--model file.py:make``, a
:class:`Factory`): the file records where the value lives in the factory's model, and loading calls the factory
the user named (and only it) to fetch it. So the stored tree and weights still define the network, and a model
the user can build is never made uncompressible by the format.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class Factory:
    """The model factory the user named (``spec``, e.g. ``path/to/net.py:make``) and where the values it puts in
    attributes live in its model (by object identity: copies of a model share their functions)."""

    spec: str
    build: Callable[[], nn.Module]
    _origin: dict[int, tuple[str, str, object]] = field(default_factory=dict, repr=False)
    _template: nn.Module | None = field(default=None, repr=False)

    def remember(self, model: nn.Module) -> None:
        """Record the non-plain attributes of ``model``, a model this factory built."""
        for path, m in model.named_modules():
            for key, value in vars(m).items():
                if not key.startswith("_") and key not in _SKIP and not _plain(value):
                    self._origin[id(value)] = (path, key, value)

    def locate(self, value: object, path: str, key: str) -> list[str]:
        """Where ``value`` lives in the factory's model: its recorded place, else the same place."""
        return list(self._origin.get(id(value), (path, key))[:2])

    def fetch(self, path: str, key: str) -> object:
        if self._template is None:
            self._template = self.build()
            self.remember(self._template)
        try:
            value = getattr(self._template.get_submodule(path), key)
        except AttributeError:
            raise CompressorError(
                f"{self.spec} builds no model with attribute {path or 'model'}.{key}, which the model file needs"
            ) from None
        self._origin[id(value)] = (path, key, value)
        return value


def _reference(value: object) -> str | None:
    """``module:qualname`` of a function that importing that name gives back, else None. Builtins (``torch.relu``)
    are found by ``module:name``."""
    module = getattr(value, "__module__", None)
    if not callable(value) or not isinstance(module, str):
        return None
    for attr in ("__qualname__", "__name__"):
        name = f"{module}:{getattr(value, attr, '<')}"
        try:
            if "<" not in name and _lookup(name) is value:
                return name
        except (ImportError, AttributeError):
            continue
    return None


def _lookup(name: str) -> object:
    module_name, _, qualname = name.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _special(module: nn.Module, path: str, key: str, value: object, factory: Factory | None) -> dict:
    """The JSON record of a non-plain attribute, or a CompressorError saying why it cannot be stored."""
    where = f"{type(module).__qualname__}.{key} of type {type(value).__name__}"
    if inspect.ismethod(value) and value.__self__ is module:
        return {"method": value.__func__.__name__}
    cells = [c.cell_contents for c in getattr(value, "__closure__", None) or ()]
    if inspect.ismethod(value) or any(isinstance(c, (nn.Module, torch.Tensor)) for c in cells):
        raise CompressorError(f"cannot save {where}: it refers to modules or tensors of a model, which a rebuilt "
                              "model would not share; make it a method or a submodule")
    ref = _reference(value)
    if ref is not None:
        return {"ref": ref}
    if factory is None:
        raise CompressorError(
            f"cannot save {where}: only plain attributes (numbers, strings, tuples), submodules and importable "
            "functions can be saved safely; give the model as --model file.py:factory so it can be rebuilt from it"
        )
    return {"factory": factory.locate(value, path, key)}


def _describe(module: nn.Module, factory: Factory | None = None, path: str = "") -> dict:
    cls = type(module)
    attrs = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in _SKIP:
            continue
        if not _plain(value):
            attrs[key] = _special(module, path, key, value, factory)
            continue
        attrs[key] = [list(value), type(value).__name__] if isinstance(value, (tuple, list)) else value
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "attrs": attrs,
        "params": {k: list(p.shape) if p is not None else None for k, p in module._parameters.items()},
        "buffers": {k: list(b.shape) if b is not None else None for k, b in module._buffers.items()},
        "persistent_skip": sorted(module._non_persistent_buffers_set),
        "children": {k: _describe(c, factory, f"{path}.{k}" if path else k) if c is not None else None
                     for k, c in module._modules.items()},
    }


def _uses_factory(desc: dict) -> bool:
    return any(isinstance(v, dict) and "factory" in v for v in desc["attrs"].values()) or any(
        _uses_factory(c) for c in desc["children"].values() if c is not None)


def save_model(model: nn.Module, path: str | Path, meta: dict | None = None, factory: Factory | None = None) -> Path:
    """Write ``path`` (tensors, weights_only-loadable) atomically, with the tree and ``meta`` embedded.

    ``factory``: the user's model factory, for attributes the format can only rebuild from it.
    """
    path = Path(path)
    tree = _describe(model, factory)
    if factory is not None and _uses_factory(tree):
        tree["factory"] = factory.spec
    payload = {
        "format": FORMAT,
        "tree": json.dumps(tree),
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


def _attribute(module: nn.Module, value: dict, allowed: tuple[str, ...], factory: Factory | None) -> object:
    if "method" in value:
        return getattr(module, value["method"])
    if "ref" in value:
        module_name = value["ref"].partition(":")[0] + "."
        if not any(module_name.startswith(p) for p in (*allowed, "torch.")):
            raise CompressorError(f"model file names function {value['ref']}, outside the allowed modules {allowed}")
        return _lookup(value["ref"])
    return factory.fetch(*value["factory"])


def _build(desc: dict, allowed: tuple[str, ...], factory: Factory | None = None) -> nn.Module:
    cls = _resolve(desc["class"], allowed)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in desc["attrs"].items():
        if isinstance(value, list) and len(value) == 2 and value[1] in ("tuple", "list"):
            value = tuple(value[0]) if value[1] == "tuple" else list(value[0])
        elif isinstance(value, dict):
            value = _attribute(module, value, allowed, factory)
        setattr(module, key, value)
    for key, shape in desc["params"].items():
        module.register_parameter(key, None if shape is None else nn.Parameter(torch.empty(shape)))
    for key, shape in desc["buffers"].items():
        module.register_buffer(key, None if shape is None else torch.empty(shape), key not in desc["persistent_skip"])
    for key, child in desc["children"].items():
        module._modules[key] = None if child is None else _build(child, allowed, factory)
    return module


def load_model(
    path: str | Path, allowed: tuple[str, ...] = DEFAULT_ALLOWED, factory: Factory | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model`; returns (model in eval mode, meta).

    A file with attributes rebuilt from a factory needs that same factory (the user's ``--model``): only the
    factory the user names is ever called, never one the file names.
    """
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CompressorError(f"cannot read model file {path}: {type(exc).__name__}; it is missing or corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressorError(f"{path} is not a compressor model file")
    try:
        tree = json.loads(payload["tree"])
        if "factory" in tree and (factory is None or factory.spec != tree["factory"]):
            raise CompressorError(f"{path} rebuilds parts of its model from the factory {tree['factory']}; "
                                  f"pass --model {tree['factory']} to load it")
        model = _build(tree, allowed, factory)
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
